"""`tunelab compare`: the best trials and finalists against the baseline, in every format."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import RecordedSweep, copy_recorded
from tunelab.analysis.compare import COLUMNS, comparison_table, render
from tunelab.analysis.stats import wilson_interval
from tunelab.cli import main
from tunelab.define.data import Splits
from tunelab.delivery.export import ExportResult, export_model, resolve_source
from tunelab.record.recorded import find_sweep
from tunelab.record.store import Tracker


@pytest.fixture(scope="module")
def recorded_sweep(
    _recorded_once: RecordedSweep, tmp_path_factory: pytest.TempPathFactory
) -> RecordedSweep:
    """This module's own copy of the recording: its tests all read the export made once here."""
    return copy_recorded(_recorded_once, tmp_path_factory.mktemp("module") / "recorded")


@pytest.fixture(scope="module")
def exported(
    recorded_sweep: RecordedSweep, tiny_splits: Splits, tmp_path_factory: pytest.TempPathFactory
) -> ExportResult:
    """The best trial exported once for this module (each test here needs a finalist)."""
    tracker = Tracker(recorded_sweep.tracking_uri)
    source, _ = resolve_source(tracker, recorded_sweep.best_run_id)
    folder = tmp_path_factory.mktemp("bundle")
    return export_model(
        tracker, source, tiny_splits, out=folder, formats=("keras",), register=False
    )


@pytest.mark.slow
def test_table_has_the_baseline_the_top_trials_and_the_exported_finalist_with_statistics(
    recorded_sweep: RecordedSweep, tiny_splits: Splits, exported: ExportResult
) -> None:
    tracker = Tracker(recorded_sweep.tracking_uri)
    source, _ = resolve_source(tracker, recorded_sweep.best_run_id)
    sweep = find_sweep(tracker, "recorded")
    table = comparison_table(tracker, sweep, top=2, test_labels=tiny_splits.test.y)
    assert list(table.columns) == COLUMNS
    assert table["run id"].tolist()[:1] == [recorded_sweep.baseline_run_id]
    assert len(table) == 3  # baseline + top 2 (the exported trial is the best)
    trials = table.iloc[1:]
    assert trials["best val"].tolist() == sorted(trials["best val"], reverse=True)
    best = table[table["run id"] == source.run_id].iloc[0]
    assert best["test acc"] == pytest.approx(exported.test.accuracy)
    # the interval and p-value are the hand-checked functions applied to the stored predictions
    correct = int((exported.test.predictions == tiny_splits.test.y).sum())
    interval = wilson_interval(correct, 1000)
    assert best["test 95% CI"] == f"[{interval.low:.4f}, {interval.high:.4f}]"
    assert exported.baseline is not None
    assert best["McNemar p"] == pytest.approx(exported.baseline.p_value)
    assert best["test vs baseline"] == pytest.approx(
        exported.test.accuracy - exported.baseline.accuracy
    )
    assert best["val vs baseline"] is not None
    for fmt in ("table", "csv", "markdown", "html"):
        text = render(table, fmt)
        assert source.run_id in text and recorded_sweep.baseline_run_id in text
    assert render(table, "markdown").startswith("| model")
    assert render(table, "html").lstrip().startswith("<table")


@pytest.mark.slow
def test_compare_command_writes_the_file_and_logs_to_the_parent(
    recorded_sweep: RecordedSweep,
    exported: ExportResult,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "comparison.csv"
    uri = recorded_sweep.tracking_uri
    main(
        [
            "compare",
            "recorded",
            "--tracking-uri",
            uri,
            "--format",
            "csv",
            "--out",
            str(out),
            "--log",
            "--top",
            "2",
        ]
    )
    printed = capsys.readouterr().out
    assert printed == out.read_text() and printed.startswith("model,engine,study")
    import io

    import pandas as pd

    rows = pd.read_csv(io.StringIO(printed))
    finalists = rows[rows["model"].str.endswith("(exported)")]
    # no data download: the test labels come from the runs that stored them
    assert len(finalists) == 1 and 0 < finalists["McNemar p"].iloc[0] <= 1
    assert finalists["test acc"].iloc[0] == pytest.approx(exported.test.accuracy)
    tracker = Tracker(uri)
    logged = {
        a.path for a in tracker.client.list_artifacts(recorded_sweep.parent_run_id, "comparison")
    }
    assert logged == {"comparison/comparison.csv"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["compare", "nowhere"], "experiment 'nowhere' not found"),
        (["compare", "--study", "nostudy"], "no sweep with study 'nostudy'"),
        (["compare"], "name an experiment"),
        (["compare", "recorded", "--format", "xls"], "choose from table, csv, markdown, html"),
        (["export", "f" * 32], f"run '{'f' * 32}' not found"),
        (["export", "recorded", "--formats", "pmml"], "unknown format(s) pmml"),
    ],
)
def test_bad_requests_get_one_line_and_exit_2(
    recorded_sweep: RecordedSweep,
    args: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as ended:
        main([*args, "--tracking-uri", recorded_sweep.tracking_uri])
    assert ended.value.code == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1

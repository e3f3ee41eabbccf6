"""The comparison table: a sweep's best trials and finalists against the baseline.

One pandas DataFrame, built only from the MLflow record (so it works for every engine and for
sweeps run elsewhere, and imports no TensorFlow): the reference baseline first, then the top K
trials by best validation accuracy, plus any trial that was confirmed or exported, plus every
exported ensemble. Validation columns compare everything on the same held-out images; test
columns exist only for models evaluated on the test set (the baseline and exports), with a 95 %
Wilson interval and McNemar's exact test against the baseline's per-image predictions on the
same test images (and, for an ensemble, against the single champion it was built around).

In a terminal the table drops the columns no row fills and fits the window (a rich table);
csv, markdown and html keep every column.
"""

from __future__ import annotations

import io
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from tunelab.analysis.stats import mcnemar_exact, wilson_interval
from tunelab.define.data import published_accuracy
from tunelab.record.names import CONFIG_PARAM_PREFIX, Artifact, MetricName, Role, TagKey
from tunelab.record.recorded import SweepRecord, ranked_by_best_val
from tunelab.record.store import Tracker
from tunelab.text import short_value

TABLE_FORMATS = ("table", "csv", "markdown", "html")
KEY_PARAMS = 4
COLUMNS = [
    "model",
    "engine",
    "study",
    "trial",
    "state",
    "key params",
    "params",
    "best val",
    "last val",
    "val vs baseline",
    "confirmed val (mean ± std, n)",
    "epochs",
    "wall s",
    "images/s",
    "s to beat baseline",
    "test acc",
    "test 95% CI",
    "test vs baseline",
    "McNemar p",
    "McNemar p vs single",
    "run id",
]
TERMINAL_HIDDEN = ("engine", "study", "trial", "wall s")  # said by `model`, or for the csv


@dataclass(frozen=True)
class TestRecord:
    """A test-set evaluation found in the store: accuracy and per-image predictions."""

    run_id: str
    predictions: npt.NDArray[np.int64] | None
    accuracy: float
    images: int


def _stored_array(
    tracker: Tracker, run_id: str, artifact: str = Artifact.TEST_PREDICTIONS
) -> npt.NDArray[np.int64] | None:
    """A per-image array a run stored (predictions, labels); None if it has none."""
    with tempfile.TemporaryDirectory() as tmp:
        path = tracker.download_artifact(run_id, artifact, Path(tmp))
        return None if path is None else np.asarray(np.load(path), dtype=np.int64)


def _stored_labels(tracker: Tracker, runs: list[Any]) -> npt.NDArray[np.int64] | None:
    """The test labels, from the first of `runs` that stored them with its predictions."""
    for run in runs:
        labels = _stored_array(tracker, run.info.run_id, Artifact.TEST_LABELS)
        if labels is not None:
            return labels
    return None


def _test_record(tracker: Tracker, run: Any) -> TestRecord | None:
    metrics = run.data.metrics
    if MetricName.TEST_ACCURACY not in metrics:
        return None
    predictions = _stored_array(tracker, run.info.run_id)
    images = len(predictions) if predictions is not None else 10_000
    return TestRecord(run.info.run_id, predictions, metrics[MetricName.TEST_ACCURACY], images)


def _mcnemar(
    record: TestRecord, other: TestRecord | None, labels: npt.NDArray[np.integer] | None
) -> float | None:
    """McNemar's exact p-value of two test evaluations, if both stored their predictions."""
    if (
        other is None
        or other.run_id == record.run_id
        or labels is None
        or record.predictions is None
        or other.predictions is None
        or record.predictions.shape != other.predictions.shape
        or labels.shape != record.predictions.shape
    ):
        return None
    return mcnemar_exact(record.predictions == labels, other.predictions == labels).p_value


def _test_columns(
    record: TestRecord | None,
    baseline: TestRecord | None,
    labels: npt.NDArray[np.integer] | None,
    single: TestRecord | None = None,
    published: float | None = None,
) -> dict[str, Any]:
    empty = {
        "test acc": None,
        "test 95% CI": "",
        "test vs baseline": None,
        "McNemar p": None,
        "McNemar p vs single": None,
    }
    if record is None:
        return empty
    interval = wilson_interval(round(record.accuracy * record.images), record.images)
    reference = baseline.accuracy if baseline is not None else published
    return {
        "test acc": record.accuracy,
        "test 95% CI": interval.bracket(),
        "test vs baseline": None
        if reference is None or (baseline is not None and record.run_id == baseline.run_id)
        else record.accuracy - reference,
        "McNemar p": _mcnemar(record, baseline, labels),
        "McNemar p vs single": _mcnemar(record, single, labels),
    }


def comparison_table(
    tracker: Tracker,
    sweep: SweepRecord,
    *,
    top: int = 5,
    test_labels: npt.NDArray[np.integer] | None = None,
) -> pd.DataFrame:
    """Baseline, top `top` trials, every confirmed or exported trial and ensembles, one row each.

    McNemar needs the test labels: `test_labels`, else those stored by an export or baseline run.
    Without a baseline, test differences are against the published 99.25 % on MNIST, and not
    given on other data.
    """
    dataset = sweep.tags.get(TagKey.DATASET, "mnist")
    published = published_accuracy(dataset)
    baseline_run = tracker.find_baseline(sweep.tags.get(TagKey.DATASET_DIGEST, ""))
    baseline_test = _test_record(tracker, baseline_run) if baseline_run is not None else None
    bar = sweep.metrics.get(MetricName.BASELINE_VAL_ACCURACY)
    exports = [run for run in sweep.runs_of(tracker, Role.EXPORT) if run.info.status == "FINISHED"]
    singles = {
        run.data.tags.get(TagKey.EXPORTED_FROM_RUN_ID, ""): run
        for run in exports
        if TagKey.ENSEMBLE_MEMBERS not in run.data.tags
    }  # oldest first: the newest export of each trial wins
    ensembles = [run for run in exports if TagKey.ENSEMBLE_MEMBERS in run.data.tags]
    if test_labels is None:
        candidates = [*exports, *([baseline_run] if baseline_run is not None else [])]
        test_labels = _stored_labels(tracker, candidates)
    rows: list[dict[str, Any]] = []
    if baseline_run is not None:
        rows.append(_baseline_row(baseline_run, baseline_test))
    ranked = ranked_by_best_val(sweep.trial_runs(tracker))
    chosen = ranked[:top]
    for run in ranked[top:]:
        if MetricName.CONFIRMED_MEAN in run.data.metrics or run.info.run_id in singles:
            chosen.append(run)
    single_tests: dict[str, TestRecord | None] = {}
    for run in chosen:
        export = singles.get(run.info.run_id)
        test = _test_record(tracker, export) if export is not None else None
        if export is not None:
            single_tests[export.info.run_id] = test
        rows.append(_trial_row(run, bar, test, baseline_test, test_labels, published))
    for run in ensembles:
        single_id = run.data.tags.get(TagKey.EXPORTED_FROM_RUN_ID, "")
        single = single_tests.get(single_id)
        if single is None and single_id:
            found = tracker.get_run(single_id)
            single = _test_record(tracker, found) if found is not None else None
        rows.append(
            _ensemble_row(
                run, _test_record(tracker, run), baseline_test, test_labels, single, published
            )
        )
    table: pd.DataFrame = pd.DataFrame(rows, columns=COLUMNS)
    return table


def _baseline_row(run: Any, test: TestRecord | None) -> dict[str, Any]:
    metrics = run.data.metrics
    return {
        "model": "baseline (classic CNN)",
        "engine": "-",
        "study": "-",
        "trial": None,
        "state": run.info.status.lower(),
        "key params": "adadelta, conv32-conv64, dense128",
        "params": int(metrics.get(MetricName.PARAM_COUNT, 0)) or None,
        "best val": metrics.get(MetricName.BEST_VAL_ACCURACY),
        "last val": metrics.get(MetricName.VAL_ACCURACY),
        "val vs baseline": 0.0,
        "confirmed val (mean ± std, n)": "",
        "epochs": int(metrics.get(MetricName.EPOCHS_TRAINED, 0)) or None,
        "wall s": metrics.get(MetricName.WALL_SECONDS),
        "images/s": metrics.get(MetricName.IMAGES_PER_SECOND),
        "s to beat baseline": None,
        **_test_columns(test, test, None),
        "run id": run.info.run_id,
    }


def _trial_row(
    run: Any,
    bar: float | None,
    test: TestRecord | None,
    baseline: TestRecord | None,
    labels: npt.NDArray[np.integer] | None,
    published: float | None,
) -> dict[str, Any]:
    metrics, params, tags = run.data.metrics, run.data.params, run.data.tags
    chosen = [
        f"{k}={short_value(v)}"
        for k, v in params.items()
        if not k.startswith((CONFIG_PARAM_PREFIX, "tuner/")) and k != "trial_number"
    ]
    best = metrics.get(MetricName.BEST_VAL_ACCURACY)
    confirmed = ""
    if MetricName.CONFIRMED_MEAN in metrics:
        confirmed = (
            f"{metrics[MetricName.CONFIRMED_MEAN]:.4f} ± "
            f"{metrics.get(MetricName.CONFIRMED_STD, float('nan')):.4f}, "
            f"{int(metrics.get(MetricName.CONFIRMED_SEEDS, 0))}"
        )
    engine = tags.get(TagKey.ENGINE, "")
    trial = tags.get(TagKey.TRIAL_NUMBER, "")
    return {
        "model": f"{engine} t{trial}" + (" (exported)" if test is not None else ""),
        "engine": engine,
        "study": tags.get(TagKey.STUDY, ""),
        "trial": int(trial) if trial else None,
        "state": tags.get(TagKey.TRIAL_STATE, run.info.status.lower()),
        "key params": ", ".join(chosen[:KEY_PARAMS]),
        "params": int(metrics.get(MetricName.PARAM_COUNT, 0)) or None,
        "best val": best,
        "last val": metrics.get(MetricName.VAL_ACCURACY),
        "val vs baseline": None if best is None or bar is None else best - bar,
        "confirmed val (mean ± std, n)": confirmed,
        "epochs": int(metrics.get(MetricName.EPOCHS_TRAINED, 0)) or None,
        "wall s": metrics.get(MetricName.WALL_SECONDS),
        "images/s": metrics.get(MetricName.IMAGES_PER_SECOND),
        "s to beat baseline": metrics.get(MetricName.BEAT_BASELINE_SECONDS),
        **_test_columns(test, baseline, labels, published=published),
        "run id": run.info.run_id,
    }


def _ensemble_row(
    run: Any,
    test: TestRecord | None,
    baseline: TestRecord | None,
    labels: npt.NDArray[np.integer] | None,
    single: TestRecord | None,
    published: float | None,
) -> dict[str, Any]:
    members = [m for m in run.data.tags.get(TagKey.ENSEMBLE_MEMBERS, "").split(",") if m]
    return {
        "model": f"ensemble of {len(members)} (exported)",
        "engine": run.data.tags.get(TagKey.ENGINE, ""),
        "study": run.data.tags.get(TagKey.STUDY, ""),
        "trial": None,
        "state": "exported",
        "key params": "averaged softmax of " + ", ".join(m[:8] for m in members),
        "params": None,
        "best val": None,
        "last val": None,
        "val vs baseline": None,
        "confirmed val (mean ± std, n)": "",
        "epochs": None,
        "wall s": None,
        "images/s": None,
        "s to beat baseline": None,
        **_test_columns(test, baseline, labels, single, published),
        "run id": run.info.run_id,
    }


def sweep_line(sweep: SweepRecord) -> str:
    """One line about the whole sweep: trials, time to beat the baseline, test-set use."""
    m = sweep.metrics
    states = (
        (MetricName.TRIALS_COMPLETE, "complete"),
        (MetricName.TRIALS_PRUNED, "pruned"),
        (MetricName.TRIALS_FAILED, "failed"),
        (MetricName.TRIALS_PAUSED, "paused"),
    )
    counts = ", ".join(
        f"{int(m.get(key, 0))} {word}" for key, word in states if word != "paused" or m.get(key)
    )
    line = f"sweep {sweep.study} ({sweep.engine}, experiment {sweep.experiment}): {counts}"
    if MetricName.SECONDS_TO_BEAT_BASELINE in m:
        line += (
            f"; first beat the baseline's validation accuracy after "
            f"{m[MetricName.SECONDS_TO_BEAT_BASELINE]:.0f} s of trials "
            f"({m[MetricName.EPOCHS_TO_BEAT_BASELINE]:.0f} epochs, trial "
            f"{m[MetricName.TRIAL_THAT_BEAT_BASELINE]:.0f})"
        )
    elif MetricName.BASELINE_VAL_ACCURACY in m:
        line += "; no trial beat the baseline's validation accuracy"
    tested = int(m.get(MetricName.TEST_EVALUATIONS, 0))
    line += f"; the test set was read {tested} time{'s' if tested != 1 else ''} by this sweep"
    return line


def agreement_lines(tracker: Tracker, sweep: SweepRecord) -> list[str]:
    """The sweep's measured rank agreement between rungs and ends, one line each (none if the
    sweep recorded none)."""
    import json
    import tempfile
    from pathlib import Path

    from tunelab.engines.agreement import Agreement

    with tempfile.TemporaryDirectory() as tmp:
        path = tracker.download_artifact(sweep.parent_run_id, Artifact.RANK_AGREEMENT, Path(tmp))
        if path is None:
            return []
        found = [Agreement(**item) for item in json.loads(path.read_text())]
    return [f"rank agreement: {item.line()}" for item in found]


def render(table: pd.DataFrame, fmt: str, width: int | None = None) -> str:
    """The table as text in one of TABLE_FORMATS ("table": fitted to `width` columns)."""
    if fmt == "csv":
        return str(table.to_csv(index=False))
    readable = _readable(table)
    if fmt == "markdown":
        return str(readable.to_markdown(index=False, disable_numparse=True)) + "\n"
    if fmt == "html":
        return str(readable.to_html(index=False, na_rep="", border=0)) + "\n"
    return terminal_table(readable, width)


def terminal_table(readable: pd.DataFrame, width: int | None = None) -> str:
    """A rich table without the columns no row fills, wrapped to fit `width` (the terminal)."""
    from rich.console import Console
    from rich.table import Table

    width = width or shutil.get_terminal_size((100, 24)).columns
    shown = [
        c
        for c in readable.columns
        if c not in TERMINAL_HIDDEN and any(str(v).strip() for v in readable[c])
    ]
    table = Table(show_lines=False, pad_edge=False, box=None, header_style="bold")
    for column in shown:  # run ids stay whole: they are copied into other commands
        whole = column == "run id"
        table.add_column(column, overflow="fold", no_wrap=whole, min_width=32 if whole else None)
    for _, row in readable.iterrows():
        table.add_row(*(str(row[c]) for c in shown))
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(table)
    return console.export_text()


def _readable(table: pd.DataFrame) -> pd.DataFrame:
    """Accuracies to 4 decimals, differences in points, p-values to 3 significant digits."""
    out: pd.DataFrame = table.copy().astype(object)
    for column in ("best val", "last val", "test acc"):
        out[column] = [_fmt(v, "{:.4f}") for v in table[column]]
    for column in ("val vs baseline", "test vs baseline"):
        out[column] = [_fmt(None if v is None else v * 100, "{:+.2f} pt") for v in table[column]]
    for column in ("McNemar p", "McNemar p vs single"):
        out[column] = [_fmt(v, "{:.3g}") for v in table[column]]
    for column in ("wall s", "s to beat baseline", "images/s"):
        out[column] = [_fmt(v, "{:.0f}") for v in table[column]]
    for column in ("params", "epochs", "trial"):
        out[column] = [_fmt(v, "{:,.0f}") for v in table[column]]
    filled: pd.DataFrame = out.fillna("")
    return filled


def _fmt(value: Any, pattern: str) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, str):
        return value
    return pattern.format(value)

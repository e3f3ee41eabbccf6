"""The comparison table: a sweep's best trials and finalists against the baseline.

One pandas DataFrame, built only from the MLflow record (so it works for every engine and for
sweeps run elsewhere): the reference baseline first, then the top K trials by best validation
accuracy, plus any trial that was confirmed or exported. Validation columns compare everything
on the same held-out images; test columns exist only for models evaluated on the test set (the
baseline and exports), with a 95 % Wilson interval and McNemar's exact test against the
baseline's per-image predictions on the same test images.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from tunelab.training.baseline import TEST_LABELS_ARTIFACT, TEST_PREDICTIONS_ARTIFACT
from tunelab.record.recorded import SweepRecord, ranked_by_best_val
from tunelab.analysis.stats import mcnemar_exact, wilson_interval
from tunelab.record.store import PARENT_RUN_TAG, MetricName, Role, TagKey, Tracker

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
    "s to beat baseline",
    "test acc",
    "test 95% CI",
    "test vs baseline",
    "McNemar p",
    "run id",
]


@dataclass(frozen=True)
class TestRecord:
    """A test-set evaluation found in the store: accuracy and per-image predictions."""

    run_id: str
    predictions: npt.NDArray[np.int64] | None
    accuracy: float
    images: int


def _stored_array(
    tracker: Tracker, run_id: str, artifact: str = TEST_PREDICTIONS_ARTIFACT
) -> npt.NDArray[np.int64] | None:
    """A per-image array a run stored (predictions, labels); None if it has none."""
    with tempfile.TemporaryDirectory() as tmp:
        path = tracker.download_artifact(run_id, artifact, Path(tmp))
        return None if path is None else np.asarray(np.load(path), dtype=np.int64)


def _stored_labels(tracker: Tracker, runs: list[Any]) -> npt.NDArray[np.int64] | None:
    """The test labels, from the first of `runs` that stored them with its predictions."""
    for run in runs:
        labels = _stored_array(tracker, run.info.run_id, TEST_LABELS_ARTIFACT)
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


def _test_columns(
    record: TestRecord | None,
    baseline: TestRecord | None,
    labels: npt.NDArray[np.integer] | None,
) -> dict[str, Any]:
    if record is None:
        return {"test acc": None, "test 95% CI": "", "test vs baseline": None, "McNemar p": None}
    correct = round(record.accuracy * record.images)
    interval = wilson_interval(correct, record.images)
    columns: dict[str, Any] = {
        "test acc": record.accuracy,
        "test 95% CI": interval.bracket(),
        "test vs baseline": None,
        "McNemar p": None,
    }
    if baseline is not None and record.run_id != baseline.run_id:
        columns["test vs baseline"] = record.accuracy - baseline.accuracy
        columns["McNemar p"] = _mcnemar(record, baseline, labels)
    return columns


def _mcnemar(
    record: TestRecord, baseline: TestRecord, labels: npt.NDArray[np.integer] | None
) -> float | None:
    """McNemar's exact p-value of two test evaluations, if both stored their predictions."""
    if (
        labels is None
        or record.predictions is None
        or baseline.predictions is None
        or record.predictions.shape != baseline.predictions.shape
        or labels.shape != record.predictions.shape
    ):
        return None
    return mcnemar_exact(record.predictions == labels, baseline.predictions == labels).p_value


def comparison_table(
    tracker: Tracker,
    sweep: SweepRecord,
    *,
    top: int = 5,
    test_labels: npt.NDArray[np.integer] | None = None,
) -> pd.DataFrame:
    """Baseline, top `top` trials and every confirmed or exported trial, one row each.

    McNemar needs the test labels: `test_labels`, else those stored by an export or baseline run.
    """
    dataset = sweep.tags.get(TagKey.DATASET, "mnist")
    baseline_run = tracker.find_baseline(dataset)
    baseline_test = _test_record(tracker, baseline_run) if baseline_run is not None else None
    bar = sweep.metrics.get(MetricName.BASELINE_VAL_ACCURACY)
    rows: list[dict[str, Any]] = []
    if baseline_run is not None:
        rows.append(_baseline_row(baseline_run, baseline_test))
    exports = _latest_exports(tracker, sweep)
    if test_labels is None:
        candidates = [*exports.values(), *([baseline_run] if baseline_run is not None else [])]
        test_labels = _stored_labels(tracker, candidates)
    ranked = ranked_by_best_val(sweep.trial_runs(tracker))
    chosen = ranked[:top]
    for run in ranked[top:]:
        if MetricName.CONFIRMED_MEAN in run.data.metrics or run.info.run_id in exports:
            chosen.append(run)
    for run in chosen:
        export = exports.get(run.info.run_id)
        test = _test_record(tracker, export) if export is not None else None
        rows.append(_trial_row(run, bar, test, baseline_test, test_labels))
    table: pd.DataFrame = pd.DataFrame(rows, columns=COLUMNS)
    return table


def _baseline_row(run: Any, test: TestRecord | None) -> dict[str, Any]:
    metrics = run.data.metrics
    return {
        "model": "baseline (classic CNN)",
        "engine": "-",
        "study": "-",
        "trial": "-",
        "state": run.info.status.lower(),
        "key params": "adadelta, conv32-conv64, dense128",
        "params": int(metrics.get(MetricName.PARAM_COUNT, 0)) or None,
        "best val": metrics.get(MetricName.BEST_VAL_ACCURACY),
        "last val": metrics.get(MetricName.VAL_ACCURACY),
        "val vs baseline": 0.0,
        "confirmed val (mean ± std, n)": "",
        "epochs": int(metrics.get(MetricName.EPOCHS_TRAINED, 0)) or None,
        "wall s": metrics.get(MetricName.WALL_SECONDS),
        "s to beat baseline": None,
        **_test_columns(test, None, None),
        "run id": run.info.run_id,
    }


def _trial_row(
    run: Any,
    bar: float | None,
    test: TestRecord | None,
    baseline: TestRecord | None,
    labels: npt.NDArray[np.integer] | None,
) -> dict[str, Any]:
    metrics, params, tags = run.data.metrics, run.data.params, run.data.tags
    chosen = [
        f"{k}={_short(v)}"
        for k, v in params.items()
        if not k.startswith("cfg.") and k != "trial_number"
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
        "s to beat baseline": metrics.get(MetricName.BEAT_BASELINE_SECONDS),
        **_test_columns(test, baseline, labels),
        "run id": run.info.run_id,
    }


def _latest_exports(tracker: Tracker, sweep: SweepRecord) -> dict[str, Any]:
    """The newest finished export run per exported trial run id."""
    runs = tracker.search(
        sweep.experiment,
        f"tags.`{PARENT_RUN_TAG}` = '{sweep.parent_run_id}' "
        f"and tags.`{TagKey.ROLE}` = '{Role.EXPORT}' and attributes.status = 'FINISHED'",
    )
    latest: dict[str, Any] = {}
    for run in runs:  # oldest first: later ones overwrite
        latest[run.data.tags.get(TagKey.EXPORTED_FROM_RUN_ID, "")] = run
    return latest


def _short(value: str) -> str:
    try:
        number = float(value)
    except ValueError:
        return value
    return value if number.is_integer() and "." not in value else f"{number:.3g}"


def sweep_line(sweep: SweepRecord) -> str:
    """One line about the whole sweep: trials and when it first beat the baseline."""
    m = sweep.metrics
    counts = ", ".join(
        f"{int(m[key])} {word}"
        for key, word in (
            (MetricName.TRIALS_COMPLETE, "complete"),
            (MetricName.TRIALS_PRUNED, "pruned"),
            (MetricName.TRIALS_FAILED, "failed"),
        )
        if key in m
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
    return line


def render(table: pd.DataFrame, fmt: str) -> str:
    """The table as text in one of TABLE_FORMATS."""
    shown = table
    if fmt == "csv":
        return str(shown.to_csv(index=False))
    readable = _readable(shown)
    if fmt == "markdown":
        return str(readable.to_markdown(index=False, disable_numparse=True)) + "\n"
    if fmt == "html":
        return str(readable.to_html(index=False, na_rep="", border=0)) + "\n"
    return str(readable.to_string(index=False, na_rep="")) + "\n"


def _readable(table: pd.DataFrame) -> pd.DataFrame:
    """Accuracies to 4 decimals, differences in points, p-values to 3 significant digits."""
    out: pd.DataFrame = table.copy().astype(object)
    for column in ("best val", "last val", "test acc"):
        out[column] = [_fmt(v, "{:.4f}") for v in table[column]]
    for column in ("val vs baseline", "test vs baseline"):
        out[column] = [_fmt(None if v is None else v * 100, "{:+.2f} pt") for v in table[column]]
    out["McNemar p"] = [_fmt(v, "{:.3g}") for v in table["McNemar p"]]
    for column in ("wall s", "s to beat baseline"):
        out[column] = [_fmt(v, "{:.0f}") for v in table[column]]
    for column in ("params", "epochs", "trial"):
        out[column] = [_fmt(v, "{:,.0f}") for v in table[column]]
    return out


def _fmt(value: Any, pattern: str) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, str):
        return value
    return pattern.format(value)


def write_table(text: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)

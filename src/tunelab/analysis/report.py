"""`tunelab report`: one self-contained HTML page per sweep, built from the MLflow record.

The page holds the comparison table against the baseline (`tunelab.analysis.compare`), the
optimization history with the baseline's validation accuracy as a line, parameter importances and
parallel coordinates, the learning curves of the top trials next to the baseline's, and the
champion's confusion matrix and misclassified test digits (from its export bundle). Pictures are
inline PNGs (data URIs), so the file can be mailed or attached to the parent run
(`report/report.html`).
"""

from __future__ import annotations

import base64
import html
import io
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from tunelab.analysis.compare import comparison_table, render, sweep_line
from tunelab.record.names import Artifact, MetricName, Role, TagKey
from tunelab.record.recorded import SweepRecord, completed, ranked_by_best_val
from tunelab.record.store import Tracker

REPORT_ARTIFACT = Artifact.REPORT
MAX_AXES = 10  # parallel coordinates stay readable
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.8em; }
th, td { padding: 3px 6px; border-bottom: 1px solid #eee; text-align: right; white-space: nowrap; }
th { background: #f4f4f4; } img { max-width: 100%; } .note { color: #777; font-size: 0.9em; }
.table-wrap { overflow-x: auto; }
"""


def _png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return _data_uri(buffer.getvalue())


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _image(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{html.escape(alt)}">'


def _artifact_png(tracker: Tracker, run_id: str, path: str) -> str | None:
    with tempfile.TemporaryDirectory() as tmp:
        local = tracker.download_artifact(run_id, path, Path(tmp))
        return None if local is None else _data_uri(local.read_bytes())


def optimization_history(trials: list[Any], baseline: float | None) -> Figure:
    """Each complete trial's best val_accuracy by trial number, the best so far, the baseline."""
    figure = Figure(figsize=(9, 4), layout="constrained")
    axes = figure.subplots()
    points = sorted(
        (int(r.data.tags[TagKey.TRIAL_NUMBER]), r.data.metrics[MetricName.BEST_VAL_ACCURACY])
        for r in completed(trials)
    )
    if points:
        numbers, values = zip(*points, strict=True)
        axes.plot(numbers, values, "o", label="trial (best epoch)")
        axes.step(numbers, np.maximum.accumulate(values), where="post", label="best so far")
    if baseline is not None:
        axes.axhline(baseline, color="grey", ls="--", label=f"baseline {baseline:.4f}")
    axes.set_xlabel("trial")
    axes.set_ylabel("validation accuracy")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    axes.set_title("optimization history")
    return figure


def parallel_coordinates(trials: list[Any], top: int = 30) -> Figure | None:
    """Chosen parameters of complete trials, each axis scaled to [0, 1], coloured by accuracy."""
    runs = completed(trials)[-top:]
    candidates = sorted(
        {k for r in runs for k in r.data.params if not k.startswith(("cfg.", "tuner/", "trial_"))}
    )
    # axes worth drawing: set in most trials (not a rarely active conditional) and varied
    names = [
        name
        for name in candidates
        if sum(name in r.data.params for r in runs) >= 0.8 * len(runs)
        and len({r.data.params.get(name) for r in runs}) > 1
    ][:MAX_AXES]
    if len(runs) < 2 or not names:
        return None
    columns: list[list[float]] = []
    for name in names:
        raw = [r.data.params.get(name) for r in runs]
        try:
            values = [float(v) if v is not None else np.nan for v in raw]
        except ValueError:
            levels = sorted({str(v) for v in raw})
            values = [float(levels.index(str(v))) for v in raw]
        array = np.asarray(values, float)
        low, high = np.nanmin(array), np.nanmax(array)
        columns.append(list((array - low) / (high - low) if high > low else array * 0 + 0.5))
    accuracy = np.asarray([r.data.metrics[MetricName.BEST_VAL_ACCURACY] for r in runs])
    figure = Figure(figsize=(max(6, 1.3 * len(names)), 4), layout="constrained")
    axes = figure.subplots()
    colours = (accuracy - accuracy.min()) / max(1e-12, accuracy.max() - accuracy.min())
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    for index in range(len(runs)):
        axes.plot(
            range(len(names)),
            [column[index] for column in columns],
            color=cmap(colours[index]),
            alpha=0.8,
        )
    axes.set_xticks(range(len(names)), labels=names, rotation=30, ha="right")
    axes.set_yticks([0, 1], labels=["low", "high"])
    axes.set_title("parallel coordinates (colour: best val_accuracy, yellow = best)")
    return figure


def param_importances(tracker: Tracker, sweep: SweepRecord, trials: list[Any]) -> Figure | None:
    """fANOVA importances of the chosen parameters, for any engine, from the MLflow record.

    The sweep's search-space file (logged on its parent run) gives each parameter's
    distribution; the complete trials' params and best val_accuracy fill an in-memory Optuna
    study, which Optuna's importance evaluator reads. None when fewer than two trials completed.
    """
    import optuna

    from tunelab.define.space import load_search_space
    from tunelab.engines.optuna.space import distribution
    from tunelab.record.recorded import typed_params

    complete = completed(trials)
    space_file = sweep.params.get("search_space")
    if len(complete) < 2 or not space_file:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        local = tracker.download_artifact(
            sweep.parent_run_id, f"experiment/{space_file}", Path(tmp)
        )
        if local is None:
            return None
        space = load_search_space(local)
    distributions = {p.name: distribution(p) for p in space.parameters}
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction="maximize")
    for run in complete:
        params = {k: v for k, v in typed_params(run.data.params).items() if k in distributions}
        try:
            study.add_trial(
                optuna.trial.create_trial(
                    params=params,
                    distributions={k: distributions[k] for k in params},
                    value=run.data.metrics[MetricName.BEST_VAL_ACCURACY],
                )
            )
        except ValueError:
            continue  # a value outside today's space file (the file changed since): skip it
    try:
        importances = optuna.importance.get_param_importances(study, normalize=True)
    except (RuntimeError, ValueError):
        return None
    if not importances:
        return None
    names = list(importances)[::-1]
    figure = Figure(figsize=(8, 0.35 * len(names) + 1.2), layout="constrained")
    axes = figure.subplots()
    axes.barh(names, [importances[n] for n in names])
    for index, name in enumerate(names):
        axes.text(importances[name], index, f" {importances[name]:.2f}", va="center", fontsize=8)
    axes.set_xlabel("importance for best val_accuracy (fANOVA, normalised)")
    axes.set_title(f"parameter importances over {len(complete)} complete trials")
    return figure


def learning_curves(
    tracker: Tracker, runs: list[Any], baseline_run: Any | None, label: dict[str, str]
) -> Figure:
    """Per-epoch validation accuracy of the top trials and of the baseline."""
    figure = Figure(figsize=(9, 4), layout="constrained")
    axes = figure.subplots()

    def curve(run_id: str) -> tuple[list[int], list[float]]:
        steps = tracker.metric_steps(run_id, MetricName.VAL_ACCURACY)
        return [step for step, _ in steps], [value for _, value in steps]

    for run in runs:
        axes.plot(*curve(run.info.run_id), "-o", ms=3, label=label[run.info.run_id])
    if baseline_run is not None:
        axes.plot(*curve(baseline_run.info.run_id), "--", color="grey", label="baseline")
    finals = [
        float(values[-1])
        for line in axes.get_lines()
        if len(values := np.asarray(line.get_ydata(), dtype=float))
    ]
    if finals:  # zoom on where the runs end up, not on a slow first epoch
        axes.set_ylim(max(0.0, min(finals) - 0.02), min(1.0, max(finals) + 0.005))
    axes.set_xlabel("epoch")
    axes.set_ylabel("validation accuracy")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    axes.set_title("learning curves: top trials against the baseline")
    return figure


def build_report(tracker: Tracker, sweep: SweepRecord, *, top: int = 5) -> str:
    """The whole page as one HTML string."""
    trials = sweep.trial_runs(tracker)
    baseline_run = tracker.find_baseline(sweep.tags.get(TagKey.DATASET, "mnist"))
    bar = sweep.metrics.get(MetricName.BASELINE_VAL_ACCURACY)
    table = comparison_table(tracker, sweep, top=top)
    ranked = ranked_by_best_val(trials)[:top]
    labels = {r.info.run_id: r.info.run_name or r.info.run_id for r in ranked}
    sections = [
        f"<h1>Sweep report: {html.escape(sweep.study)} ({html.escape(sweep.engine)})</h1>",
        f"<p>{html.escape(sweep_line(sweep))}</p>",
        "<h2>Against the baseline</h2>",
        f'<div class="table-wrap">{render(table, "html")}</div>',
        '<p class="note">Validation accuracies are on the held-out training images; test '
        "columns only for models evaluated on the test set (baseline, exports), with 95 % Wilson "
        "intervals and McNemar's exact p-value on the same test images.</p>",
        "<h2>Optimization history</h2>",
        _image(_png(optimization_history(trials, bar)), "optimization history"),
        "<h2>Parameter importances</h2>",
    ]
    importances = param_importances(tracker, sweep, trials)
    sections.append(
        _image(_png(importances), "parameter importances")
        if importances is not None
        else '<p class="note">No importances: they need at least two complete trials and the '
        "sweep's logged search-space file.</p>"
    )
    sections.append("<h2>Parallel coordinates</h2>")
    figure = parallel_coordinates(trials)
    sections.append(
        _image(_png(figure), "parallel coordinates")
        if figure is not None
        else '<p class="note">Fewer than two complete trials.</p>'
    )
    sections += [
        "<h2>Learning curves</h2>",
        _image(_png(learning_curves(tracker, ranked, baseline_run, labels)), "learning curves"),
        "<h2>Champion on the test set</h2>",
    ]
    sections += _champion_section(tracker, sweep)
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sections.append(
        f'<p class="note">Generated {generated} by tunelab report from '
        f"{html.escape(tracker.tracking_uri)}, parent run {sweep.parent_run_id}.</p>"
    )
    body = "\n".join(sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>tunelab report {html.escape(sweep.study)}</title><style>{STYLE}</style>"
        f"</head><body>\n{body}\n</body></html>\n"
    )


def _champion_section(tracker: Tracker, sweep: SweepRecord) -> list[str]:
    exports = [r for r in sweep.runs_of(tracker, Role.EXPORT) if r.info.status == "FINISHED"]
    if not exports:
        return [
            '<p class="note">Not exported yet: <code>tunelab export '
            f"{html.escape(sweep.experiment)}</code> refits the champion and evaluates it on "
            "the test set once.</p>"
        ]
    export = exports[-1]
    metrics = export.data.metrics
    parts = [
        f"<p>{html.escape(export.info.run_name or '')}: test accuracy "
        f"{metrics.get(MetricName.TEST_ACCURACY, float('nan')):.4f} "
        f"[{metrics.get(MetricName.TEST_ACCURACY_LOW, float('nan')):.4f}, "
        f"{metrics.get(MetricName.TEST_ACCURACY_HIGH, float('nan')):.4f}]"
        + (
            f", McNemar p = {metrics[MetricName.MCNEMAR_P_VALUE]:.3g} against the baseline"
            if MetricName.MCNEMAR_P_VALUE in metrics
            else ""
        )
        + "</p>"
    ]
    for path, alt in (
        ("bundle/confusion_matrix.png", "confusion matrix"),
        ("bundle/misclassified.png", "misclassified digits"),
    ):
        uri = _artifact_png(tracker, export.info.run_id, path)
        if uri:
            parts.append(_image(uri, alt))
    return parts

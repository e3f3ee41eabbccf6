"""`tunelab report`: one self-contained HTML page per sweep, built from the MLflow record.

The page holds the comparison table against the baseline (`tunelab.analysis.compare`), and,
drawn by Optuna's matplotlib plots from an in-memory study rebuilt from the record (so KerasTuner
sweeps get them too): the optimization history with the baseline's validation accuracy as a
line, parameter importances (fANOVA) and parallel coordinates; then the learning curves of the
top trials next to the baseline's, and every export's test accuracy, confusion matrix and
misclassified test digits. Pictures are inline PNGs (data URIs), so the file can be mailed or
attached to the parent run (`report/report.html`). The page is `templates/report.html.j2`.
Importing this module loads no TensorFlow.
"""

from __future__ import annotations

import base64
import io
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import Environment, PackageLoader, select_autoescape
from matplotlib.figure import Figure

from tunelab.analysis.compare import agreement_lines, comparison_table, render, sweep_line
from tunelab.record.names import Artifact, MetricName, Role, TagKey
from tunelab.record.recorded import SweepRecord, completed, ranked_by_best_val, typed_params
from tunelab.record.store import Tracker

REPORT_ARTIFACT = Artifact.REPORT


def _png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return _data_uri(buffer.getvalue())


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _artifact_png(tracker: Tracker, run_id: str, path: str) -> str | None:
    with tempfile.TemporaryDirectory() as tmp:
        local = tracker.download_artifact(run_id, path, Path(tmp))
        return None if local is None else _data_uri(local.read_bytes())


def recorded_study(tracker: Tracker, sweep: SweepRecord, trials: list[Any]) -> Any | None:
    """An in-memory Optuna study of the sweep's complete trials, for any engine.

    The sweep's logged search-space file gives each parameter's distribution; the complete
    trials' params and best val_accuracy fill the study. None without two complete trials or
    without the logged file.
    """
    import optuna

    from tunelab.define.space import load_search_space
    from tunelab.engines.optuna.space import distribution

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
    study = optuna.create_study(direction="maximize", study_name=sweep.study)
    for run in sorted(complete, key=lambda r: int(r.data.tags.get(TagKey.TRIAL_NUMBER, 0))):
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
    return study if len(study.trials) >= 2 else None


@contextmanager
def _pyplot() -> Iterator[Any]:
    """Optuna draws through pyplot: a headless backend, its warnings hushed, figures closed."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        try:
            yield plt
        finally:
            plt.close("all")


def optuna_plot(draw: Callable[[], Any], baseline: float | None = None) -> str | None:
    """One of Optuna's matplotlib plots as a data URI (None if it cannot be drawn)."""
    with _pyplot():
        try:
            axes = draw()
        except (ValueError, RuntimeError, ZeroDivisionError):
            return None
        figure = axes.flat[0].figure if hasattr(axes, "flat") else axes.figure
        if baseline is not None and not hasattr(axes, "flat"):
            axes.axhline(baseline, color="grey", ls="--", label=f"baseline {baseline:.4f}")
            axes.legend(loc="lower right")
        figure.set_size_inches(10, 5)
        figure.tight_layout()
        return _png(figure)


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
    axes.set_xlabel("validation step (an epoch, or a rung inside the first one)")
    axes.set_ylabel("validation accuracy")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    axes.set_title("learning curves: top trials against the baseline")
    return figure


def build_report(tracker: Tracker, sweep: SweepRecord, *, top: int = 5) -> str:
    """The whole page as one HTML string."""
    from optuna.visualization import matplotlib as ovm

    trials = sweep.trial_runs(tracker)
    baseline_run = tracker.find_baseline(sweep.tags.get(TagKey.DATASET_DIGEST, ""))
    bar = sweep.metrics.get(MetricName.BASELINE_VAL_ACCURACY)
    ranked = ranked_by_best_val(trials)[:top]
    labels = {r.info.run_id: r.info.run_name or r.info.run_id for r in ranked}
    study = recorded_study(tracker, sweep, trials)
    few = "Fewer than two complete trials (or no logged search-space file): nothing to draw."
    titles = ("Optimization history", "Parameter importances (fANOVA)", "Parallel coordinates")
    images: list[str | None] = [None, None, None]
    if study is not None:
        images = [
            optuna_plot(lambda: ovm.plot_optimization_history(study), bar),
            optuna_plot(lambda: ovm.plot_param_importances(study)),
            optuna_plot(lambda: ovm.plot_parallel_coordinate(study)),
        ]
    sections = [
        {"title": title, "image": image, "note": few}
        for title, image in zip(titles, images, strict=True)
    ]
    sections.append(
        {
            "title": "Learning curves",
            "image": _png(learning_curves(tracker, ranked, baseline_run, labels)),
            "note": "",
        }
    )
    environment = Environment(
        loader=PackageLoader("tunelab.analysis", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
    )
    return environment.get_template("report.html.j2").render(
        study=sweep.study,
        engine=sweep.engine,
        experiment=sweep.experiment,
        summary=sweep_line(sweep),
        agreement=agreement_lines(tracker, sweep),
        table=render(comparison_table(tracker, sweep, top=top), "html"),
        sections=sections,
        exports=_exports(tracker, sweep),
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        store=tracker.shown_uri,
        parent_run_id=sweep.parent_run_id,
    )


def _exports(tracker: Tracker, sweep: SweepRecord) -> list[dict[str, Any]]:
    """The newest export of each kind (single, ensemble): test accuracy and pictures."""
    finished = [r for r in sweep.runs_of(tracker, Role.EXPORT) if r.info.status == "FINISHED"]
    newest: dict[bool, Any] = {}
    for run in finished:  # oldest first: later ones replace earlier ones
        newest[TagKey.ENSEMBLE_MEMBERS in run.data.tags] = run
    shown = []
    for run in newest.values():
        metrics = run.data.metrics
        pictures = []
        for path, alt in (
            (f"{Artifact.BUNDLE_DIR}/confusion_matrix.png", "confusion matrix"),
            (f"{Artifact.BUNDLE_DIR}/misclassified.png", "misclassified digits"),
        ):
            uri = _artifact_png(tracker, run.info.run_id, path)
            if uri:
                pictures.append({"uri": uri, "alt": alt})
        shown.append(
            {
                "name": run.info.run_name or run.info.run_id,
                "accuracy": metrics.get(MetricName.TEST_ACCURACY, float("nan")),
                "low": metrics.get(MetricName.TEST_ACCURACY_LOW, float("nan")),
                "high": metrics.get(MetricName.TEST_ACCURACY_HIGH, float("nan")),
                "p_value": metrics.get(MetricName.MCNEMAR_P_VALUE),
                "pictures": pictures,
            }
        )
    return shown

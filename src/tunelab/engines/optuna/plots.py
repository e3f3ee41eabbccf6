"""Optuna's plots of a study, logged as PNG artifacts of the sweep's parent run.

The launch that closes the parent draws them, once, from the whole study: with several workers,
the last to finish (the others leave the parent open and draw nothing, so N workers do not draw
and upload the same plots N times over).

Optuna's matplotlib plots draw through pyplot; each figure is closed after logging so that a long
sweep does not accumulate figures. A plot that cannot be drawn yet (importances need two complete
trials, say) is skipped with a note in `plots/skipped.txt`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import optuna

from tunelab.record.store import RunHandle


def log_study_plots(study: optuna.Study, run: RunHandle, *, baseline: float | None) -> list[str]:
    """Draw and log the study's plots; returns the artifact names written."""
    import matplotlib

    matplotlib.use("Agg", force=False)  # no display here; only if pyplot has not started yet
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    multi = len(study.directions) > 1
    target: dict[str, Any] = (
        {"target": lambda t: t.values[0], "target_name": "val_accuracy"} if multi else {}
    )
    plots: dict[str, Callable[[], Any]] = {
        "optimization_history": lambda: ovm.plot_optimization_history(study, **target),
        "param_importances": lambda: ovm.plot_param_importances(study, **target),
        "parallel_coordinates": lambda: ovm.plot_parallel_coordinate(study, **target),
        "intermediate_values": lambda: ovm.plot_intermediate_values(study),
    }
    if multi:
        plots["pareto_front"] = lambda: ovm.plot_pareto_front(
            study, target_names=[f"objective {i}" for i in range(len(study.directions))]
        )
    written, skipped = [], []
    for name, draw in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ExperimentalWarning on every matplotlib plot
                axes = draw()
        except (ValueError, RuntimeError, ZeroDivisionError) as error:
            skipped.append(f"{name}: {error}")
            continue
        figure = axes.flat[0].figure if hasattr(axes, "flat") else axes.figure
        if name == "optimization_history" and baseline is not None and not multi:
            axes.axhline(baseline, color="grey", ls="--", label="baseline val_accuracy")
            axes.legend(loc="lower right")
        figure.set_size_inches(10, 6)
        run.log_figure(figure, f"plots/{name}.png")
        plt.close(figure)
        written.append(name)
    if skipped:
        run.log_text("\n".join(skipped) + "\n", "plots/skipped.txt")
    return written

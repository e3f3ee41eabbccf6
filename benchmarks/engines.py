"""Optuna against KerasTuner on the same search space, data and wall-clock budget.

Usage: python benchmarks/engines.py [--experiment experiments/mnist_small.yaml] [--minutes 3]
                                    [--target 0.97]

Runs Optuna TPE + Hyperband pruning, KerasTuner Hyperband and KerasTuner Bayesian, one after the
other, each for the same wall-clock budget over the experiment's search space and data (loaded
once), into fresh temporary stores, and prints per engine: trials finished, epochs trained, best
validation accuracy, and the trial time and epochs until a trial first passed `--target` on
validation (default: the recorded baseline's best val_accuracy when one exists, else 0.97; the
quick experiment's 6,000 training images do not reach the full-data baseline in a few epochs).
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console

from tunelab.define.experiment import EngineSettings, ExperimentSpec, load_experiment
from tunelab.engines.launch import run_sweep
from tunelab.record.names import MetricName, Role, TagKey
from tunelab.record.query import Query
from tunelab.record.store import Tracker
from tunelab.training.prepare import load_splits_of

ENGINES = {
    "optuna tpe + hyperband": EngineSettings(name="optuna", sampler="tpe", pruner="hyperband"),
    "kerastuner hyperband": EngineSettings(name="kerastuner", tuner="hyperband"),
    "kerastuner bayesian": EngineSettings(name="kerastuner", tuner="bayesian"),
}


def time_to_target(tracker: Tracker, trials: list[Any], target: float) -> tuple[float, int] | None:
    """Trial seconds and epochs, in start order, until an epoch's val_accuracy passed target."""
    seconds, epochs = 0.0, 0
    for run in sorted(trials, key=lambda r: r.info.start_time):
        client = tracker.client
        accuracy = sorted(
            client.get_metric_history(run.info.run_id, "val_accuracy"), key=lambda m: m.step
        )
        timing = {
            m.step: m.value for m in client.get_metric_history(run.info.run_id, "epoch_seconds")
        }
        for metric in accuracy:
            seconds += timing.get(metric.step, 0.0)
            epochs += 1
            if metric.value > target:
                return seconds, epochs
    return None


def measure(spec: ExperimentSpec, folder: Path, splits: Any, target: float) -> dict[str, Any]:
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    run_sweep(
        spec,
        splits=splits,
        tracking_uri=uri,
        storage_url=f"sqlite:///{folder / 'optuna.db'}",
        state_dir=folder / "keras_tuner",
        show_progress=False,
        console=Console(quiet=True),
    )
    tracker = Tracker(uri)
    [parent] = tracker.search(spec.name, Query.of(role=Role.SWEEP))
    trials = tracker.search(spec.name, Query.of(parent=parent.info.run_id))
    finished = [t for t in trials if t.data.tags.get(TagKey.TRIAL_STATE) in ("complete", "pruned")]
    return {
        "finished": len(finished),
        "epochs": int(sum(t.data.metrics.get(MetricName.EPOCHS_TRAINED, 0) for t in trials)),
        "best": max(
            (t.data.metrics.get(MetricName.BEST_VAL_ACCURACY, 0.0) for t in finished), default=0.0
        ),
        "to_target": time_to_target(tracker, trials, target),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", type=Path, default=Path("experiments/mnist_small.yaml"))
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--target", type=float, default=None)
    args = parser.parse_args()
    base = load_experiment(args.experiment)
    target = args.target
    splits = load_splits_of(base)
    if target is None:
        found = Tracker().find_baseline(splits.digest)
        target = found.data.metrics[MetricName.BEST_VAL_ACCURACY] if found else 0.97
    budget = base.budget.model_copy(update={"trials": None, "timeout": args.minutes * 60})
    print(
        f"{args.experiment}: {len(splits.train)} training images, {args.minutes:g} min per engine, "
        f"target val_accuracy {target:.4f}"
    )
    print(f"{'engine':<24} {'finished':>8} {'epochs':>7} {'best val':>9} {'to target':>22}")
    with tempfile.TemporaryDirectory() as tmp:
        for label, engine in ENGINES.items():
            spec = replace(
                base,
                engine=engine.model_copy(update={"startup_trials": base.engine.startup_trials}),
                budget=budget,
            )
            folder = Path(tmp) / label.replace(" ", "_").replace("+", "")
            folder.mkdir()
            r = measure(spec, folder, splits, target)
            reached = (
                "not reached"
                if r["to_target"] is None
                else (f"{r['to_target'][0]:.0f} s, {r['to_target'][1]} epochs")
            )
            print(
                f"{label:<24} {r['finished']:>8} {r['epochs']:>7} {r['best']:>9.4f} {reached:>22}",
                flush=True,
            )


if __name__ == "__main__":
    main()

"""The same sampler with and without pruning, a fixed trial count: epochs and best accuracy.

Usage: python benchmarks/pruning.py [--experiment experiments/mnist_quick.yaml] [--trials 12]
                                    [--pruner hyperband]

Runs the experiment's sampler and seed twice over the same data, once with the pruner and once
without, each into fresh temporary stores, and prints per side: trials complete / pruned / failed,
epochs trained, best validation accuracy and wall time, then the ratio of epochs trained.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import optuna
from rich.console import Console

from tunelab.define.data import load_splits
from tunelab.define.experiment import ExperimentSpec, load_experiment
from tunelab.engines.launch import run_sweep


def measure(spec: ExperimentSpec, trials: int, folder: Path, splits: object) -> dict[str, float]:
    storage = f"sqlite:///{folder / 'optuna.db'}"
    started = time.perf_counter()
    run_sweep(
        spec,
        trials=trials,
        storage_url=storage,
        tracking_uri=f"sqlite:///{folder / 'mlflow.db'}",
        splits=splits,
        show_progress=False,
        console=Console(quiet=True),  # type: ignore[arg-type]
    )
    seconds = time.perf_counter() - started
    study = optuna.load_study(study_name=spec.name, storage=storage)
    states = [t.state for t in study.trials]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    return {
        "complete": states.count(optuna.trial.TrialState.COMPLETE),
        "pruned": states.count(optuna.trial.TrialState.PRUNED),
        "failed": states.count(optuna.trial.TrialState.FAIL),
        "epochs": sum(len(t.intermediate_values) for t in study.trials),
        "best": max((t.values[0] for t in complete), default=float("nan")),
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", type=Path, default=Path("experiments/mnist_quick.yaml"))
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--pruner", default="hyperband")
    args = parser.parse_args()
    spec = load_experiment(args.experiment)
    splits = load_splits(
        spec.dataset, spec.validation_size, spec.split_seed, train_size=spec.train_size
    )
    budget = replace(spec.budget, timeout_seconds=None)
    sides = {
        args.pruner: replace(spec, budget=budget, engine=replace(spec.engine, pruner=args.pruner)),
        "none": replace(spec, budget=budget, engine=replace(spec.engine, pruner="none")),
    }
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, side in sides.items():
            folder = Path(tmp) / name
            folder.mkdir()
            results[name] = measure(side, args.trials, folder, splits)
            r = results[name]
            print(
                f"pruner {name:>18}: {r['complete']:.0f} complete, {r['pruned']:.0f} pruned, "
                f"{r['failed']:.0f} failed; {r['epochs']:.0f} epochs; best val_accuracy "
                f"{r['best']:.4f}; {r['seconds']:.0f} s",
                flush=True,
            )
    with_pruning, without = results[args.pruner], results["none"]
    print(
        f"{spec.engine.sampler} sampler, seed {spec.seed}, {args.trials} finished trials each, "
        f"{len(splits.train)} training images"
    )
    print(
        f"epochs trained with / without pruning: {with_pruning['epochs'] / without['epochs']:.2f}; "
        f"wall time ratio {with_pruning['seconds'] / without['seconds']:.2f}; best val_accuracy "
        f"{with_pruning['best']:.4f} vs {without['best']:.4f}"
    )


if __name__ == "__main__":
    main()

"""The same sampler with and without pruning, a fixed trial count: images seen and best value.

Usage: python benchmarks/pruning.py [--experiment experiments/mnist_small.yaml] [--trials 12]
                                    [--pruner hyperband] [--min-images 500] [--repeats 1]

Runs the experiment's sampler and seed twice over the same data, once with the pruner (and,
with --min-images, data-size fidelity: early rungs on fewer images) and once with neither, each
into fresh temporary stores, with the experiment's time budget removed so that both sides finish
the same number of trials. Prints per side: trials complete / pruned / failed, training images
seen (the pruning step: what the sweep paid for), best validation accuracy and wall time; then the
ratio of images seen. Target (issue 12): <= 0.35 at the same best value. --repeats runs both sides
again with the sampler seed + 1, + 2, ... and prints the spread.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import optuna
from rich.console import Console

from tunelab.define.data import Splits
from tunelab.define.experiment import ExperimentSpec, load_experiment
from tunelab.engines.launch import run_sweep
from tunelab.quiet import quiet_environment
from tunelab.training.prepare import load_splits_of


def measure(spec: ExperimentSpec, trials: int, folder: Path, splits: Splits) -> dict[str, float]:
    storage = f"sqlite:///{folder / 'optuna.db'}"
    started = time.perf_counter()
    run_sweep(
        spec,
        trials=trials,
        storage_url=storage,
        tracking_uri=f"sqlite:///{folder / 'mlflow.db'}",
        splits=splits,
        show_progress=False,
        console=Console(quiet=True),
        state_dir=folder / "keras_tuner",
    )
    seconds = time.perf_counter() - started
    study = optuna.load_study(study_name=spec.name, storage=storage)
    states = [t.state for t in study.trials]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    return {
        "complete": states.count(optuna.trial.TrialState.COMPLETE),
        "pruned": states.count(optuna.trial.TrialState.PRUNED),
        "failed": states.count(optuna.trial.TrialState.FAIL),
        # intermediate values are keyed by training images seen: the last is what a trial cost
        "images": sum(max(t.intermediate_values, default=0) for t in study.trials),
        "best": max((t.values[0] for t in complete), default=float("nan")),
        "seconds": seconds,
    }


def sides(spec: ExperimentSpec, pruner: str, min_images: int | None) -> dict[str, ExperimentSpec]:
    budget = spec.budget.model_copy(update={"timeout": None})
    pruned = spec.engine.model_copy(update={"pruner": pruner, "min_images": min_images})
    plain = spec.engine.model_copy(update={"pruner": "none", "min_images": None})
    label = pruner + (f" + min_images {min_images}" if min_images else "")
    return {
        label: replace(spec, budget=budget, engine=pruned),
        "none": replace(spec, budget=budget, engine=plain),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", type=Path, default=Path("experiments/mnist_small.yaml"))
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--pruner", default="hyperband")
    parser.add_argument("--min-images", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    quiet_environment()
    spec = load_experiment(args.experiment)
    splits = load_splits_of(spec)
    ratios, gaps = [], []
    for repeat in range(args.repeats):
        seeded = replace(spec, seed=spec.seed + repeat)
        results = {}
        with tempfile.TemporaryDirectory() as tmp:
            for name, side in sides(seeded, args.pruner, args.min_images).items():
                folder = Path(tmp) / name.replace(" ", "_")
                folder.mkdir()
                results[name] = r = measure(side, args.trials, folder, splits)
                print(
                    f"seed {seeded.seed} pruner {name:>26}: {r['complete']:.0f} complete, "
                    f"{r['pruned']:.0f} pruned, {r['failed']:.0f} failed; {r['images']:,.0f} "
                    f"images seen; best val_accuracy {r['best']:.4f}; {r['seconds']:.0f} s",
                    flush=True,
                )
        with_pruning, without = results[next(iter(results))], results["none"]
        ratios.append(with_pruning["images"] / without["images"])
        gaps.append(with_pruning["best"] - without["best"])
        print(
            f"seed {seeded.seed}: images seen with / without pruning {ratios[-1]:.2f}; wall time "
            f"ratio {with_pruning['seconds'] / without['seconds']:.2f}; best val_accuracy "
            f"{with_pruning['best']:.4f} vs {without['best']:.4f}",
            flush=True,
        )
    print(
        f"{spec.engine.sampler} sampler, {args.trials} finished trials a side, {len(splits.train)} "
        f"training images, {args.repeats} repeat(s): images-seen ratio "
        f"{statistics.mean(ratios):.2f} (range {min(ratios):.2f}-{max(ratios):.2f}), best value "
        f"difference {statistics.mean(gaps) * 100:+.2f} points (target: ratio <= 0.35)"
    )


if __name__ == "__main__":
    main()

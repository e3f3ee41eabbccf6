"""An hour that beats the hand recipe? `make champion` with a 60-minute budget from a clean store.

Usage: python benchmarks/hour.py [--budget 60m] [--experiment experiments/mnist_hour.yaml]
                                 [--folder benchmarks/results/hour] [--keep-baseline]

1. A clean store (MLflow, Optuna, exports) in --folder; the reference baseline is recorded first
   (outside the budget, as `tunelab run` does; --keep-baseline reuses one already there).
2. `tunelab run EXPERIMENT --budget 60m` as a real subprocess, timed end to end.
3. From the record: the single champion's and the ensemble's test accuracy with Wilson
   intervals, McNemar against the baseline (and ensemble against champion), wall time per stage,
   and how many times the test set was read.
4. The champion's configuration trained once on every training image with its schedule shortened
   to 0.25 x the baseline's 12-epoch wall time (measured in this run), tested once: 99.25 %?

Prints a table and writes `results.json` in --folder. Selection is on validation only: the test
set is read by the baseline, the single champion, the ensemble and the 0.25x model, once each.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tunelab.quiet import import_tensorflow, quiet_environment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="60m")
    parser.add_argument("--experiment", type=Path, default=Path("experiments/mnist_hour.yaml"))
    parser.add_argument("--folder", type=Path, default=Path("benchmarks/results/hour"))
    parser.add_argument("--keep-baseline", action="store_true")
    args = parser.parse_args()
    quiet_environment()
    folder = args.folder.resolve()
    if folder.exists() and not args.keep_baseline:
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tracking = f"sqlite:///{folder / 'mlflow.db'}"
    storage = f"sqlite:///{folder / 'optuna.db'}"
    for leftover in ("optuna.db", "exports"):
        path = folder / leftover
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    baseline = ensure_baseline(tracking)
    started = time.time()
    command = [
        sys.executable,
        "-m",
        "tunelab",
        "run",
        str(args.experiment.resolve()),
        "--budget",
        args.budget,
        "--tracking-uri",
        tracking,
        "--storage",
        storage,
        "--out",
        str(folder / "exports"),
        "--quiet",
    ]
    print("running:", " ".join(command[2:]), flush=True)
    with open(folder / "run.log", "w") as log:
        done = subprocess.run(
            command, cwd=folder, stdout=log, stderr=subprocess.STDOUT, check=False
        )
    wall = time.time() - started
    print((folder / "run.log").read_text()[-3000:])
    if done.returncode != 0:
        raise SystemExit(f"tunelab run failed with exit code {done.returncode}")
    results = summarise(tracking, args.experiment, wall, baseline)
    refit = (results.get("single") or {}).get("run_id")
    results["quarter"] = quarter_schedule(tracking, args.experiment, baseline, refit)
    (folder / "results.json").write_text(json.dumps(results, indent=1, default=str))
    print_table(results)


def ensure_baseline(tracking: str) -> dict[str, Any]:
    """The store's reference baseline (recorded now if missing), with its timings."""
    from tunelab.record.names import MetricName
    from tunelab.record.store import Tracker

    tracker = Tracker(tracking)
    from tunelab.define.data import builtin_dataset

    run = tracker.find_baseline(builtin_dataset("mnist").digest)
    if run is None:
        print("recording the baseline (outside the budget)", flush=True)
        import_tensorflow()
        from tunelab.define.data import load_splits
        from tunelab.training.baseline import run_baseline

        started = time.time()
        run_baseline(load_splits("mnist"), tracker)
        print(f"baseline recorded in {(time.time() - started) / 60:.1f} min", flush=True)
        run = tracker.find_baseline(builtin_dataset("mnist").digest)
    metrics = run.data.metrics
    return {
        "run_id": run.info.run_id,
        "test_accuracy": metrics[MetricName.TEST_ACCURACY],
        "full_train_seconds": metrics["full_train_" + MetricName.WALL_SECONDS],
    }


def summarise(
    tracking: str, experiment: Path, wall: float, baseline: dict[str, Any]
) -> dict[str, Any]:
    from tunelab.define.experiment import load_experiment
    from tunelab.pipeline import stored_summary
    from tunelab.record.names import MetricName
    from tunelab.record.recorded import find_sweep
    from tunelab.record.store import Tracker

    tracker = Tracker(tracking)
    spec = load_experiment(experiment)
    sweep = find_sweep(tracker, spec.name)
    summary = stored_summary(tracker, sweep.parent_run_id) or {}
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "budget_seconds": summary.get("budget_seconds"),
        "end_to_end_seconds": wall,
        "pipeline_seconds": summary.get("spent_seconds"),
        "stage_seconds": summary.get("stage_seconds"),
        "champion": summary.get("champion"),
        "confirmed_mean": summary.get("confirmed_mean"),
        "final_epochs": summary.get("final_epochs"),
        "single": summary.get("single"),
        "ensemble": summary.get("ensemble"),
        "baseline": baseline,
        "test_set_reads_by_sweep": sweep.metrics.get(MetricName.TEST_EVALUATIONS),
        "trials": {
            key: sweep.metrics.get(f"trials_{key}")
            for key in ("complete", "pruned", "failed", "paused")
        },
        "notes": summary.get("notes"),
    }


QUARTER_SAFETY = 1.05


def quarter_schedule(
    tracking: str, experiment: Path, baseline: dict[str, Any], refit: str | None
) -> dict[str, Any]:
    """The champion's config on all images, its schedule fit to 0.25x the baseline's time;
    planned from the final stage's refit (`refit`, a run id) where the pipeline made one."""
    import_tensorflow()
    from tunelab.define.data import load_splits
    from tunelab.define.experiment import load_experiment
    from tunelab.pipeline import wall_seconds_per_image
    from tunelab.record.names import TagKey
    from tunelab.record.recorded import find_sweep, load_recorded_run
    from tunelab.record.store import Tracker
    from tunelab.training.train import evaluate_test, train_and_validate

    tracker = Tracker(tracking)
    sweep = find_sweep(tracker, load_experiment(experiment).name)
    champion = load_recorded_run(tracker, sweep.tags[TagKey.CHAMPION_RUN_ID])
    seconds = 0.25 * baseline["full_train_seconds"]
    splits = load_splits("mnist")
    everything = splits.for_refit()
    images = len(everything.train.y)
    # The wall seconds per image of a training like this one: the final stage's refit (every
    # training image, no validation) where it exists; the champion's trial validated every
    # epoch, so its figure is about a tenth too high for a training that does not.
    source = load_recorded_run(tracker, refit) if refit else champion
    per_image = wall_seconds_per_image(source, 1 / 1000)
    # A benchmark measured in this run against the baseline's time in this run: a 5 % margin
    # (not the pipeline's 15 %, which is there to protect a budget) and 8 s for tracing.
    epochs = max(1, math.floor((seconds - 8.0) / (QUARTER_SAFETY * images * per_image)))
    config = champion.config.with_epochs(epochs)
    started = time.time()
    result = train_and_validate(config, everything, seed=champion.seed)
    took = time.time() - started
    test = evaluate_test(result.model, splits)
    return {
        "seconds_allowed": seconds,
        "seconds_taken": took,
        "planned_from": "final refit" if refit else "champion trial",
        "seconds_per_epoch_measured": images * per_image,
        "epochs": epochs,
        "test_accuracy": test.accuracy,
        "errors": test.errors,
        "reaches_baseline_published": test.accuracy >= 0.9925,
    }


def print_table(results: dict[str, Any]) -> None:
    single, ensemble = results.get("single") or {}, results.get("ensemble") or {}
    baseline, quarter = results["baseline"], results["quarter"]
    rows = [
        ("end to end (tunelab run)", f"{results['end_to_end_seconds'] / 60:.1f} min"),
        (
            "stages",
            ", ".join(
                f"{k} {v / 60:.1f} min" for k, v in (results.get("stage_seconds") or {}).items()
            ),
        ),
        (
            "champion",
            f"{results.get('champion')}, confirmed val "
            f"{results.get('confirmed_mean') or float('nan'):.4f}, "
            f"final refit {results.get('final_epochs')} epochs",
        ),
    ]
    for name, item in (("single champion", single), ("ensemble", ensemble)):
        if item:
            rows.append(
                (
                    name,
                    f"{item['test_accuracy']:.4f} [{item['ci95_low']:.4f}, "
                    f"{item['ci95_high']:.4f}], {item['errors']} errors, McNemar p vs "
                    f"baseline {item['p_vs_baseline']}, vs single "
                    f"{item.get('p_vs_single')}",
                )
            )
    rows += [
        (
            "baseline",
            f"{baseline['test_accuracy']:.4f} (12 epochs on 60,000 images: "
            f"{baseline['full_train_seconds']:.0f} s)",
        ),
        ("test set reads by the sweep", str(results.get("test_set_reads_by_sweep"))),
        (
            "0.25x schedule",
            f"{quarter['epochs']} epochs in {quarter['seconds_taken']:.0f} s "
            f"(allowed {quarter['seconds_allowed']:.0f} s): "
            f"{quarter['test_accuracy']:.4f}",
        ),
        ("trials", str(results.get("trials"))),
    ]
    width = max(len(r[0]) for r in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()

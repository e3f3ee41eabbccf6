"""Does the search earn its keep? TPE with screens vs random search vs KerasTuner's Hyperband.

Usage: python benchmarks/search_value.py [--budget 20m] [--seeds 3]
                                         [--methods tpe-screens,random,kt-hyperband]
                                         [--experiment experiments/mnist_cold.yaml]
                                         [--retrain-epochs 4] [--precision mixed_bfloat16]
                                         [--out benchmarks/results/search_value]

Every method searches the same space (the experiment's: by default the hand recipe's
neighbourhood with nothing enqueued) on the same split, for the same wall-clock budget, once per
seed, each as `tunelab tune EXPERIMENT --timeout BUDGET` typed by a user, in a fresh process with
fresh stores:

- tpe-screens: Optuna's TPE, every configuration first on a complete one-epoch schedule, the best
  third again on a complete four-epoch one (`engine.screens: [1, 4]`);
- random: Optuna's random sampler, every configuration on the space's full schedule;
- kt-hyperband: KerasTuner's Hyperband oracle over the same file (epochs up to the space's).

For each run it reads the record: the configuration the sweep would crown (the longest screen
first, then best validation accuracy) and its validation accuracy as found, the trials finished,
and the rank agreement the sweep measured. Because the methods train schedules of different
lengths, what was found is also judged alike: each crowned configuration is trained once more on a
complete `--retrain-epochs` schedule, with the same seed for every method (0: skip). Prints one
row per run, then each method's mean, spread (standard deviation) and 95 % t-interval, then the
first method against each other one seed by seed (paired differences of the retrained accuracy),
then each method's rank agreement pooled over its seeds.

Three seeds of three methods at 20 minutes take about three and a half hours, so each run's
stores and result are kept under `--out` (one folder per method and seed, `result.json` written
when its search and retraining are done): the same command run again reports the runs recorded
for the same experiment, budget and retraining and does only the missing ones, so the benchmark
can be stopped and continued, or grown one seed at a time (`--seeds 1`, later `--seeds 3`). The
experiment is known by what its search reads (the file without its pipeline, enqueued points
and description, and its space's content), not by its path: a checkout in another folder
continues the same runs, and a change to the pipeline's settings does not void them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

METHODS: dict[str, dict[str, Any]] = {
    "tpe-screens": {
        "name": "optuna",
        "sampler": "tpe",
        "startup_trials": 5,
        "screens": [1, 4],
        "reduction_factor": 3,
    },
    "random": {"name": "optuna", "sampler": "random"},
    "kt-hyperband": {"name": "kerastuner", "tuner": "hyperband"},
}


def searched(base: Path) -> dict[str, Any]:
    """What a run's search reads of `base`: the experiment without its pipeline, enqueued points
    (nothing is enqueued) and description, its search space as a resolved path."""
    data: dict[str, Any] = yaml.safe_load(base.read_text())
    data["search_space"] = str((base.parent / data["search_space"]).resolve())
    for key in ("pipeline", "enqueue", "description"):
        data.pop(key, None)
    return data


def experiment_for(base: Path, method: str, seed: int, folder: Path) -> Path:
    """The experiment file one run searches: `searched(base)` with the method's engine and the
    seed."""
    data = searched(base)
    data["name"] = f"{method}-seed{seed}"
    data["engine"] = METHODS[method]
    data["seed"] = seed
    data["budget"] = {**data.get("budget", {}), "trials": 500}
    path = folder / "experiment.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def experiment_identity(base: Path) -> dict[str, str]:
    """What makes two runs' searches the same: the file's name and `searched(base)` with the
    space's content in place of its path (where the checkout sits does not matter)."""
    data = searched(base)
    data["search_space"] = yaml.safe_load(Path(data["search_space"]).read_text())
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    return {"experiment": base.name, "experiment_sha256": digest[:16]}


def judged(item: dict[str, Any]) -> bool:
    """A rank-agreement pair this benchmark reports: a rung against the end, or a screen
    against the next."""
    from tunelab.engines.agreement import FINAL

    return bool(item["second"] == FINAL or item["first"].startswith("screen"))


def search(method: str, seed: int, budget: str, base: Path, folder: Path) -> dict[str, Any]:
    """One `tunelab tune` run in `folder`; what its record says it found."""
    from tunelab.record.names import Artifact, MetricName
    from tunelab.record.recorded import completed, finalists, find_sweep
    from tunelab.record.store import Tracker

    experiment = experiment_for(base, method, seed, folder)
    started = time.monotonic()
    tunelab = str(Path(sys.executable).parent / "tunelab")
    child = subprocess.run(
        [tunelab, "tune", str(experiment), "--timeout", budget],
        cwd=folder,
        capture_output=True,
        text=True,
        env={
            k: v
            for k, v in os.environ.items()
            if k not in ("MLFLOW_TRACKING_URI", "TUNELAB_OPTUNA_STORAGE")
        },
    )
    if child.returncode != 0:
        raise SystemExit(
            f"{method} seed {seed} failed ({child.returncode}): {child.stderr[-3000:]}"
        )
    wall = time.monotonic() - started
    tracker = Tracker(f"sqlite:///{folder / 'tracking' / 'mlflow.db'}")
    sweep = find_sweep(tracker, str(experiment))
    runs = sweep.trial_runs(tracker)
    crowned = finalists(runs)
    agreements = []
    path = tracker.download_artifact(sweep.parent_run_id, Artifact.RANK_AGREEMENT, folder)
    if path is not None:
        for item in json.loads(path.read_text()):
            if judged(item):
                rho = item["spearman"]
                shown = "-" if rho is None else f"{rho:.2f}"
                agreements.append(f"{item['first']} -> {item['second']}: {shown} (n {item['n']})")
    return {
        "method": method,
        "seed": seed,
        "wall": wall,
        "complete": len(completed(runs)),
        "found": crowned[0].data.metrics[MetricName.BEST_VAL_ACCURACY] if crowned else None,
        "run_id": crowned[0].info.run_id if crowned else None,
        "tracking": str(folder / "tracking" / "mlflow.db"),
        "agreement": agreements,
    }


def retrain(found: dict[str, Any], epochs: int, precision: str, base: Path) -> float:
    """The crowned configuration on a complete `epochs` schedule, seed 1 for every method."""
    from tunelab.define.experiment import load_experiment
    from tunelab.record.recorded import load_recorded_run
    from tunelab.record.store import Tracker
    from tunelab.training.prepare import load_splits_of
    from tunelab.training.train import train_and_validate

    splits = load_splits_of(load_experiment(base))
    recorded = load_recorded_run(Tracker(f"sqlite:///{found['tracking']}"), found["run_id"])
    config = recorded.config.with_epochs(epochs).with_precision(precision)
    result = train_and_validate(config, splits, seed=1)
    return float(result.history["val_accuracy"][-1])


def summary(values: list[float], *, signed: bool = False) -> str:
    """Mean, standard deviation and 95 % t-interval of `values` (signed: differences)."""
    from scipy import stats

    if not values:
        return "nothing finished"
    shown = "{:+.4f}" if signed else "{:.4f}"
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"mean {shown.format(mean)} (one run)"
    spread = statistics.stdev(values)
    half = stats.t.ppf(0.975, len(values) - 1) * spread / len(values) ** 0.5
    low, high = shown.format(mean - half), shown.format(mean + half)
    return f"mean {shown.format(mean)}, sd {spread:.4f}, 95 % CI [{low}, {high}]"


def recorded(folder: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The result kept in `folder` by an earlier run with the same settings, if there is one."""
    path = folder / "result.json"
    if not path.exists():
        return None
    result: dict[str, Any] = json.loads(path.read_text())
    return result if result.get("settings") == settings else None


def run_once(
    method: str, seed: int, args: argparse.Namespace, settings: dict[str, Any]
) -> dict[str, Any]:
    """One method and seed: searched, its crowned configuration retrained, the result kept."""
    folder = args.out.resolve() / f"{method}-seed{seed}"
    earlier = recorded(folder, settings)
    if earlier is not None:
        return {**earlier, "earlier": True}
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    found = search(method, seed, args.budget, args.experiment.resolve(), folder)
    if args.retrain_epochs and found["run_id"] is not None:
        from tunelab.quiet import import_tensorflow

        import_tensorflow()
        found["retrained"] = retrain(
            found, args.retrain_epochs, args.precision, args.experiment.resolve()
        )
    found["settings"] = settings
    (folder / "result.json").write_text(json.dumps(found, indent=1))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="20m")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--experiment", type=Path, default=Path("experiments/mnist_cold.yaml"))
    parser.add_argument("--retrain-epochs", type=int, default=4)
    parser.add_argument("--precision", default="mixed_bfloat16")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/search_value"))
    args = parser.parse_args()
    from tunelab.quiet import quiet_environment

    quiet_environment()
    from tunelab.training.precision import cpu_description

    print(f"CPU: {cpu_description()}; {args.experiment}, budget {args.budget} a run", flush=True)
    methods = args.methods.split(",")
    settings = {
        **experiment_identity(args.experiment.resolve()),
        "budget": args.budget,
        "retrain_epochs": args.retrain_epochs,
        "precision": args.precision,
    }
    results: list[dict[str, Any]] = []
    for seed in range(1, args.seeds + 1):
        for method in methods:
            found = run_once(method, seed, args, settings)
            results.append(found)
            shown = "nothing" if found["found"] is None else f"{found['found']:.4f}"
            again = ""
            if "retrained" in found:
                again = f"; complete {args.retrain_epochs}-epoch schedule {found['retrained']:.4f}"
            print(
                f"{method:<13} seed {seed}: found {shown}{again} "
                f"({found['complete']} complete trials, {found['wall']:.0f} s"
                + (", recorded earlier" if found.get("earlier") else "")
                + "); "
                + "; ".join(found["agreement"]),
                flush=True,
            )
    for method in methods:
        mine = [r for r in results if r["method"] == method and r["found"] is not None]
        line = f"{method:<13} found: {summary([r['found'] for r in mine])}"
        retrained = [r["retrained"] for r in mine if "retrained" in r]
        if retrained:
            line += f"; retrained alike: {summary(retrained)}"
        print(line, flush=True)
    for line in paired_differences(results, methods):
        print(line, flush=True)
    for method in methods:
        seeds = [r["seed"] for r in results if r["method"] == method]
        folders = [args.out.resolve() / f"{method}-seed{seed}" for seed in seeds]
        for line in pooled_agreement(method, folders):
            print(line, flush=True)


def pooled_agreement(method: str, folders: list[Path]) -> list[str]:
    """Each rung's agreement with the end (or a screen's with the next) pooled over the seeds:
    Spearman's rho averaged in Fisher's z, each run weighted by n - 3, from the runs that ranked
    at least 4 configurations there; the total n says how much it rests on."""
    pooled: dict[str, list[tuple[float, int]]] = {}
    for folder in folders:
        path = folder / "rank_agreement.json"
        if not path.exists():
            continue
        for item in json.loads(path.read_text()):
            if judged(item) and item["spearman"] is not None and item["n"] >= 4:
                label = f"{item['first']} -> {item['second']}"
                pooled.setdefault(label, []).append((item["spearman"], item["n"]))
    lines = []
    for label, pairs in pooled.items():
        weight = sum(n - 3 for _, n in pairs)
        z = sum((n - 3) * math.atanh(max(-0.999, min(0.999, rho))) for rho, n in pairs)
        rho = math.tanh(z / weight)
        total = sum(n for _, n in pairs)
        lines.append(
            f"{method:<13} {label}: Spearman {rho:.2f} pooled over {len(pairs)} runs (n {total})"
        )
    return lines


def paired_differences(results: list[dict[str, Any]], methods: list[str]) -> list[str]:
    """The first method against each other one, seed by seed, on the retrained accuracy (the
    figure judged alike): the mean difference, its interval and the seeds it won. Seeds share
    the split and the retraining seed, so pairing removes what they have in common."""
    retrained = {(r["method"], r["seed"]): r["retrained"] for r in results if "retrained" in r}
    first, lines = methods[0], []
    for other in methods[1:]:
        seeds = sorted(s for m, s in retrained if m == first and (other, s) in retrained)
        if not seeds:
            continue
        gaps = [retrained[(first, s)] - retrained[(other, s)] for s in seeds]
        won = sum(gap > 0 for gap in gaps)
        lines.append(
            f"{first} - {other} (retrained, paired by seed): {summary(gaps, signed=True)}; "
            f"ahead in {won} of {len(gaps)} seeds"
        )
    return lines


if __name__ == "__main__":
    main()

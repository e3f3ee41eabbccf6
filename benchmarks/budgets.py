"""Does every budget buy a result on this machine? `tunelab run` at several budgets, cold.

Usage: python benchmarks/budgets.py [--experiment experiments/mnist_hour.yaml ...]
                                    [--budget 20m --budget 10m] [--one-core [--cpu N]]
                                    [--folder benchmarks/results/budgets]

For each experiment and budget, from a fresh store (MLflow, Optuna, exports, in its own folder):
`tunelab run EXPERIMENT --no-baseline --budget B` as a real subprocess (with `--one-core`, pinned
to CPU 0 by `taskset -c 0`, which is how a slower machine behaves), timed end to end. Then from
the record: the precision `auto` chose and both measured speeds, the search's schedule, each
stage's wall time, the trials, and the delivered model's test accuracy (or the error line).
Also `--budget 1m`, which must be refused in one line before anything trains.

Prints one table and writes `results.json` in --folder. The CPU (`lscpu`'s model and flags) is
printed first: figures from machines without native bfloat16 differ by several times.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tunelab.quiet import quiet_environment
from tunelab.training.precision import cpu_description


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", type=Path, action="append")
    parser.add_argument("--budget", action="append")
    parser.add_argument("--one-core", action="store_true")
    parser.add_argument("--cpu", type=int, default=0, help="with --one-core: the CPU to pin to")
    parser.add_argument("--folder", type=Path, default=Path("benchmarks/results/budgets"))
    args = parser.parse_args()
    quiet_environment()
    experiments = args.experiment or [Path("experiments/mnist_hour.yaml")]
    budgets = args.budget or ["20m", "10m"]
    print(f"CPU: {cpu_description()}", flush=True)
    folder = args.folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    rows = [refused_row(experiments[0], folder)]
    for experiment in experiments:
        for budget in budgets:
            rows.append(run_one(experiment, budget, folder, one_core=args.one_core, cpu=args.cpu))
            print_table(rows)
    (folder / "results.json").write_text(
        json.dumps({"cpu": cpu_description(), "rows": rows}, indent=1, default=str)
    )
    print_table(rows)


def command(experiment: Path, budget: str, folder: Path, one_core: bool, cpu: int = 0) -> list[str]:
    pin = ["taskset", "-c", str(cpu)] if one_core else []
    return [
        *pin,
        sys.executable,
        "-m",
        "tunelab",
        "run",
        str(experiment.resolve()),
        "--no-baseline",
        "--budget",
        budget,
        "--tracking-uri",
        f"sqlite:///{folder / 'mlflow.db'}",
        "--storage",
        f"sqlite:///{folder / 'optuna.db'}",
        "--out",
        str(folder / "exports"),
        "--quiet",
    ]


def refused_row(experiment: Path, folder: Path) -> dict[str, Any]:
    """`--budget 1m`: refused in one line, before anything trains."""
    where = folder / "refused"
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    started = time.time()
    done = subprocess.run(
        command(experiment, "1m", where, one_core=False),
        cwd=where,
        capture_output=True,
        text=True,
        check=False,
    )
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    return {
        "experiment": experiment.stem,
        "budget": "1m",
        "exit": done.returncode,
        "wall_seconds": time.time() - started,
        "delivered": errors[-1] if errors else "(no error line)",
        "trained": (where / "mlflow.db").exists()
        and bool(_runs(f"sqlite:///{where / 'mlflow.db'}")),
    }


def _runs(tracking: str) -> list[Any]:
    from tunelab.record.query import Query
    from tunelab.record.store import Tracker

    return Tracker(tracking).search_all(Query())


def run_one(
    experiment: Path, budget: str, folder: Path, *, one_core: bool, cpu: int = 0
) -> dict[str, Any]:
    where = folder / f"{experiment.stem}-{budget}{'-one-core' if one_core else ''}"
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    print(f"running {experiment.stem} --budget {budget}{' (one core)' if one_core else ''}")
    started = time.time()
    with open(where / "run.log", "w") as log:
        done = subprocess.run(
            command(experiment, budget, where, one_core, cpu),
            cwd=where,
            stdout=log,
            stderr=subprocess.STDOUT,
            check=False,
        )
    wall = time.time() - started
    row: dict[str, Any] = {
        "experiment": experiment.stem,
        "budget": budget,
        "one_core": one_core,
        "exit": done.returncode,
        "wall_seconds": wall,
    }
    log_text = (where / "run.log").read_text()
    if done.returncode != 0:
        errors = [line for line in log_text.splitlines() if line.startswith("error:")]
        row["delivered"] = errors[-1] if errors else log_text[-300:]
        return row
    row.update(record(f"sqlite:///{where / 'mlflow.db'}", experiment))
    return row


def record(tracking: str, experiment: Path) -> dict[str, Any]:
    """What the store says about the run: precision, speeds, schedule, stages, delivery."""
    from tunelab.define.experiment import load_experiment
    from tunelab.pipeline import stored_summary
    from tunelab.record.recorded import find_sweep
    from tunelab.record.store import Tracker

    tracker = Tracker(tracking)
    sweep = find_sweep(tracker, load_experiment(experiment).name)
    summary = stored_summary(tracker, sweep.parent_run_id) or {}
    delivered = summary.get("ensemble") or summary.get("single") or {}
    return {
        "precision": sweep.params.get("precision"),
        "float32_images_per_second": sweep.metrics.get("images_per_second_float32"),
        "bfloat16_images_per_second": sweep.metrics.get("images_per_second_bfloat16"),
        "search_schedule_epochs": sweep.params.get("schedule_epochs"),
        "stage_seconds": summary.get("stage_seconds"),
        "pipeline_seconds": summary.get("spent_seconds"),
        "trials": {k: sweep.metrics.get(f"trials_{k}") for k in ("complete", "pruned", "paused")},
        "final_epochs": summary.get("final_epochs"),
        "delivered": (
            f"{delivered.get('label')}: {delivered.get('test_accuracy', 0):.4f} test"
            if delivered
            else "nothing"
        ),
        "single": (summary.get("single") or {}).get("test_accuracy"),
        "notes": summary.get("notes"),
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        "| experiment | budget | one core | exit | wall | precision (f32 / bf16 images/s) "
        "| search schedule | stages (min) | trials c/p/paused | delivered |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        stages = row.get("stage_seconds") or {}
        trials = row.get("trials") or {}
        speeds = (
            f"{row.get('precision')} ({row.get('float32_images_per_second') or 0:.0f} / "
            f"{row.get('bfloat16_images_per_second') or 0:.0f})"
            if row.get("precision")
            else "-"
        )
        print(
            f"| {row['experiment']} | {row['budget']} | {'yes' if row.get('one_core') else 'no'} "
            f"| {row['exit']} | {row['wall_seconds'] / 60:.1f} min | {speeds} "
            f"| {row.get('search_schedule_epochs', '-')} "
            f"| {' / '.join(f'{v / 60:.1f}' for v in stages.values()) or '-'} "
            f"| {'/'.join(str(int(trials.get(k) or 0)) for k in ('complete', 'pruned', 'paused'))} "
            f"| {row.get('delivered')} |",
            flush=True,
        )


if __name__ == "__main__":
    main()

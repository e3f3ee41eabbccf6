"""Trials per minute with 1, 2, 4 and 8 workers on one study, on the tiny fixture, in one run.

Starts the project's services (PostgreSQL + MLflow server, `scripts/services.sh`) in a
temporary folder on free ports, then for each worker count runs a fresh study with the same
budget of tiny trials (filters 4, 2 epochs on 2,500 images) in real worker processes, and prints
trials per minute and the ratio to one worker. On a 2-core machine, more than 2 workers only
add contention; the point is that the counts stay exact while they do (each line says how many
trials the study holds against the budget).

    python benchmarks/workers.py [--trials 16] [--epochs 2] [--workers 1,2,4,8]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "mnist_tiny.npz"
SPACE = """
parameters:
  dense_units: {type: int, low: 8, high: 32}
fixed: {optimizer: adam, learning_rate: 0.002, filters: 4, epochs: EPOCHS, batch_size: 256}
"""
EXPERIMENT = """
name: NAME
search_space: space.yaml
engine: {name: optuna, sampler: random}
budget: {trials: TRIALS, max_epochs: EPOCHS}
seed: 3
"""
WORKER = """
import sys
from pathlib import Path
from tunelab.define.data import load_npz_splits
from tunelab.engines.launch import run_sweep
from tunelab.define.experiment import load_experiment
spec = load_experiment(sys.argv[1])
splits = load_npz_splits(Path(sys.argv[2]), validation_size=500)
run_sweep(spec, splits=splits, tracking_uri=sys.argv[3], show_progress=False)
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", default="1,2,4,8")
    args = parser.parse_args()
    import optuna

    folder = Path(tempfile.mkdtemp(prefix="tunelab-bench-workers-"))
    for parent in [folder, *folder.parents]:  # PostgreSQL runs as user postgres under root
        if parent == Path(tempfile.gettempdir()):
            break
        parent.chmod(parent.stat().st_mode | 0o011)
    env = {
        **os.environ,
        "TUNELAB_SERVICES_DIR": str(folder / "services"),
        "TUNELAB_PG_PORT": str(free_port()),
        "TUNELAB_MLFLOW_PORT": str(free_port()),
        "TUNELAB_VENV_BIN": str(Path(sys.executable).parent),
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    subprocess.run(["bash", str(ROOT / "scripts/services.sh"), "start"], env=env, check=True)
    values = dict(
        line.removeprefix("export ").split("=", 1)
        for line in (folder / "services" / "env").read_text().splitlines()
        if line.startswith("export ")
    )
    storage, tracking = values["TUNELAB_OPTUNA_STORAGE"], values["MLFLOW_TRACKING_URI"]
    rates: dict[int, float] = {}
    try:
        for count in (int(n) for n in args.workers.split(",")):
            name = f"bench{count}"
            run_dir = folder / name
            run_dir.mkdir()
            (run_dir / "space.yaml").write_text(
                textwrap.dedent(SPACE).replace("EPOCHS", str(args.epochs))
            )
            (run_dir / f"{name}.yaml").write_text(
                textwrap.dedent(EXPERIMENT)
                .replace("NAME", name)
                .replace("TRIALS", str(args.trials))
                .replace("EPOCHS", str(args.epochs))
            )
            started = time.perf_counter()
            workers = [
                subprocess.Popen(
                    [
                        sys.executable,
                        "-c",
                        WORKER,
                        str(run_dir / f"{name}.yaml"),
                        str(FIXTURE),
                        tracking,
                    ],
                    cwd=run_dir,
                    env={**env, "TUNELAB_OPTUNA_STORAGE": storage},
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for _ in range(count)
            ]
            codes = [w.wait() for w in workers]
            seconds = time.perf_counter() - started
            study = optuna.load_study(study_name=name, storage=storage)
            complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
            rates[count] = complete / seconds * 60
            print(
                f"{count} worker(s): {complete} of {args.trials} trials complete "
                f"({len(study.trials)} in the study, exit codes {codes}) in {seconds:.1f} s: "
                f"{rates[count]:.1f} trials/min, x{rates[count] / rates[min(rates)]:.2f} vs "
                f"{min(rates)} worker",
                flush=True,
            )
    finally:
        subprocess.run(["bash", str(ROOT / "scripts/services.sh"), "stop"], env=env)
    print(f"(wall time includes each worker's TensorFlow start-up; services in {folder})")


if __name__ == "__main__":
    main()

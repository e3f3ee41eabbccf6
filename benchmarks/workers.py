"""Trials per minute with 1, 2, 4 and 8 workers on one study, on PostgreSQL directly and
through Optuna's gRPC storage proxy, on the tiny fixture, in one run.

Starts the project's services (PostgreSQL + MLflow server, `scripts/services.sh`) in a
temporary folder on free ports, and `tunelab storage-proxy` in front of the same database; then
for each storage and worker count runs a fresh study with the same budget of tiny trials
(filters 4, 2 epochs on 2,500 images) in real worker processes, and prints trials per minute,
the ratio to one worker on the same storage, the ratio of the proxy to PostgreSQL at the same
count, and the most PostgreSQL connections open meanwhile (every client: workers, locks, the
proxy, the MLflow server). On a 2-core machine, more than 2 workers only add contention; the
point is that the counts stay exact while they do (each line says how many trials the study
holds against the budget).

    python benchmarks/workers.py [--trials 16] [--epochs 2] [--workers 1,2,4,8]
                                 [--storages postgresql,proxy]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the suite's helpers: ports, the proxy, connections
from conftest import free_port, storage_proxy_process  # noqa: E402
from test_workers import peak_connections  # noqa: E402

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


@contextmanager
def storage_proxy(database: str, folder: Path) -> Iterator[str]:
    """`tunelab storage-proxy` in front of `database` (its URL in the environment, not argv),
    answering at the returned grpc:// URL until the block ends."""
    from tunelab.engines.optuna.study import connect_storage

    port = free_port()
    with (folder / "proxy.log").open("wb") as log:
        proxy = storage_proxy_process(database, port, output=log)
        try:
            connect_storage(f"grpc://127.0.0.1:{port}")  # waits until it answers
            yield f"grpc://127.0.0.1:{port}"
        finally:
            proxy.terminate()
            proxy.wait(timeout=30)


def run_workers(
    name: str, count: int, storage: str, database: str, env: dict[str, str], args: Any
) -> tuple[float, str]:
    """Trials per minute of `count` workers sharing a fresh study of `args.trials` trials on
    `storage`, and the line that says what happened (the peak of PostgreSQL connections too)."""
    import optuna

    run_dir = Path(env["TUNELAB_SERVICES_DIR"]).parent / name
    run_dir.mkdir()
    (run_dir / "space.yaml").write_text(textwrap.dedent(SPACE).replace("EPOCHS", str(args.epochs)))
    (run_dir / f"{name}.yaml").write_text(
        textwrap.dedent(EXPERIMENT)
        .replace("NAME", name)
        .replace("TRIALS", str(args.trials))
        .replace("EPOCHS", str(args.epochs))
    )
    command = [sys.executable, "-c", WORKER, str(run_dir / f"{name}.yaml"), str(FIXTURE)]
    started = time.perf_counter()
    with peak_connections(database) as peak, (run_dir / "workers.log").open("wb") as log:
        workers = [
            subprocess.Popen(
                [*command, env["MLFLOW_TRACKING_URI"]],
                cwd=run_dir,
                env={**env, "TUNELAB_OPTUNA_STORAGE": storage},
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
            for _ in range(count)
        ]
        codes = [w.wait() for w in workers]
    seconds = time.perf_counter() - started
    study = optuna.load_study(study_name=name, storage=database)
    complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    rate = complete / seconds * 60
    line = (
        f"{complete} of {args.trials} trials complete ({len(study.trials)} in the study, exit "
        f"codes {codes}) in {seconds:.1f} s: {rate:.1f} trials/min; at most {peak[0]} "
        "PostgreSQL connections"
    )
    return rate, line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", default="1,2,4,8")
    parser.add_argument("--storages", default="postgresql,proxy")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    storages = args.storages.split(",")
    unknown = set(storages) - {"postgresql", "proxy"}
    if unknown:
        parser.error(f"--storages: {', '.join(sorted(unknown))}: give postgresql and/or proxy")

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
    database = values["TUNELAB_OPTUNA_STORAGE"]
    env["MLFLOW_TRACKING_URI"] = values["MLFLOW_TRACKING_URI"]
    rates: dict[tuple[str, int], float] = {}
    try:
        for kind in storages:
            with (
                storage_proxy(database, folder)
                if kind == "proxy"
                else nullcontext(database) as storage
            ):
                for count in counts:
                    rate, line = run_workers(f"{kind}{count}", count, storage, database, env, args)
                    rates[kind, count] = rate
                    versus = f"x{rate / rates[kind, counts[0]]:.2f} vs {counts[0]} worker(s)"
                    if kind == "proxy" and ("postgresql", count) in rates:
                        versus += f", x{rate / rates['postgresql', count]:.2f} vs PostgreSQL"
                    print(f"{kind}, {count} worker(s): {line}; {versus}", flush=True)
    finally:
        subprocess.run(["bash", str(ROOT / "scripts/services.sh"), "stop"], env=env)
    print(f"(wall time includes each worker's TensorFlow start-up; services in {folder})")


if __name__ == "__main__":
    main()

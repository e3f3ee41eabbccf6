"""CPU of a tiny training with its accuracy metric made at compile time against inside the first
traced step (Keras resolving the string "accuracy" there), alternating in one process.

Usage: python benchmarks/first_step_trace.py [--repeats 6]

A metric whose variables are made inside the first traced train step makes TensorFlow trace the
whole step twice; `tunelab.training.model.accuracy_metric` makes it at compile time. On a tiny
training (8 filters, 2 epochs of 2,000 MNIST images of the test fixture, Adam) the second trace
is a large share of the CPU, which is what the test suite's trainings look like; on the hour's
trainings it is a fixed half second among minutes. The first training of the process is left out
(its one-time costs would land on one side).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tunelab.training.model as model
from tunelab.define.data import load_npz_splits
from tunelab.define.run_config import RunConfig
from tunelab.training.train import train_and_validate

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "mnist_tiny.npz"
TINY = {
    "filters": 8,
    "dense_units": 16,
    "epochs": 2,
    "batch_size": 128,
    "optimizer": "adam",
    "learning_rate": 0.002,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()
    splits = load_npz_splits(FIXTURE, validation_size=500)
    config = RunConfig.from_flat_cnn(TINY)
    at_compile = model.accuracy_metric
    variants: dict[str, Callable[[], Any]] = {
        "inside the first step": lambda: "accuracy",
        "at compile time": at_compile,
    }
    train_and_validate(config, splits, seed=0)
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for repeat in range(args.repeats):
        for name, metric in variants.items():
            model.accuracy_metric = metric
            started = time.process_time()
            train_and_validate(config, splits, seed=repeat + 1)
            seconds[name].append(time.process_time() - started)
    model.accuracy_metric = at_compile
    for name, values in seconds.items():
        spread = " ".join(f"{value:.2f}" for value in values)
        median = statistics.median(values)
        print(f"accuracy metric made {name}: median {median:.2f} CPU-s ({spread})")
    ratio = statistics.median(seconds["at compile time"]) / statistics.median(
        seconds["inside the first step"]
    )
    print(f"at compile time / inside the first step: {ratio:.2f}")


if __name__ == "__main__":
    main()

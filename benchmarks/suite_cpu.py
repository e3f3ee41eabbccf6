"""Where the test suite's CPU goes: shares of a py-spy profile of a whole run, by category.

    pip install py-spy
    py-spy record --subprocesses --format raw -r 25 -o /tmp/suite.txt -- \\
        .venv/bin/python -m pytest -n 3 --dist loadgroup
    .venv/bin/python benchmarks/suite_cpu.py /tmp/suite.txt

Every Python process the tests start is sampled. A sample counts a thread that was running or
waiting for a core, so on a saturated machine the seconds are inflated; the shares are what to
read. Each stack goes to the first category whose pattern it matches (the order matters: the
precision probe and tracing are inside Keras).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

CATEGORIES = (
    ("import tensorflow", r"<module> \((tensorflow/__init__|.*tensorflow/python/__init__)"),
    ("precision probe", r"images_per_second \(tunelab/training/precision"),
    ("Keras fresh session (gc)", r"clear_session \("),
    ("tf.function tracing", r"func_graph_from_py_func|_maybe_define_function|autograph"),
    ("TensorFlow executing", r"quick_execute|_pywrap_tfe|__next__ \(tensorflow|iterator_ops"),
    ("ONNX export", r"tf2onnx|onnx"),
    ("matplotlib", r"matplotlib/"),
    ("Keras saving", r"saving_lib|save_model|load_model|saved_model"),
    ("Keras, other", r"keras/"),
    ("TensorFlow, other", r"tensorflow/"),
    ("MLflow server", r"uvicorn|mlflow/server"),
    ("import mlflow", r"<module> \(mlflow/"),
    ("MLflow client", r"mlflow/"),
    ("Optuna", r"optuna/"),
    ("SQLAlchemy, Alembic", r"sqlalchemy|alembic"),
    ("imports, other", r"_find_and_load"),
)


def stacks(path: Path) -> Iterator[tuple[str, int]]:
    """(stack, samples) per record; a process's command line may span lines."""
    pending = ""
    with path.open() as lines:
        for line in lines:
            pending += line.rstrip("\n")
            count = re.search(r" (\d+)$", pending)
            if count:
                yield pending[: count.start()], int(count.group(1))
                pending = ""
            else:
                pending += " "


def shares(path: Path) -> Counter[str]:
    patterns = [(name, re.compile(pattern)) for name, pattern in CATEGORIES]
    samples: Counter[str] = Counter()
    for stack, count in stacks(path):
        name = next((name for name, pattern in patterns if pattern.search(stack)), "other")
        samples[name] += count
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path, help="py-spy's raw output (--format raw)")
    parser.add_argument("--rate", type=float, default=25.0, help="py-spy's samples per second")
    args = parser.parse_args()
    samples = shares(args.profile)
    total = sum(samples.values())
    for name, count in samples.most_common():
        print(f"{name:28s} {count / args.rate:8.0f} s {100 * count / total:5.1f} %")
    print(f"{'all samples':28s} {total / args.rate:8.0f} s")


if __name__ == "__main__":
    main()

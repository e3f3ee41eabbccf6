"""Make the tiny real-MNIST test fixture from the verified full dataset.

Usage: python scripts/make_fixture.py [--train 3000] [--test 1000] [--seed 0]

Writes tests/fixtures/mnist_tiny.npz (x_train, y_train, x_test, y_test in the Keras layout) and
tests/fixtures/mnist_tiny.json (how it was made and the SHA-256 of each array, which conftest
checks). Training images come only from the official training set, test images only from the
official test set, so the fixture keeps the train/test separation of the real data.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from tunelab.define.data import array_digest, fetch_dataset

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    fetched = fetch_dataset("mnist")
    rng = np.random.default_rng(args.seed)
    full = fetched.arrays
    train = np.sort(rng.choice(len(full.y_train), args.train, replace=False))
    test = np.sort(rng.choice(len(full.y_test), args.test, replace=False))
    arrays = {
        "x_train": full.x_train[train],
        "y_train": full.y_train[train],
        "x_test": full.x_test[test],
        "y_test": full.y_test[test],
    }
    FIXTURES.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(FIXTURES / "mnist_tiny.npz", **arrays)
    manifest = {
        "made_by": "python scripts/make_fixture.py "
        f"--train {args.train} --test {args.test} --seed {args.seed}",
        "source": fetched.source,
        "source_digest": fetched.digest,
        "train_indices_of_official_train": "numpy default_rng(seed).choice, sorted",
        "sha256": {name: array_digest(a) for name, a in arrays.items()},
    }
    (FIXTURES / "mnist_tiny.json").write_text(json.dumps(manifest, indent=2) + "\n")
    size = (FIXTURES / "mnist_tiny.npz").stat().st_size
    print(f"wrote {FIXTURES / 'mnist_tiny.npz'} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()

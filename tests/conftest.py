"""Shared fixtures: the tiny real-MNIST subset, a temporary MLflow store, an isolated cache.

Everything that trains uses `tiny_splits` (3,000 official training images, 1,000 official test
images; see scripts/make_fixture.py); everything that writes goes under tmp_path.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tunelab.data import Splits, array_digest, load_npz_splits, read_npz

FIXTURES = Path(__file__).parent / "fixtures"
TINY_NPZ = FIXTURES / "mnist_tiny.npz"
TINY_VALIDATION = 500


@pytest.fixture(autouse=True)
def _isolated_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the user's cache or tracking store, or writes outside tmp_path."""
    monkeypatch.setenv("TUNELAB_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def tiny_npz() -> Path:
    """The fixture file, checked against the digests recorded when it was made."""
    manifest = json.loads((FIXTURES / "mnist_tiny.json").read_text())
    arrays = read_npz(TINY_NPZ).by_name()
    for name, digest in manifest["sha256"].items():
        assert array_digest(arrays[name]) == digest, f"fixture array {name} changed"
    return TINY_NPZ


@pytest.fixture(scope="session")
def tiny_splits(tiny_npz: Path) -> Splits:
    """2,500 training, 500 validation and 1,000 test images of real MNIST."""
    return load_npz_splits(tiny_npz, validation_size=TINY_VALIDATION)


@pytest.fixture()
def tracking_uri(tmp_path: Path) -> Iterator[str]:
    """A fresh SQLite MLflow store under tmp_path."""
    yield f"sqlite:///{tmp_path / 'tracking' / 'mlflow.db'}"


@pytest.fixture(scope="session")
def rng() -> np.random.Generator:
    return np.random.default_rng(0)

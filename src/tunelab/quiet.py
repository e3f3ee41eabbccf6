"""A quiet, honest terminal: TensorFlow's start-up lines kept out, real errors let through.

TensorFlow 2.21 prints its C++ start-up notices (oneDNN, "Could not find cuda drivers", a failed
cuInit on a machine without a GPU, absl's "All log messages before absl::InitializeLog()") before
any logging setting is read, so no environment variable silences them. TensorFlow is therefore
imported with the process's stderr captured at the file-descriptor level: the lines known to be
start-up noise are dropped and every other line is written back. `--verbose` (or
TUNELAB_VERBOSE=1) shows everything.

The command line does not import TensorFlow up front: it installs `quiet_tensorflow_import`, so
that whichever module first imports `keras` or `tensorflow` loads it this way, when it is first
needed. A command refused in one line (a bad option, a missing dataset) or one that never trains
(`tune --workers N` starts the processes that do) answers without the 5 s that loading
TensorFlow costs.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

VERBOSE_ENV = "TUNELAB_VERBOSE"
NOISE = re.compile(
    r"All log messages before absl::InitializeLog|oneDNN custom operations are on"
    r"|Could not find cuda drivers|failed call to cuInit|cuda_platform\.cc|cudart_stub\.cc"
    r"|cpu_feature_guard\.cc|computation_placer|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|TF-TRT Warning|This TensorFlow binary is optimized to use available CPU instructions"
    r"|rebuild TensorFlow with the appropriate compiler flags|absl::InitializeLog"
)
TENSORFLOW_MODULES = ("tensorflow", "keras")  # whichever is imported first loads TensorFlow
# read by MLflow and TensorFlow as they load, so set (unless the user set them) before they do;
# MLflow's own INFO lines ("Creating initial MLflow database tables...") are not the user's
LOAD_TIME_DEFAULTS = {"MLFLOW_LOGGING_LEVEL": "WARNING", "TF_CPP_MIN_LOG_LEVEL": "2"}


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"


def quiet_environment(*, verbose: bool = False) -> None:
    """Environment settings read by the libraries when they load (set before they import)."""
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
        return
    for name, value in LOAD_TIME_DEFAULTS.items():
        os.environ.setdefault(name, value)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # with a tracking server MLflow prints "View run ... at" on stdout, where tables go
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # a tracking server that stops answering mid-sweep (restarted, say): MLflow's own retries,
    # with exponential backoff, ride it out (4 did not cover a ~15 s restart; 7 do); one that is
    # down at start is refused in seconds by the tracker's own probe (record/store.py)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


@contextmanager
def filtered_stderr() -> Iterator[None]:
    """Run the block with fd 2 captured; then write back every line that is not start-up noise."""
    if verbose():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [
                line
                for line in capture.read().decode(errors="replace").splitlines()
                if line.strip() and not NOISE.search(line)
            ]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")


def import_tensorflow() -> None:
    """Import TensorFlow and Keras now, quietly (idempotent)."""
    quiet_tensorflow_import()
    import keras  # noqa: F401


def quiet_tensorflow_import() -> None:
    """Have the first import of TensorFlow or Keras, wherever it happens, load quietly and touch
    the devices once (idempotent; nothing to do once TensorFlow is loaded)."""
    if any(name in sys.modules for name in TENSORFLOW_MODULES):
        return
    if not any(isinstance(finder, _QuietTensorFlowFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowFinder())


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    """Finds the first of `TENSORFLOW_MODULES` to be imported the usual way, then removes itself
    and has the module's own loader run it with stderr filtered."""

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name not in TENSORFLOW_MODULES:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    """A module's own loader, executing it with stderr filtered (everything it imports in turn,
    TensorFlow's C++ libraries included, loads inside), then touching the devices once."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def __getattr__(self, name: str) -> Any:  # resource readers and the like: the real loader's
        return getattr(self._loader, name)

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        with filtered_stderr():
            self._loader.exec_module(module)
            import tensorflow as tf

            tf.config.list_physical_devices()  # a GPU's start-up lines come at its first use
        if not verbose():  # tf.function retracing notes and friends: tunelab's, not the user's
            tf.get_logger().setLevel(logging.ERROR)

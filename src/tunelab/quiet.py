"""A quiet, honest terminal: TensorFlow's start-up lines kept out, real errors let through.

TensorFlow 2.21 prints its C++ start-up notices (oneDNN, "Could not find cuda drivers", a failed
cuInit on a machine without a GPU, absl's "All log messages before absl::InitializeLog()") before
any logging setting is read, so no environment variable silences them. The entry points (`tunelab`,
`python -m tunelab`, `tunelab.api`) therefore import TensorFlow with the process's stderr captured
at the file-descriptor level, drop the lines known to be start-up noise and write every other
line back. `--verbose` (or TUNELAB_VERBOSE=1) shows everything.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

VERBOSE_ENV = "TUNELAB_VERBOSE"
NOISE = re.compile(
    r"All log messages before absl::InitializeLog|oneDNN custom operations are on"
    r"|Could not find cuda drivers|failed call to cuInit|cuda_platform\.cc|cudart_stub\.cc"
    r"|cpu_feature_guard\.cc|computation_placer|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|TF-TRT Warning|This TensorFlow binary is optimized to use available CPU instructions"
    r"|rebuild TensorFlow with the appropriate compiler flags|absl::InitializeLog"
)
_STATE = {"imported": False}


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"


def quiet_environment(*, verbose: bool = False) -> None:
    """Environment settings read by the libraries when they load (set before they import)."""
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
        return
    # MLflow's own INFO lines ("Creating initial MLflow database tables...") are not the user's
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
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
    """Import TensorFlow and Keras and touch the devices once, quietly (idempotent)."""
    if _STATE["imported"]:
        return
    with filtered_stderr():
        import keras  # noqa: F401
        import tensorflow as tf

        tf.config.list_physical_devices()
    if not verbose():  # tf.function retracing notes and friends: tunelab's business, not the user's
        tf.get_logger().setLevel(logging.ERROR)
    _STATE["imported"] = True

"""tunelab: hyperparameter tuning of Keras CNNs, recorded in MLflow, judged against the baseline.

Importing the package loads nothing heavy; `tunelab.api` is the Python interface and
`tunelab.cli` the command line.
"""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("tunelab")
except metadata.PackageNotFoundError:  # pragma: no cover (running from a source tree)
    __version__ = "0+unknown"

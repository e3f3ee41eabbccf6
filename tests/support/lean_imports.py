"""Keras's optional scikit-learn wrappers and image gallery stay unloaded in the suite's processes.

`import keras` loads scikit-learn for `keras.wrappers` and matplotlib.pyplot for
`keras.visualization` whenever they are installed (MLflow brings both), and falls back quietly when
they are not. No tunelab path uses either, and together they cost about 0.9 s of CPU in each of the
Python processes the suite starts (importing the Optuna engine: 4.90 instead of 5.85 CPU-s, means
of five alternations, on 2 cores of an AMD EPYC Zen 4 with AVX-512 BF16). Only imports made by
keras's own modules are refused: tunelab, MLflow or a test that imports scikit-learn or pyplot
itself gets them as usual.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType

SKIPPED = frozenset({"sklearn", "matplotlib.pyplot"})


def _importer() -> str:
    """The module whose `import` statement is being served (the first frame outside importlib)."""
    frame = sys._getframe(2)
    while frame is not None:
        name = str(frame.f_globals.get("__name__", ""))
        if not name.startswith(("importlib", "_frozen_importlib")) and name != __name__:
            return name
        frame = frame.f_back  # type: ignore[assignment]
    return ""


class _KerasOptionals(importlib.abc.MetaPathFinder):
    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name in SKIPPED and _importer().startswith("keras."):
            raise ImportError(f"{name} is not loaded for keras in the test suite")
        return None


def install() -> None:
    """Refuse keras's optional imports in this process (once)."""
    if not any(isinstance(finder, _KerasOptionals) for finder in sys.meta_path):
        sys.meta_path.insert(0, _KerasOptionals())

"""Patch a module of a library right after it is first imported, in any process of the suite."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Callable, Sequence
from types import ModuleType


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Runs `patch` on the module `name` once its own code has run."""

    def __init__(self, name: str, patch: Callable[[ModuleType], None]) -> None:
        self.name, self.patch = name, patch

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name != self.name:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        loader, patch = spec.loader, self.patch
        execute = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            execute(module)
            patch(module)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def patch_on_import(name: str, patch: Callable[[ModuleType], None]) -> None:
    """Patch the module `name` now if it is loaded, else as soon as it is (once per process)."""
    if name in sys.modules:
        patch(sys.modules[name])
    elif not any(
        isinstance(finder, _PatchOnImport) and finder.name == name for finder in sys.meta_path
    ):
        sys.meta_path.insert(0, _PatchOnImport(name, patch))

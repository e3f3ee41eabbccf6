"""MLflow's schema migrations once per test session, not once per SQLite store.

A fresh SQLite tracking store runs all of MLflow's alembic migrations (about 2 s of CPU); the suite
creates a few hundred stores, in-process and in the `tunelab` processes the tests start. The first
store is migrated for real and kept as a template; every later empty SQLite store gets a copy of
that migrated schema (SQLite's backup API), which is what the migrations would have written.
Only SQLite stores are copied: PostgreSQL stores (the services tests) migrate as MLflow does.

`install()` patches MLflow in this process; subprocesses get it through `sitecustomize.py` in this
folder, which the suite puts first on PYTHONPATH, with the template's path in
TUNELAB_TEST_MLFLOW_TEMPLATE.
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from pathlib import Path
from types import ModuleType
from typing import Any

from on_import import patch_on_import

VARIABLE = "TUNELAB_TEST_MLFLOW_TEMPLATE"
MODULE = "mlflow.store.db.utils"


def _patch(utils: ModuleType) -> None:
    migrate = utils._initialize_tables
    if getattr(migrate, "from_template", False):
        return

    def initialize_tables(engine: Any) -> None:
        template = Path(os.environ.get(VARIABLE, ""))
        database = engine.url.database if engine.dialect.name == "sqlite" else None
        if not database or not template.name:
            migrate(engine)
            return
        if not template.is_file():  # the first store of the session: migrate it for real
            migrate(engine)
            _copy(Path(database), template)
            return
        engine.dispose()  # no pooled connection holds the empty file while it is written
        _copy(template, Path(database))

    initialize_tables.from_template = True  # type: ignore[attr-defined]
    utils._initialize_tables = initialize_tables


def _copy(source: Path, target: Path) -> None:
    """Write the SQLite database `source` into `target` (the template: whole or not at all)."""
    written = target if target.is_file() else target.with_name(f"{target.name}.{os.getpid()}")
    with closing(sqlite3.connect(source)) as reader, closing(sqlite3.connect(written)) as writer:
        reader.backup(writer)
    if written != target:
        written.replace(target)


def install() -> None:
    """Copy the template into new SQLite stores of this process (now or once MLflow loads)."""
    patch_on_import(MODULE, _patch)

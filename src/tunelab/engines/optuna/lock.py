"""A lock shared by every worker of one study, wherever the workers run.

Two decisions must be made by one worker at a time: whether the trial budget still has room
for another trial (and creating it), and whether the sweep's MLflow parent run exists (and
creating it). On PostgreSQL the lock is a session-level advisory lock keyed by the study name,
so workers on several machines exclude each other through the database they share. Through
Optuna's gRPC storage proxy (`grpc://host:port`, many machines) it is a lock study only one
worker can create (`proxy.StudyMutex`). On SQLite (one machine) it is an exclusive `flock` on a
file beside the database.
"""

from __future__ import annotations

import fcntl
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tunelab.define.urls import is_proxy_url


def _advisory_key(study: str) -> int:
    """A signed 64-bit key from the study name (PostgreSQL's advisory-lock key type)."""
    digest = hashlib.sha256(f"tunelab:{study}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class StudyLock:
    """`with lock():` runs the block while no other worker of the study is inside one."""

    def __init__(self, storage_url: str, study: str) -> None:
        self.storage_url, self.study = storage_url, study
        self._engine: Any = None
        self._mutex: Any = None
        self._path: Path | None = None
        if is_proxy_url(storage_url):
            from tunelab.engines.optuna.proxy import StudyMutex
            from tunelab.engines.optuna.study import connect_storage

            self._mutex = StudyMutex(connect_storage(storage_url), study)
        elif storage_url.startswith("postgresql"):
            import sqlalchemy
            from sqlalchemy.pool import NullPool

            self._engine = sqlalchemy.create_engine(
                storage_url, poolclass=NullPool, pool_pre_ping=True
            )
        elif storage_url.startswith("sqlite:///"):
            self._path = Path(storage_url.removeprefix("sqlite:///") + f".{study}.lock")
        else:  # another database: exclusive on this machine only
            self._path = Path("tracking") / f".{study}.lock"

    @contextmanager
    def __call__(self) -> Iterator[None]:
        if self._mutex is not None:
            with self._mutex.held():
                yield
        elif self._engine is not None:
            with self._postgres():
                yield
        else:
            with self._file():
                yield

    @contextmanager
    def _postgres(self) -> Iterator[None]:
        import sqlalchemy

        key = _advisory_key(self.study)
        with self._engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})

    @contextmanager
    def _file(self) -> Iterator[None]:
        assert self._path is not None
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

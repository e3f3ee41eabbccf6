"""An Optuna RDB storage that rides out a database restart instead of failing the trial.

Optuna's RDBStorage turns every SQLAlchemy error inside a session into `StorageInternalError`
and gives up at once. SQLAlchemy's `pool_pre_ping` replaces a connection the server dropped, but
only when one is checked out: a trial that reports its epoch, stores a user attribute or is told
its value while PostgreSQL restarts fails with "An exception is raised during the commit" (seen
in `tests/test_hosts.py` under load). Here every storage call whose error is a lost or refused
connection (`OperationalError`, `InterfaceError`, `DisconnectionError`) is tried again with
exponential backoff (tenacity: 1, 2, 4, 8, 16 s, about half a minute in all), then the error goes
on as before. Errors about the data itself are never retried.

A failed commit rolls its transaction back, so trying it again is safe; the one exception is a
connection lost after the server committed and before it answered, which no client can tell
apart (the retry then meets Optuna's own "already finished" check, or records the value again).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import optuna
import sqlalchemy.exc
import tenacity

WRITE_ATTEMPTS = 6  # a storage call: tried, then again 1, 2, 4, 8 and 16 s apart
FIRST_WAIT_SECONDS = 1.0
CONNECTION_ERRORS = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.DisconnectionError,
)


def lost_connection(error: BaseException) -> bool:
    """Whether `error` is a database connection lost or refused (as Optuna raises it, or raw)."""
    if isinstance(error, optuna.exceptions.StorageInternalError):
        error = error.__cause__ or error
    return isinstance(error, CONNECTION_ERRORS)


_inside = threading.local()  # set while this thread runs a retried call


def _retried(name: str) -> Callable[..., Any]:
    """RDBStorage's method `name`, tried again while the connection is lost.

    Only the outermost call retries: RDBStorage's methods call one another (`get_best_trial`
    calls `get_trial`), and nested retries would multiply the waits.
    """

    def again(self: RetryingRDBStorage, *args: Any, **kwargs: Any) -> Any:
        call = getattr(super(RetryingRDBStorage, self), name)
        if getattr(_inside, "active", False):
            return call(*args, **kwargs)
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(lost_connection),
            stop=tenacity.stop_after_attempt(WRITE_ATTEMPTS),
            wait=tenacity.wait_exponential(multiplier=FIRST_WAIT_SECONDS),
            reraise=True,
        )
        _inside.active = True
        try:
            return retrying(call, *args, **kwargs)
        finally:
            _inside.active = False

    again.__name__ = name
    again.__doc__ = getattr(optuna.storages.RDBStorage, name).__doc__
    return again


class RetryingRDBStorage(optuna.storages.RDBStorage):
    """RDBStorage whose every public call rides out a lost database connection (see above).

    A subclass, not a wrapper, so that Optuna still caches it and sees its heartbeat.
    """


for _name in dir(optuna.storages.RDBStorage):
    if not _name.startswith("_") and callable(getattr(optuna.storages.RDBStorage, _name)):
        setattr(RetryingRDBStorage, _name, _retried(_name))

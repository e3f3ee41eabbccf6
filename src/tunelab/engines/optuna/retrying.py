"""Optuna storages that ride out a database (or proxy) restart instead of failing the trial.

Optuna's RDBStorage turns every SQLAlchemy error inside a session into `StorageInternalError`
and gives up at once. SQLAlchemy's `pool_pre_ping` replaces a connection the server dropped, but
only when one is checked out: a trial that reports its epoch, stores a user attribute or is told
its value while PostgreSQL restarts fails with "An exception is raised during the commit" (seen
in `tests/test_hosts.py` under load). Here every storage call whose error is a lost or refused
connection (`OperationalError`, `InterfaceError`, `DisconnectionError`) is tried again with
exponential backoff (tenacity: 1, 2, 4, 8, 16 s, about half a minute in all), then the error goes
on as before. Errors about the data itself are never retried. The same holds through Optuna's
gRPC storage proxy, whose client raises gRPC's UNAVAILABLE while the proxy is down or restarting
(`tunelab.engines.optuna.proxy`).

A failed commit rolls its transaction back, so trying it again is safe; the one exception is a
connection lost after the server committed and before it answered, which no client can tell
apart (the retry then meets Optuna's own "already finished" check, or records the value again).
"""

from __future__ import annotations

import sys
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
    """Whether `error` is a database connection lost or refused (as Optuna raises it, or raw),
    or a gRPC storage proxy that did not answer."""
    if isinstance(error, optuna.exceptions.StorageInternalError):
        error = error.__cause__ or error
    return isinstance(error, CONNECTION_ERRORS) or _proxy_unreachable(error)


def _proxy_unreachable(error: BaseException) -> bool:
    grpc = sys.modules.get("grpc")  # not loaded: no gRPC call was made, nor failed
    if grpc is None or not isinstance(error, grpc.RpcError):
        return False
    code = getattr(error, "code", None)
    return callable(code) and code() == grpc.StatusCode.UNAVAILABLE


_inside = threading.local()  # set while this thread runs a retried call


def _retried(base: type, name: str) -> Callable[..., Any]:
    """`base`'s storage method `name`, tried again while the connection is lost.

    Only the outermost call retries: a storage's methods call one another (`get_best_trial`
    calls `get_trial`), and nested retries would multiply the waits.
    """

    def again(self: Any, *args: Any, **kwargs: Any) -> Any:
        method = getattr(base, name)  # looked up at each call, as `super()` would
        if getattr(_inside, "active", False):
            return method(self, *args, **kwargs)
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(lost_connection),
            stop=tenacity.stop_after_attempt(WRITE_ATTEMPTS),
            wait=tenacity.wait_exponential(multiplier=FIRST_WAIT_SECONDS),
            reraise=True,
        )
        _inside.active = True
        try:
            return retrying(method, self, *args, **kwargs)
        finally:
            _inside.active = False

    again.__name__ = name
    again.__doc__ = getattr(base, name).__doc__
    return again


def retry_every_call(storage_class: type, base: type) -> None:
    """Make every public method `storage_class` inherits from `base` ride out a lost
    connection (a subclass, not a wrapper: Optuna still caches it and sees its heartbeat)."""
    for name in dir(base):
        if not name.startswith("_") and callable(getattr(base, name)):
            setattr(storage_class, name, _retried(base, name))


class RetryingRDBStorage(optuna.storages.RDBStorage):
    """RDBStorage whose every public call rides out a lost database connection (see above)."""


retry_every_call(RetryingRDBStorage, optuna.storages.RDBStorage)

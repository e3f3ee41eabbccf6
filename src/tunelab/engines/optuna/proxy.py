"""Optuna's gRPC storage proxy as a study storage tunelab keeps its promises on.

Optuna recommends its gRPC storage proxy (`optuna.storages.run_grpc_proxy_server`) when many
workers share one database: each worker holds one gRPC channel instead of database connections,
and the proxy caches. Its client (`GrpcStorageProxy`) has neither of the two things tunelab's
exact trial budget across hosts stands on, so they are built here on the storage's own
operations, which the proxy forwards to the database atomically:

- **Heartbeats** (`HeartbeatProxy`): a running trial's worker writes a trial system attribute
  every interval; a trial is stale when this process has *seen* that attribute unchanged for
  the grace period (`time.monotonic` between two of its own reads). No two hosts' clocks are
  ever compared. Optuna's `fail_stale_trials` and tunelab's retry callback then treat a worker
  that died behind the proxy as on PostgreSQL: its trial is failed and queued again.
- **A lock per study** (`StudyMutex`): creating a study whose name is taken fails, atomically,
  on every Optuna storage. Holding the lock is holding the study `tunelab-lock:<study>`; its
  holder beats in the lock study's system attributes, and a holder seen silent for the lease
  (a worker that died or lost the network inside the lock) is broken by deleting its lock
  study, by id, so a newer holder's is never touched.

Every public call rides out a proxy that is down or restarting (`retrying.retry_every_call`).
`serve` runs the proxy for a database URL; `tunelab storage-proxy` reads it from the
environment, never from argv.
"""

from __future__ import annotations

import random
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import optuna
from optuna.exceptions import DuplicatedStudyError
from optuna.storages import BaseStorage, GrpcStorageProxy
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial
from optuna.trial import TrialState as OptunaState

from tunelab.define.urls import proxy_address
from tunelab.engines.optuna.retrying import RetryingRDBStorage, retry_every_call

BEAT = "tunelab:beat"  # a trial's (or a lock study's) last heartbeat, as its writer's clock read
LOCK_PREFIX = "tunelab-lock:"
LOCK_BEAT_SECONDS = 2.0
LOCK_LEASE_SECONDS = 30.0  # a lock holder seen silent this long is gone (its work takes < 1 s)
READY_SECONDS = 20.0  # how long a worker waits for the proxy to answer before giving up


class HeartbeatProxy(GrpcStorageProxy, BaseHeartbeat):
    """Optuna's gRPC proxy client with heartbeats judged by what this process has seen."""

    def __init__(
        self,
        url: str,
        *,
        heartbeat_interval: int,
        grace_period: int,
        stale_trial_callback: Callable[[optuna.Study, FrozenTrial], None] | None,
    ) -> None:
        host, port = proxy_address(url)
        with warnings.catch_warnings():  # "experimental": not the user's concern, every launch
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            super().__init__(host=host, port=port)
        self.url = url
        self._interval, self._grace = heartbeat_interval, grace_period
        self._callback = stale_trial_callback
        self._seen: dict[int, dict[int, tuple[Any, float]]] = {}  # study -> trial -> (beat, since)

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, BEAT, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """Running trials whose beat this process has seen unchanged for the grace period."""
        now = time.monotonic()
        before = self._seen.get(study_id, {})
        seen: dict[int, tuple[Any, float]] = {}
        stale = []
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(OptunaState.RUNNING,)):
            beat = trial.system_attrs.get(BEAT)
            last = before.get(trial._trial_id)
            seen[trial._trial_id] = last if last is not None and last[0] == beat else (beat, now)
            if now - seen[trial._trial_id][1] >= self._grace:
                stale.append(trial._trial_id)
        self._seen[study_id] = seen
        return stale

    def get_heartbeat_interval(self) -> int:
        return self._interval

    def get_heartbeat_stale_trial_callback(
        self,
    ) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self._callback

    def __getstate__(self) -> dict[Any, Any]:
        return {k: v for k, v in super().__getstate__().items() if k != "_seen"}

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__({**state, "_seen": {}})


retry_every_call(HeartbeatProxy, GrpcStorageProxy)


def connect_proxy(
    url: str,
    *,
    heartbeat_interval: int,
    grace_period: int,
    stale_trial_callback: Callable[[optuna.Study, FrozenTrial], None] | None,
) -> HeartbeatProxy:
    """A client of the proxy at `url`, once it answers; ConnectionError after READY_SECONDS."""
    proxy = HeartbeatProxy(
        url,
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
        stale_trial_callback=stale_trial_callback,
    )
    proxy.wait_server_ready(timeout=READY_SECONDS)
    return proxy


class StudyMutex:
    """`with mutex.held():` runs the block while no other process holds the same study's lock
    on `storage` (any Optuna storage; used through the gRPC proxy). See the module doc."""

    def __init__(self, storage: BaseStorage, study: str) -> None:
        self.storage, self.name = storage, LOCK_PREFIX + study

    @contextmanager
    def held(self) -> Iterator[None]:
        lock_id = self._acquire()
        stop = threading.Event()
        beating = threading.Thread(target=self._beat, args=(lock_id, stop), daemon=True)
        beating.start()
        try:
            yield
        finally:
            stop.set()
            beating.join()
            with suppress(KeyError):  # broken by another worker: it judged this one gone
                self.storage.delete_study(lock_id)

    def _acquire(self) -> int:
        seen: tuple[int, Any] | None = None
        since, wait = 0.0, 0.01
        while True:
            try:
                lock_id: int = self.storage.create_new_study([StudyDirection.MINIMIZE], self.name)
            except DuplicatedStudyError:
                pass
            else:
                self.storage.set_study_system_attr(lock_id, BEAT, time.time())
                return lock_id
            try:
                holder = self.storage.get_study_id_from_name(self.name)
                beat = self.storage.get_study_system_attrs(holder).get(BEAT)
            except KeyError:
                continue  # released meanwhile: try again at once
            now = time.monotonic()
            if seen != (holder, beat):
                seen, since = (holder, beat), now
            elif now - since >= LOCK_LEASE_SECONDS:
                with suppress(KeyError):
                    self.storage.delete_study(holder)  # its holder is gone
                seen = None
                continue
            time.sleep(wait * (1 + random.random()))
            wait = min(0.5, 2 * wait)

    def _beat(self, lock_id: int, stop: threading.Event) -> None:
        while not stop.wait(LOCK_BEAT_SECONDS):
            with suppress(Exception):  # a failed beat: the next one is the retry
                self.storage.set_study_system_attr(lock_id, BEAT, time.time())


def serve(storage_url: str, host: str, port: int) -> Any:
    """Start Optuna's gRPC proxy on `host:port` for the database at `storage_url` (every call
    riding out a database restart, cached as Optuna recommends); returns the running server."""
    from optuna.storages._grpc.server import make_server

    backend = optuna.storages.get_storage(
        RetryingRDBStorage(
            storage_url,
            engine_kwargs=None if storage_url.startswith("sqlite") else {"pool_pre_ping": True},
        )
    )
    server = make_server(backend, host, port)
    server.start()
    return server

"""The one place that talks to MLflow: stores, experiments, runs, artifacts. Imports no TensorFlow.

Runs are opened with `Tracker.run(...)`, a context manager that always closes the run: FINISHED
when the block completes, FAILED on an exception, KILLED on Ctrl-C, so no run stays RUNNING.
Everything is logged explicitly (no autolog), with step = epoch (1-based) for per-epoch metrics.
Searches go through `Query` (values quoted, all pages read); a store that cannot be reached, or
refuses, is one line naming the store with its password masked, never "not found".
"""

from __future__ import annotations

import csv
import io
import os
import platform
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

import mlflow
import numpy as np
import numpy.typing as npt
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException

from tunelab.define.data import Splits
from tunelab.define.run_config import RunConfig
from tunelab.define.urls import check_tracking_uri
from tunelab.errors import UserError
from tunelab.record.figures import confusion_counts, confusion_matrix, learning_curves
from tunelab.record.names import (
    DEFAULT_TRACKING_URI,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    PARAM_VALUE_LIMIT,
    PARENT_RUN_TAG,
    TRACKING_URI_ENV,
    Artifact,
    MetricName,
    Role,
    TagKey,
    config_params,
)
from tunelab.record.query import Query
from tunelab.record.results import EpochSink, TrialResult
from tunelab.redact import database_error_line, redact_text, redact_url

PAGE = 1000  # runs per search request (MLflow's maximum); every page is read
MLFLOW_DIGEST_LENGTH = 32  # MLflow's dataset digest field holds 36 characters
REACH_SECONDS = 5.0  # a tracking server that does not answer its health check in this is down
STORE_ERRORS = (MlflowException, OSError)  # storing an artifact fails so (requests: OSError)

VERSIONED_PACKAGES = (
    "tunelab",
    "tensorflow",
    "keras",
    "numpy",
    "mlflow",
    "optuna",
    "keras-tuner",
    "pandas",
)


class TrackingError(UserError):
    """The tracking store cannot be reached or refused a request (one line, password masked)."""


def resolve_tracking_uri(explicit: str | None = None) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else the embedded SQLite store."""
    return explicit or os.environ.get(TRACKING_URI_ENV) or DEFAULT_TRACKING_URI


def local_store_dir(tracking_uri: str) -> Path | None:
    """The folder of a SQLite or file store (artifacts go beside it); None for a server."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme == "sqlite":
        # sqlite:///relative/path.db has path "/relative/path.db"; four slashes mean absolute
        path = tracking_uri.removeprefix("sqlite:///")
        return Path(path).parent
    if parsed.scheme in ("", "file"):
        return Path(parsed.path or tracking_uri)
    return None


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def git_state(cwd: Path | None = None) -> tuple[str, bool | None]:
    """(commit, dirty) of the checkout the command runs in; ("unknown", None) outside git."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        return git("rev-parse", "HEAD"), bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return "unknown", None


def provenance_tags() -> dict[str, str]:
    commit, dirty = git_state()
    tags = {TagKey.GIT_COMMIT: commit, TagKey.GIT_DIRTY: str(dirty).lower()}
    tags.update({TagKey.VERSION_PREFIX + k: v for k, v in package_versions().items()})
    return tags


@dataclass
class RunHandle:
    """One open MLflow run; every method logs to it by id (safe beside other open runs)."""

    client: MlflowClient
    run_id: str
    status_on_exit: str = "FINISHED"  # the block may set FAILED (or KILLED) for what it handled
    keep_open: bool = False  # leave RUNNING on a clean exit (other workers still use the run)

    def log_params(self, params: Mapping[str, object]) -> None:
        items = [Param(k, str(v)[:PARAM_VALUE_LIMIT]) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[start : start + 100], synchronous=True)

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if np.isfinite(v)]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch, synchronous=True)

    def set_tags(self, tags: Mapping[str, object]) -> None:
        batch = [RunTag(k, str(v)[:PARAM_VALUE_LIMIT]) for k, v in tags.items()]
        self.client.log_batch(self.run_id, tags=batch, synchronous=True)

    def epoch_sink(self) -> EpochSink:
        """A function for EpochSinkCallback: logs each epoch's metrics with step = epoch."""
        return lambda epoch, logs: self.log_metrics(logs, step=epoch)

    def log_config(self, config: RunConfig) -> None:
        """The config once as `config.json` (read back exactly) and as `cfg.*` params (the UI):
        the factory and its source digest, its parameters, the training, the data's shape."""
        self.log_text(config.model_dump_json(indent=1), Artifact.CONFIG)
        self.log_params(config_params(config.flat()))
        self.set_tags(
            {TagKey.FACTORY: config.factory, TagKey.FACTORY_SHA256: config.factory_sha256}
        )

    def log_dataset(self, splits: Splits, context: str = "training") -> None:
        """Record the data as an MLflow input, named and digested, plus tags for filtering."""
        dataset = mlflow.data.from_numpy(  # type: ignore[attr-defined]
            splits.train.x[:1],
            targets=splits.train.y[:1],
            name=splits.dataset,
            digest=splits.digest[:MLFLOW_DIGEST_LENGTH],  # the full SHA-256 is in the tags
        )
        entity = mlflow.entities.DatasetInput(
            dataset._to_mlflow_entity(),
            tags=[mlflow.entities.InputTag("mlflow.data.context", context)],
        )
        self.client.log_inputs(self.run_id, datasets=[entity])
        self.set_tags(
            {
                TagKey.DATASET: splits.dataset,
                TagKey.DATASET_DIGEST: splits.digest,
                TagKey.DATA_SOURCE: splits.source,
                TagKey.DATASET_SOURCE: splits.origin,
            }
        )

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_folder(self, folder: Path, artifact_dir: str) -> None:
        self.client.log_artifacts(self.run_id, str(folder), artifact_dir)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, figure, artifact_file, save_kwargs={"dpi": 110})

    def log_array(self, array: npt.NDArray[Any], artifact_file: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(artifact_file).name
            np.save(path, array)
            self.client.log_artifact(
                self.run_id, str(path), str(Path(artifact_file).parent) or None
            )

    def log_training(
        self, result: TrialResult, *, title: str, reference: float | None = None
    ) -> None:
        """Summary metrics, history CSV and learning curves of one training."""
        summary = {
            MetricName.EPOCHS_TRAINED: result.epochs_trained,
            MetricName.PARAM_COUNT: result.param_count,
            MetricName.WALL_SECONDS: result.wall_seconds,
        }
        if result.best_val_accuracy is not None and result.best_epoch is not None:
            summary[MetricName.BEST_VAL_ACCURACY] = result.best_val_accuracy
            summary[MetricName.BEST_EPOCH] = result.best_epoch
        if result.images_per_second is not None:
            summary[MetricName.IMAGES_PER_SECOND] = result.images_per_second
        self.log_metrics(summary)
        self.set_tags({TagKey.STATUS: result.status, TagKey.SEED: result.seed})
        if result.failure_reason:
            self.set_tags({TagKey.FAILURE_REASON: result.failure_reason})
        if result.history:
            self.log_text(history_csv(result.history), Artifact.HISTORY)
            figure = learning_curves(result.history, title=title, reference_accuracy=reference)
            self.log_figure(figure, Artifact.LEARNING_CURVES)

    def log_confusion(
        self,
        labels: npt.NDArray[Any],
        predictions: npt.NDArray[Any],
        class_names: tuple[str, ...],
        *,
        title: str,
        artifact_file: str = "confusion_matrix.png",
    ) -> None:
        matrix = confusion_counts(labels, predictions, len(class_names))
        self.log_figure(confusion_matrix(matrix, class_names, title=title), artifact_file)

    def log_keras_model(self, model: Any, example: npt.NDArray[Any]) -> None:
        """The model in MLflow's Keras flavor, with a signature and an input example.

        Saved locally, then logged as the run's `model` artifact (`runs:/<id>/model` loads,
        registers and serves it). Not through `mlflow.keras.log_model`: in MLflow 3.17 it writes
        the input example before creating the model folder and fails. pip requirements are
        given explicitly: inferring them reloads the model in a subprocess, slower than a trial.
        """
        import mlflow.keras
        from mlflow.models import infer_signature

        signature = infer_signature(example, model.predict(example, verbose=0))
        versions = package_versions()
        requirements = [f"{p}=={versions[p]}" for p in ("tensorflow", "keras", "numpy")]
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / Artifact.MODEL
            folder.mkdir()
            mlflow.keras.save_model(
                model,
                str(folder),
                signature=signature,
                input_example=example,
                pip_requirements=requirements,
            )
            self.client.log_artifacts(self.run_id, str(folder), Artifact.MODEL)


def history_csv(history: Mapping[str, list[float]]) -> str:
    """Per-epoch history as CSV: one row per epoch, one column per metric."""
    keys = sorted(history)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["epoch", *keys])
    for index in range(max((len(v) for v in history.values()), default=0)):
        row = [history[k][index] if index < len(history[k]) else "" for k in keys]
        writer.writerow([index + 1, *row])
    return out.getvalue()


def _not_found(error: MlflowException) -> bool:
    return error.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


class Tracker:
    """A tracking store: finds or creates experiments, opens runs, searches and reads them."""

    def __init__(
        self, tracking_uri: str | None = None, *, check: bool = True, must_exist: bool = False
    ) -> None:
        """Open a store; `must_exist` (commands that read the record) refuses to create one."""
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.shown_uri = redact_url(self.tracking_uri)
        problem = check_tracking_uri(self.tracking_uri)
        if problem:
            raise TrackingError(f"tracking URI: {problem}")
        self.store_dir = local_store_dir(self.tracking_uri)
        if must_exist and self.tracking_uri.startswith("sqlite:///"):
            database = Path(self.tracking_uri.removeprefix("sqlite:///"))
            if not database.is_file():
                raise TrackingError(
                    f"no tracking store at {self.shown_uri} yet: run `tunelab tune` first, or "
                    "point --tracking-uri (or $MLFLOW_TRACKING_URI) at the store to read"
                )
        if self.store_dir is not None:
            try:
                self.store_dir.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise TrackingError(
                    f"cannot create the tracking folder {self.store_dir} "
                    f"({error.strerror or error}); pass --tracking-uri to a writable place"
                ) from None
        elif check:
            self._check_reachable()
        self.client = MlflowClient(self.tracking_uri)

    def _check_reachable(self) -> None:
        """A tracking server or database must answer at once: refused in seconds, not after
        minutes (MLflow retries a database connection for about two minutes)."""
        if not self.tracking_uri.startswith(("http://", "https://")):
            self._check_database()
            return
        url = self.tracking_uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=REACH_SECONDS) as answer:
                answer.read(64)
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise TrackingError(
                f"cannot reach the MLflow tracking server {self.shown_uri} ({reason}); is it "
                "running (`make services`), or is --tracking-uri / $MLFLOW_TRACKING_URI wrong?"
            ) from None

    def _check_database(self) -> None:
        """One connection attempt, with a timeout, to a database-backed store (not SQLite)."""
        dialect = urlparse(self.tracking_uri).scheme.split("+")[0]
        if dialect in ("", "file", "sqlite"):
            return
        import sqlalchemy

        timeout = {"connect_timeout": int(REACH_SECONDS)} if dialect == "postgresql" else {}
        engine = None
        try:
            engine = sqlalchemy.create_engine(self.tracking_uri, connect_args=timeout)
            with engine.connect():
                pass
        except Exception as error:  # the driver's own error types: any failure is "unreachable"
            reason = database_error_line(error)
            raise TrackingError(
                f"cannot reach the tracking database {self.shown_uri} ({type(error).__name__}: "
                f"{reason[:200]}); is it running (`make services`), or is --tracking-uri / "
                "$MLFLOW_TRACKING_URI wrong?"
            ) from None
        finally:
            if engine is not None:
                engine.dispose()

    @contextmanager
    def errors_in_one_line(self) -> Iterator[None]:
        """MLflow failures that are not tunelab's bugs (unreachable, refused) as one line."""
        try:
            yield
        except MlflowException as error:
            raise TrackingError(
                f"the tracking store {self.shown_uri} refused a request: "
                f"{redact_text(str(error).strip().splitlines()[0] if str(error).strip() else '')}"
            ) from None

    def experiment_id(self, name: str) -> str:
        """The id of the named MLflow experiment, created (artifacts beside a local store).

        New experiments are marked as model-training experiments, so the MLflow UI opens them
        on their runs rather than on its GenAI views.
        """
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        location = None
        if self.store_dir is not None:
            location = (self.store_dir / "artifacts" / name).resolve().as_uri()
        try:
            created = str(
                self.client.create_experiment(
                    name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
                )
            )
        except MlflowException:
            # another process created it between our lookup and create
            again = self.client.get_experiment_by_name(name)
            if again is None:
                raise
            return str(again.experiment_id)
        return created

    @contextmanager
    def run(
        self,
        experiment: str,
        run_name: str,
        *,
        tags: Mapping[str, str],
        parent_run_id: str | None = None,
        resume_run_id: str | None = None,
    ) -> Iterator[RunHandle]:
        """Open a run (or reopen `resume_run_id`) and always close it on leaving.

        The status on leaving is `handle.status_on_exit` (FINISHED unless the block changed it),
        FAILED on an exception (unless the block chose another status first), KILLED on Ctrl-C:
        no run is left RUNNING.
        """
        if resume_run_id is not None:
            handle = RunHandle(self.client, resume_run_id)
            self.client.update_run(resume_run_id, status=RunStatus.to_string(RunStatus.RUNNING))
            handle.set_tags(tags)
        else:
            handle = RunHandle(
                self.client,
                self.create_run(experiment, run_name, tags=tags, parent_run_id=parent_run_id),
            )
        status = None
        try:
            yield handle
        except KeyboardInterrupt:
            status = RunStatus.to_string(RunStatus.KILLED)
            raise
        except BaseException:
            # a block that chose its status before raising (a paused training ends KILLED and
            # raises to say so) keeps it; any other exception is a failure
            finished = RunStatus.to_string(RunStatus.FINISHED)
            chosen = handle.status_on_exit
            status = chosen if chosen != finished else RunStatus.to_string(RunStatus.FAILED)
            raise
        finally:
            if status is not None or not handle.keep_open:
                self.client.set_terminated(handle.run_id, status=status or handle.status_on_exit)

    def create_run(
        self,
        experiment: str,
        run_name: str,
        *,
        tags: Mapping[str, str],
        parent_run_id: str | None = None,
    ) -> str:
        """Create a RUNNING run with provenance tags (nested if `parent_run_id`); its id."""
        all_tags = {**provenance_tags(), **tags}
        if parent_run_id is not None:
            all_tags[PARENT_RUN_TAG] = parent_run_id
        created = self.client.create_run(
            self.experiment_id(experiment), run_name=run_name, tags=all_tags
        )
        return str(created.info.run_id)

    # --- reading runs back (compare, export, report, retraining use these, not MLflow) ----

    def get_run(self, run_id: str) -> Any | None:
        """The run, or None if this store has no run with that id (other failures raise)."""
        try:
            return self.client.get_run(run_id)
        except MlflowException as error:
            if _not_found(error) or "not found" in str(error).lower():
                return None
            raise TrackingError(
                f"cannot read run {run_id} from {self.shown_uri}: "
                f"{redact_text(str(error).strip().splitlines()[0])}"
            ) from None

    def experiment_name(self, experiment_id: str) -> str:
        return str(self.client.get_experiment(experiment_id).name)

    def experiment_names(self) -> list[str]:
        return sorted(e.name for e in self.client.search_experiments())

    def has_experiment(self, name: str) -> bool:
        return self.client.get_experiment_by_name(name) is not None

    def _search(
        self, experiment_ids: list[str], query: Query, order: str, limit: int | None
    ) -> list[Any]:
        """Every matching run (all pages), newest or oldest first."""
        found: list[Any] = []
        token: str | None = None
        while True:
            page = self.client.search_runs(
                experiment_ids,
                filter_string=query.filter_string(),
                order_by=[f"attributes.start_time {order}"],
                max_results=PAGE,
                page_token=token,
            )
            found.extend(query.select(page))
            token = page.token
            if not token or (limit is not None and len(found) >= limit):
                return found[:limit] if limit is not None else found

    def search(self, experiment: str, query: Query, *, newest_first: bool = False) -> list[Any]:
        """Runs of an experiment matching `query`, oldest first (all of them, every page)."""
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            return []
        return self._search([found.experiment_id], query, "DESC" if newest_first else "ASC", None)

    def search_all(self, query: Query, limit: int | None = None) -> list[Any]:
        """Runs of every experiment matching `query`, newest first."""
        experiments = [e.experiment_id for e in self.client.search_experiments()]
        if not experiments:
            return []
        return self._search(experiments, query, "DESC", limit)

    def metric_steps(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """A metric's history as (step, value), by step."""
        history = self.client.get_metric_history(run_id, key)
        return sorted((int(m.step), float(m.value)) for m in history)

    def has_artifact(self, run_id: str, path: str) -> bool:
        """Whether the run has an artifact (file or folder) at `path`."""
        parent = str(PurePosixPath(path).parent)
        listed = self.client.list_artifacts(run_id, None if parent == "." else parent)
        return any(item.path == path for item in listed)

    def list_artifacts(self, run_id: str, folder: str) -> list[str]:
        """Paths of the files directly inside an artifact folder (empty if there is none)."""
        return [item.path for item in self.client.list_artifacts(run_id, folder) if not item.is_dir]

    def download_artifact(self, run_id: str, path: str, folder: Path) -> Path | None:
        """One artifact of a run copied under `folder`; None only if the run has no such artifact.

        Any other failure (the store unreachable, a permission refused) is an error, never taken
        for a missing file.
        """
        try:
            if not self.has_artifact(run_id, path):
                return None
            return Path(self.client.download_artifacts(run_id, path, str(folder)))
        except MlflowException as error:
            if _not_found(error):
                return None
            raise TrackingError(
                f"cannot read artifact {path} of run {run_id} from {self.shown_uri}: "
                f"{redact_text(str(error).strip().splitlines()[0])}"
            ) from None
        except OSError as error:
            raise TrackingError(
                f"cannot read artifact {path} of run {run_id}: {error.strerror or error}"
            ) from None

    def delete_artifacts(self, run_id: str, path: str) -> None:
        """Remove an artifact file or folder of a run (checkpoints that are no longer needed)."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        run = self.client.get_run(run_id)
        repository = get_artifact_repository(run.info.artifact_uri, tracking_uri=self.tracking_uri)
        repository.delete_artifacts(path)  # type: ignore[no-untyped-call]

    def end_run(self, run_id: str, status: str) -> None:
        """Terminate a run someone else left open (a dead worker's trial run)."""
        self.client.set_terminated(run_id, status=status)

    def register_model(self, run_id: str, name: str, alias: str) -> tuple[str, str | None]:
        """Register the run's `model/` artifact as a new version of `name`; move `alias` to it.

        Returns (new version, version that held the alias before, if any). The version is tagged
        with the run it came from and the version it replaced.
        """
        client = self.client
        try:
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(
                name, description="tunelab champions; the `champion` alias is the current one"
            )
        previous: str | None = None
        try:
            previous = str(client.get_model_version_by_alias(name, alias).version)
        except MlflowException:
            previous = None
        source = f"{client.get_run(run_id).info.artifact_uri}/{Artifact.MODEL}"
        version = client.create_model_version(name, source, run_id=run_id)
        client.set_registered_model_alias(name, alias, version.version)
        client.set_model_version_tag(name, version.version, TagKey.EXPORTED_FROM_RUN_ID, run_id)
        if previous is not None:
            client.set_model_version_tag(name, version.version, TagKey.REPLACES_VERSION, previous)
        return str(version.version), previous

    def find_baseline(self, digest: str) -> Any | None:
        """The newest finished reference baseline of the data with this digest (whatever its
        name), across experiments."""
        if not digest:
            return None
        runs = self.search_all(
            Query.of(role=Role.BASELINE, status="FINISHED").and_tags(
                **{TagKey.DATASET_DIGEST: digest, TagKey.REFERENCE: "true"}
            ),
            limit=1,
        )
        return runs[0] if runs else None

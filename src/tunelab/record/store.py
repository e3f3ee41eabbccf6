"""The one place that talks to MLflow: stores, experiments, runs, names, tags and artifacts.

Metric names and tag keys are constants here and nowhere else (documented in tracking/README.md).
Runs are opened with `Tracker.run(...)`, a context manager that always closes the run: FINISHED
when the block completes, FAILED on an exception, KILLED on Ctrl-C, so no run stays RUNNING.
Everything is logged explicitly (no autolog), with step = epoch (1-based) for per-epoch metrics.
"""

from __future__ import annotations

import csv
import io
import os
import platform
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow
import numpy as np
import numpy.typing as npt
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag

from tunelab.training.callbacks import EpochSink
from tunelab.define.data import Splits
from tunelab.record.figures import confusion_counts, confusion_matrix, learning_curves
from tunelab.training.train import TrialResult

DEFAULT_TRACKING_URI = "sqlite:///tracking/mlflow.db"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
MODEL_ARTIFACT = "model"
PARENT_RUN_TAG = "mlflow.parentRunId"  # what makes the UI nest a run under its parent
PARAM_VALUE_LIMIT = 6000  # MLflow's limit on a param value's length


class MetricName:
    """Metric keys. Per-epoch ones are logged with step = epoch (1-based)."""

    LOSS = "loss"
    ACCURACY = "accuracy"
    VAL_LOSS = "val_loss"
    VAL_ACCURACY = "val_accuracy"
    EPOCH_SECONDS = "epoch_seconds"
    LEARNING_RATE = "learning_rate"
    BEST_VAL_ACCURACY = "best_val_accuracy"
    BEST_EPOCH = "best_epoch"
    EPOCHS_TRAINED = "epochs_trained"
    PARAM_COUNT = "param_count"
    WALL_SECONDS = "wall_seconds"
    TEST_ACCURACY = "test_accuracy"
    TEST_LOSS = "test_loss"
    TEST_ERRORS = "test_errors"
    TEST_ACCURACY_VS_PUBLISHED = "test_accuracy_minus_published"
    # trials
    VAL_ACCURACY_VS_BASELINE = "best_val_accuracy_minus_baseline"
    VAL_ACCURACY_VS_PUBLISHED = "best_val_accuracy_minus_published"
    PRUNED_AT_EPOCH = "pruned_at_epoch"
    RESUMED_FROM_EPOCH = "resumed_from_epoch"  # a retried trial continued from this checkpoint
    # sweeps (parent runs)
    TRIALS_COMPLETE = "trials_complete"
    TRIALS_PRUNED = "trials_pruned"
    TRIALS_FAILED = "trials_failed"
    BEST_VALUE = "best_value"
    BEST_TRIAL = "best_trial"
    BASELINE_VAL_ACCURACY = "baseline_val_accuracy"
    SECONDS_TO_BEAT_BASELINE = "seconds_to_beat_baseline"
    EPOCHS_TO_BEAT_BASELINE = "epochs_to_beat_baseline"
    TRIAL_THAT_BEAT_BASELINE = "trial_that_beat_baseline"
    SWEEP_TRIAL_SECONDS = "sweep_trial_seconds"
    BEAT_BASELINE_EPOCH = "beat_baseline_at_epoch"
    BEAT_BASELINE_SECONDS = "beat_baseline_after_seconds"
    # retrainings (reproduction, confirmation)
    RECORDED_BEST_VAL_ACCURACY = "recorded_best_val_accuracy"
    VAL_ACCURACY_VS_RECORDED = "best_val_accuracy_minus_recorded"
    # confirmation (fresh seeds): on each confirmed trial run, and the champion's on the parent
    CONFIRMED_MEAN = "confirmed_mean_val_accuracy"
    CONFIRMED_STD = "confirmed_val_accuracy_std"
    CONFIRMED_LOW = "confirmed_val_accuracy_ci95_low"
    CONFIRMED_HIGH = "confirmed_val_accuracy_ci95_high"
    CONFIRMED_SEEDS = "confirmed_seeds"
    CHAMPION_MEAN = "champion_mean_val_accuracy"
    CHAMPION_LOW = "champion_val_accuracy_ci95_low"
    CHAMPION_HIGH = "champion_val_accuracy_ci95_high"
    # test-set evaluation with statistics (export runs)
    TEST_ACCURACY_LOW = "test_accuracy_ci95_low"
    TEST_ACCURACY_HIGH = "test_accuracy_ci95_high"
    TEST_ACCURACY_VS_BASELINE = "test_accuracy_minus_baseline"
    MCNEMAR_P_VALUE = "mcnemar_p_value_vs_baseline"


class TagKey:
    """Tag keys, all under the `tunelab.` prefix so they group together in the UI."""

    ROLE = "tunelab.role"
    DATASET = "tunelab.dataset"
    DATASET_DIGEST = "tunelab.dataset_digest"
    DATA_SOURCE = "tunelab.data_source"
    GIT_COMMIT = "tunelab.git_commit"
    GIT_DIRTY = "tunelab.git_dirty"
    VERSION_PREFIX = "tunelab.version."
    REFERENCE = "tunelab.reference"
    STATUS = "tunelab.status"
    FAILURE_REASON = "tunelab.failure_reason"
    SEED = "tunelab.seed"
    ENGINE = "tunelab.engine"
    STUDY = "tunelab.study"
    EXPERIMENT_FILE = "tunelab.experiment_file"
    TRIAL_NUMBER = "tunelab.trial"
    TRIAL_STATE = "tunelab.trial_state"
    BEST_RUN_ID = "tunelab.best_run_id"
    BEST_PARAMS = "tunelab.best_params"
    BASELINE_RUN_ID = "tunelab.baseline_run_id"
    CONTINUES_TRIAL = "tunelab.continues_trial"
    RETRAINS_RUN_ID = "tunelab.retrains_run_id"
    RETRIES_TRIAL = "tunelab.retries_trial"  # a retried trial: the attempt whose worker died
    CHAMPION_RUN_ID = "tunelab.champion_run_id"
    CHAMPION_PARAMS = "tunelab.champion_params"
    EXPORT_RUN_ID = "tunelab.export_run_id"
    EXPORTED_FROM_RUN_ID = "tunelab.exported_from_run_id"
    REPLACES_VERSION = "tunelab.replaces_version"  # registered versions: the one it took over from


class Role:
    BASELINE = "baseline"
    SWEEP = "sweep"
    TRIAL = "trial"
    REPRODUCTION = "reproduction"  # the recorded seed again
    CONFIRMATION = "confirmation"  # fresh seeds, to tell a better config from a lucky one
    EXPORT = "export"  # the champion refit on all training images, test-evaluated, exported


class TrialState:
    """Values of the tunelab.trial_state tag (the same words for every engine)."""

    COMPLETE = "complete"
    PRUNED = "pruned"
    FAILED = "failed"


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
    status_on_exit: str = "FINISHED"  # the block may set FAILED for a failure it handled
    keep_open: bool = False  # leave RUNNING on a clean exit (other workers still use the run)

    def log_params(self, params: Mapping[str, object]) -> None:
        items = [Param(k, str(v)[:PARAM_VALUE_LIMIT]) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[start : start + 100], synchronous=True)

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        now = _now_ms()
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if np.isfinite(v)]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch, synchronous=True)

    def set_tags(self, tags: Mapping[str, object]) -> None:
        batch = [RunTag(k, str(v)[:PARAM_VALUE_LIMIT]) for k, v in tags.items()]
        self.client.log_batch(self.run_id, tags=batch, synchronous=True)

    def epoch_sink(self) -> EpochSink:
        """A function for EpochSinkCallback: logs each epoch's metrics with step = epoch."""
        return lambda epoch, logs: self.log_metrics(logs, step=epoch)

    def log_dataset(self, splits: Splits, context: str = "training") -> None:
        """Record the data as an MLflow input, named and digested, plus tags for filtering."""
        dataset = mlflow.data.from_numpy(  # type: ignore[attr-defined]
            splits.train.x[:1],
            targets=splits.train.y[:1],
            name=splits.dataset,
            digest=splits.digest,
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
            }
        )

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_folder(self, folder: Path, artifact_dir: str) -> None:
        self.client.log_artifacts(self.run_id, str(folder), artifact_dir)

    def log_file(self, path: Path, artifact_dir: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_dir)

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
        self.log_metrics(summary)
        self.set_tags({TagKey.STATUS: result.status, TagKey.SEED: result.seed})
        if result.failure_reason:
            self.set_tags({TagKey.FAILURE_REASON: result.failure_reason})
        if result.history:
            self.log_text(history_csv(result.history), "history.csv")
            figure = learning_curves(result.history, title=title, reference_accuracy=reference)
            self.log_figure(figure, "learning_curves.png")

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
            folder = Path(tmp) / MODEL_ARTIFACT
            folder.mkdir()
            mlflow.keras.save_model(
                model,
                str(folder),
                signature=signature,
                input_example=example,
                pip_requirements=requirements,
            )
            self.client.log_artifacts(self.run_id, str(folder), MODEL_ARTIFACT)


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


class Tracker:
    """A tracking store: finds or creates experiments, opens runs, finds the baseline."""

    def __init__(self, tracking_uri: str | None = None) -> None:
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.store_dir = local_store_dir(self.tracking_uri)
        if self.store_dir is not None:
            self.store_dir.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(self.tracking_uri)

    def experiment_id(self, name: str) -> str:
        """The id of the named MLflow experiment, created (artifacts beside a local store)."""
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        location = None
        if self.store_dir is not None:
            location = (self.store_dir / "artifacts" / name).resolve().as_uri()
        try:
            return str(self.client.create_experiment(name, artifact_location=location))
        except mlflow.exceptions.MlflowException:
            # another process created it between our lookup and create
            again = self.client.get_experiment_by_name(name)
            if again is None:
                raise
            return str(again.experiment_id)

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
        FAILED on an exception, KILLED on Ctrl-C: no run is left RUNNING.
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
            status = RunStatus.to_string(RunStatus.FAILED)
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
        """The run, or None if this store has no run with that id."""
        try:
            return self.client.get_run(run_id)
        except mlflow.exceptions.MlflowException:
            return None

    def experiment_name(self, experiment_id: str) -> str:
        return str(self.client.get_experiment(experiment_id).name)

    def experiment_names(self) -> list[str]:
        return sorted(e.name for e in self.client.search_experiments())

    def has_experiment(self, name: str) -> bool:
        return self.client.get_experiment_by_name(name) is not None

    def search_all(self, filter_string: str, max_results: int = 1000) -> list[Any]:
        """Runs of every experiment matching an MLflow filter, newest first."""
        experiments = [e.experiment_id for e in self.client.search_experiments()]
        if not experiments:
            return []
        return list(
            self.client.search_runs(
                experiments,
                filter_string=filter_string,
                order_by=["attributes.start_time DESC"],
                max_results=max_results,
            )
        )

    def metric_steps(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """A metric's history as (step, value), by step."""
        history = self.client.get_metric_history(run_id, key)
        return sorted((int(m.step), float(m.value)) for m in history)

    def download_artifact(self, run_id: str, path: str, folder: Path) -> Path | None:
        """One artifact of a run copied under `folder`; None if the run has no such artifact."""
        try:
            return Path(self.client.download_artifacts(run_id, path, str(folder)))
        except Exception:  # MLflow raises several types for a missing file, by store
            return None

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
        except mlflow.exceptions.MlflowException:
            client.create_registered_model(
                name, description="tunelab champions; the `champion` alias is the current one"
            )
        previous: str | None = None
        try:
            previous = str(client.get_model_version_by_alias(name, alias).version)
        except mlflow.exceptions.MlflowException:
            previous = None
        source = f"{client.get_run(run_id).info.artifact_uri}/{MODEL_ARTIFACT}"
        version = client.create_model_version(name, source, run_id=run_id)
        client.set_registered_model_alias(name, alias, version.version)
        client.set_model_version_tag(name, version.version, TagKey.EXPORTED_FROM_RUN_ID, run_id)
        if previous is not None:
            client.set_model_version_tag(name, version.version, TagKey.REPLACES_VERSION, previous)
        return str(version.version), previous

    def search(self, experiment: str, filter_string: str, max_results: int = 1000) -> list[Any]:
        """Runs of an experiment matching an MLflow filter, oldest first."""
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            return []
        return list(
            self.client.search_runs(
                [found.experiment_id],
                filter_string=filter_string,
                max_results=max_results,
                order_by=["attributes.start_time ASC"],
            )
        )

    def find_baseline(self, dataset: str) -> Any | None:
        """The newest finished reference baseline run of a dataset, across experiments."""
        runs = self.search_all(
            f"tags.`{TagKey.ROLE}` = '{Role.BASELINE}' "
            f"and tags.`{TagKey.DATASET}` = '{dataset}' "
            f"and tags.`{TagKey.REFERENCE}` = 'true' and attributes.status = 'FINISHED'",
            max_results=1,
        )
        return runs[0] if runs else None


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)

"""A trained run as its MLflow record describes it, and the data it was trained on.

Reproduction, confirmation, comparison and export all start from a run id (a sweep's child run,
or the baseline) and need the same things back: the run config (`config.json`: the factory and
its source digest, its parameters, the training, the data's shape; runs of earlier versions
kept one flat CNN config, read too), the training seed, the validation score it reached, and the
exact split it validated on (the data's origin, validation size and split seed recorded on the
sweep's parent run, checked against the recorded data digest on reload). This module reads
them back in one place, and refuses with one line when a run does not exist or lacks what is
needed.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tunelab.define.cnn import CnnConfig
from tunelab.define.data import Splits, load_splits, split_dataset
from tunelab.define.run_config import RunConfig
from tunelab.errors import UserError
from tunelab.record.names import (
    CONFIG_PARAM_PREFIX,
    PARENT_RUN_TAG,
    Artifact,
    MetricName,
    Role,
    TagKey,
    TrialState,
)
from tunelab.record.query import Query
from tunelab.record.store import Tracker


class RunNotFound(UserError):
    """A run id or experiment that the tracking store does not hold (one line)."""


@dataclass(frozen=True)
class DataRecord:
    """The split a run trained and validated on, as recorded."""

    dataset: str
    validation_size: int
    split_seed: int | None
    train_size: int | None
    digest: str | None
    origin: str | None = None  # how to load the data again (a user dataset's path)

    def load(
        self,
        *,
        data_file: Path | None = None,
        report: Callable[[str], None] = lambda _: None,
        whole_training_set: bool = False,
    ) -> Splits:
        """Fetch, verify and split the data as recorded; refuse if the digest differs.

        `whole_training_set` drops a recorded training subset (a sweep on 6,000 images), so that
        train + validation is every training image again: what a refit trains on.
        """
        train_size = None if whole_training_set else self.train_size
        if self.origin and data_file is None and not self.origin.startswith('"'):
            from tunelab.define.sources import load_origin

            splits = split_dataset(
                load_origin(self.origin, report),
                validation_size=self.validation_size,
                seed=self.split_seed,
                train_size=train_size,
            )
        else:
            splits = load_splits(
                self.dataset,
                self.validation_size,
                self.split_seed,
                train_size=train_size,
                user_path=data_file,
                report=report,
            )
        self.check(splits)
        return splits

    def check(self, splits: Splits) -> None:
        """Refuse data whose digest is not the recorded one (the numbers would not compare)."""
        if self.digest and splits.digest != self.digest:
            raise UserError(
                f"the data differs from the recorded run's ({splits.dataset} digest "
                f"{splits.digest[:12]} vs recorded {self.digest[:12]}): use the same data file"
            )


@dataclass(frozen=True)
class RecordedRun:
    """One trained configuration as recorded: config, seed, scores, data, place in a sweep."""

    run_id: str
    experiment: str
    role: str
    engine: str
    study: str
    trial_number: int | None
    seed: int
    config: RunConfig
    chosen: Mapping[str, str]
    metrics: Mapping[str, float]
    data: DataRecord
    parent_run_id: str | None
    continues_trial: int | None

    resumed: bool = False  # continued from a checkpoint: a retraining is not bit-identical

    @property
    def best_val_accuracy(self) -> float | None:
        return self.metrics.get(MetricName.BEST_VAL_ACCURACY)

    @property
    def label(self) -> str:
        """How tables name it: engine and trial, or the role."""
        if self.trial_number is None:
            return self.role
        return f"{self.engine} t{self.trial_number}"


def get_run(tracker: Tracker, run_id: str) -> Any:
    """The MLflow run, or a one-line refusal naming the store."""
    run = tracker.get_run(run_id)
    if run is None:
        raise RunNotFound(
            f"run {run_id!r} not found in {tracker.shown_uri} (copy a run id from the MLflow "
            "UI or `tunelab compare`)"
        )
    return run


def load_recorded_run(tracker: Tracker, run_id: str) -> RecordedRun:
    """Read a trial or baseline run back; refuse runs that did not record a model config."""
    run = get_run(tracker, run_id)
    params, tags = run.data.params, run.data.tags
    role = tags.get(TagKey.ROLE, "")
    config = recorded_config(tracker, run)
    if config is None:
        raise UserError(
            f"run {run_id} has no recorded model config (a sweep's parent run, or a trial that "
            "failed before training?): pick a trial run"
        )
    parent_id = tags.get(PARENT_RUN_TAG)
    data_params = get_run(tracker, parent_id).data if parent_id else run.data
    experiment = tracker.experiment_name(run.info.experiment_id)
    continues = tags.get(TagKey.CONTINUES_TRIAL)
    trial = tags.get(TagKey.TRIAL_NUMBER)
    return RecordedRun(
        run_id=run_id,
        experiment=experiment,
        role=role,
        engine=tags.get(TagKey.ENGINE, role),
        study=tags.get(TagKey.STUDY, ""),
        trial_number=int(trial) if trial is not None else None,
        seed=int(tags.get(TagKey.SEED, "0")),
        config=config,
        chosen={
            k: v
            for k, v in params.items()
            if not k.startswith(CONFIG_PARAM_PREFIX) and k != "trial_number"
        }
        if role != Role.BASELINE
        else {},
        metrics=dict(run.data.metrics),
        data=_data_record(data_params.params, data_params.tags),
        parent_run_id=parent_id,
        continues_trial=int(continues) if continues is not None else None,
        resumed=tags.get(TagKey.RESUMED_FROM_CHECKPOINT) == "true",
    )


def recorded_config(tracker: Tracker, run: Any) -> RunConfig | None:
    """A run's config: `config.json`, else its `cfg.*` params (runs recorded before
    config.json), else a baseline's plain params (the oldest baselines); None if it has none."""
    with tempfile.TemporaryDirectory() as tmp:
        local = tracker.download_artifact(run.info.run_id, Artifact.CONFIG, Path(tmp))
        if local is not None:
            try:
                return RunConfig.read(local.read_text())
            except (ValueError, ValidationError) as error:
                raise UserError(
                    f"run {run.info.run_id} recorded a config tunelab cannot read: "
                    f"{str(error).splitlines()[0]}"
                ) from None
    params = run.data.params
    values = {
        key[len(CONFIG_PARAM_PREFIX) :]: value
        for key, value in params.items()
        if key.startswith(CONFIG_PARAM_PREFIX)
    }
    if not values and run.data.tags.get(TagKey.ROLE) == Role.BASELINE:
        known = set(CnnConfig.model_fields) | {"optimizer", "learning_rate", "batch_size", "epochs"}
        values = {k: v for k, v in params.items() if k in known}
    if not values:
        return None
    try:  # MLflow params are strings: pydantic's lax mode reads them as the fields' types
        return RunConfig.from_flat_cnn(typed_params(values))
    except ValueError as error:
        raise UserError(
            f"run {run.info.run_id} recorded a config tunelab cannot read: "
            f"{str(error).splitlines()[0]}"
        ) from None


def _data_record(params: Mapping[str, str], tags: Mapping[str, str]) -> DataRecord:
    def optional_int(key: str) -> int | None:
        value = params.get(key)
        return None if value in (None, "None", "") else int(value)

    return DataRecord(
        dataset=params.get("dataset", tags.get(TagKey.DATASET, "mnist")),
        validation_size=optional_int("data_validation_size") or 10_000,
        split_seed=optional_int("data_split_seed"),
        train_size=optional_int("data_train_size"),
        digest=tags.get(TagKey.DATASET_DIGEST),
        origin=tags.get(TagKey.DATASET_SOURCE),
    )


def typed_params(values: Mapping[str, str]) -> dict[str, Any]:
    """MLflow params are strings; the Python values back (bool, None, int, float, str)."""
    typed: dict[str, Any] = {}
    for key, text in values.items():
        typed[key] = _scalar(text)
    return typed


def _scalar(text: str) -> Any:
    if text in ("True", "False"):
        return text == "True"
    if text == "None":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


@dataclass(frozen=True)
class SweepRecord:
    """A sweep's parent run, found from an experiment file or name (and optionally a study)."""

    experiment: str
    study: str
    parent_run_id: str
    engine: str
    tags: Mapping[str, str]
    metrics: Mapping[str, float]
    params: Mapping[str, str]

    @property
    def data(self) -> DataRecord:
        """The split every trial of the sweep trained and validated on."""
        return _data_record(self.params, self.tags)

    def trial_runs(self, tracker: Tracker) -> list[Any]:
        """The sweep's trial runs (not its reproductions or confirmations), oldest first."""
        return tracker.search(self.experiment, Query.of(role=Role.TRIAL, parent=self.parent_run_id))

    def runs_of(self, tracker: Tracker, role: str) -> list[Any]:
        """The sweep's runs of a role (confirmation, export, ...), oldest first."""
        return tracker.search(self.experiment, Query.of(role=role, parent=self.parent_run_id))

    def top_trials(self, tracker: Tracker, k: int) -> list[RecordedRun]:
        """The `k` best finalists (see `finalists`)."""
        best = finalists(self.trial_runs(tracker))[:k]
        return [load_recorded_run(tracker, run.info.run_id) for run in best]


def completed(runs: list[Any]) -> list[Any]:
    """Trial runs that completed with a best validation accuracy, in their order."""
    return [
        run
        for run in runs
        if run.data.tags.get(TagKey.TRIAL_STATE) == TrialState.COMPLETE
        and MetricName.BEST_VAL_ACCURACY in run.data.metrics
    ]


def screen_epochs(run: Any) -> int:
    """The complete schedule a screened trial trained (`engine.screens`); 0 for any other."""
    return int(run.data.tags.get(TagKey.SCREEN_EPOCHS, 0))


def finalists(runs: list[Any]) -> list[Any]:
    """Complete trials in the order they compete for the crown: a configuration screened on a
    longer schedule before any screened on a shorter one (a score after one epoch is no match
    for one after four), then by best validation accuracy; a trial whose configuration was
    promoted to a longer screen is represented by that promotion alone."""
    done = completed(runs)
    promoted = {run.data.tags.get(TagKey.PROMOTED_FROM) for run in done}
    kept = [run for run in done if run.data.tags.get(TagKey.TRIAL_NUMBER) not in promoted]
    return sorted(
        kept,
        key=lambda run: (-screen_epochs(run), -run.data.metrics[MetricName.BEST_VAL_ACCURACY]),
    )


def ranked_by_best_val(runs: list[Any]) -> list[Any]:
    """Runs that have a best validation accuracy, highest first."""
    scored = [run for run in runs if MetricName.BEST_VAL_ACCURACY in run.data.metrics]
    return sorted(scored, key=lambda run: -run.data.metrics[MetricName.BEST_VAL_ACCURACY])


def experiment_name(target: str) -> str:
    """An experiment file's name (`name:` or its stem), or `target` itself as an MLflow name."""
    path = Path(target)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise RunNotFound(f"experiment file {target} does not exist")
        from tunelab.define.experiment import load_experiment

        return load_experiment(path).name
    return target


def find_sweep(tracker: Tracker, target: str, study: str | None = None) -> SweepRecord:
    """The sweep of an experiment (file or MLflow name): the named study, else the one named
    like the experiment, else the latest. Refuses in one line when there is none."""
    name = experiment_name(target)
    if not tracker.has_experiment(name):
        known = tracker.experiment_names()
        raise RunNotFound(
            f"experiment {name!r} not found in {tracker.shown_uri} "
            f"(it has: {', '.join(known) or 'nothing yet'}); run `tunelab tune` first"
        )
    parents = tracker.search(name, Query.of(role=Role.SWEEP))
    if study is not None:
        parents = [p for p in parents if p.data.tags.get(TagKey.STUDY) == study]
    if not parents:
        raise RunNotFound(
            f"experiment {name!r} has no sweep"
            + (f" with study {study!r}" if study else "")
            + "; run `tunelab tune` on it first"
        )
    same_name = [p for p in parents if p.data.tags.get(TagKey.STUDY) == name]
    parent = (same_name or parents)[-1]
    return SweepRecord(
        experiment=name,
        study=parent.data.tags.get(TagKey.STUDY, name),
        parent_run_id=parent.info.run_id,
        engine=parent.data.tags.get(TagKey.ENGINE, ""),
        tags=dict(parent.data.tags),
        metrics=dict(parent.data.metrics),
        params=dict(parent.data.params),
    )


def find_sweep_by_study(tracker: Tracker, study: str) -> SweepRecord:
    """The sweep of a study, whatever experiment holds it (the newest if several do)."""
    runs = tracker.search_all(Query.of(role=Role.SWEEP, study=study), limit=1)
    if not runs:
        raise RunNotFound(f"no sweep with study {study!r} in {tracker.shown_uri}")
    return find_sweep(tracker, tracker.experiment_name(runs[0].info.experiment_id), study)

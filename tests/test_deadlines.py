"""Budgets are deadlines: no step starts that cannot finish; paused trials continue next launch."""

from __future__ import annotations

import hashlib
import textwrap
import time
from pathlib import Path
from typing import Any

import optuna
import pytest

from conftest import flat_config, quiet_sweep
from tunelab.define.data import Splits
from tunelab.define.experiment import load_experiment
from tunelab.record.ledger import Ledger, union_seconds
from tunelab.record.names import MetricName, Role, TagKey, TrialState
from tunelab.record.query import Query
from tunelab.record.store import Tracker
from tunelab.training.deadline import Deadline
from tunelab.training.train import train_and_validate

SPACE = """
parameters:
  learning_rate: {type: categorical, values: [0.003, 0.002]}
fixed: {optimizer: adam, filters: 8, dense_units: 16, epochs: EPOCHS, batch_size: 128}
"""
EXPERIMENT = """
name: late
search_space: space.yaml
engine: {name: optuna, sampler: random}
budget: {trials: 1, max_consecutive_failures: 1}
seed: 2
"""


class ScriptedDeadline(Deadline):
    """A deadline whose remaining time follows a script (one value per question)."""

    def __init__(self, remaining: list[float]) -> None:
        super().__init__(time.time() + 3600)
        self.script = list(remaining)
        self.asked = 0

    def remaining(self) -> float:
        self.asked += 1
        return self.script.pop(0) if self.script else 0.0


def after_a_few_steps() -> ScriptedDeadline:
    """Room for the launch to start and its trial to train a few steps, then none: a sweep
    paused by its deadline without waiting for a real one."""
    return ScriptedDeadline([1e6] * 5)


@pytest.mark.slow
def test_no_step_starts_that_cannot_finish_before_the_deadline(tiny_splits: Splits) -> None:
    cfg = flat_config(**{"optimizer": "adam", "filters": 8, "dense_units": 16, "epochs": 5})
    deadline = ScriptedDeadline([1e6, 1e6, 1e-3])  # room for two steps, then none
    result = train_and_validate(cfg, tiny_splits, seed=0, deadline=deadline, flop_rate=1e12)
    assert result.paused and result.status == "paused"
    assert result.epochs_trained == 2 and deadline.asked == 3  # asked before every step


@pytest.mark.slow
def test_a_continued_training_sees_exactly_the_images_an_uninterrupted_one_would(
    tiny_splits: Splits, tracking_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every step's batches (augmented pixels and labels, in order) are recorded as they are fed
    to the model: a training paused after two steps and continued from its checkpoint feeds the
    remaining steps exactly what an uninterrupted training fed them."""
    from tunelab.training import train
    from tunelab.training.checkpoints import CheckpointWriter, load_checkpoint

    fed: dict[int, str] = {}
    build_step = train.step_dataset

    def recorded(split: Any, cfg: Any, plan: Any, step: Any, seed: int) -> Any:
        data = build_step(split, cfg, plan, step, seed)
        digest = hashlib.sha256()
        for x, y in data:
            digest.update(x.numpy().tobytes())
            digest.update(y.numpy().tobytes())
        fed[step.number] = digest.hexdigest()
        return data

    monkeypatch.setattr(train, "step_dataset", recorded)
    cfg = flat_config(
        optimizer="adam", filters=4, dense_units=16, epochs=4, batch_size=128,
        augment_translation=0.1,
    )  # fmt: skip
    train_and_validate(cfg, tiny_splits, seed=3)
    uninterrupted = dict(fed)
    assert len(set(uninterrupted.values())) == 4  # every pass is a new order and new shifts
    fed.clear()
    tracker = Tracker(tracking_uri)
    with tracker.run("continued", "training", tags={}) as run:
        first = train_and_validate(
            cfg, tiny_splits, seed=3, deadline=ScriptedDeadline([1e6, 1e6, 0.0]),
            checkpoint=CheckpointWriter(tracker, run.run_id),
        )  # fmt: skip
        assert first.paused and first.epochs_trained == 2
        checkpoint = load_checkpoint(tracker, run.run_id, tmp_path / "checkpoint")
    assert checkpoint is not None and checkpoint.step == 2
    fed.clear()
    rest = train_and_validate(cfg, tiny_splits, seed=3, resume=checkpoint)
    assert rest.epochs_trained == 4
    assert fed == {3: uninterrupted[3], 4: uninterrupted[4]}


@pytest.mark.slow
def test_a_real_deadline_is_overrun_by_at_most_one_step(tiny_splits: Splits) -> None:
    cfg = flat_config(**{"optimizer": "adam", "filters": 8, "dense_units": 16, "epochs": 40})
    deadline = Deadline.after(6.0)
    result = train_and_validate(cfg, tiny_splits, seed=0, deadline=deadline)
    over = -deadline.remaining()
    assert result.paused and 0 < result.epochs_trained < 40
    longest = max(result.history["epoch_seconds"])
    assert over <= longest  # it stopped at a step boundary, never more than one step late


def write(folder: Path, epochs: int, experiment: str = EXPERIMENT) -> Any:
    (folder / "space.yaml").write_text(textwrap.dedent(SPACE).replace("EPOCHS", str(epochs)))
    (folder / "late.yaml").write_text(textwrap.dedent(experiment))
    return load_experiment(folder / "late.yaml")


@pytest.mark.slow
def test_a_paused_trial_is_neither_failed_nor_complete_and_the_next_launch_continues_it(
    tmp_path: Path, tiny_splits: Splits
) -> None:
    spec = write(tmp_path, epochs=8)
    uri, storage = f"sqlite:///{tmp_path / 'mlflow.db'}", f"sqlite:///{tmp_path / 'optuna.db'}"
    first = quiet_sweep(
        spec, tiny_splits, tracking_uri=uri, storage_url=storage, deadline=after_a_few_steps()
    )
    assert first.counts == {"complete": 0, "pruned": 0, "failed": 0, "paused": 1}
    assert "paused" in first.stopped_because and "continues" in first.stopped_because
    tracker = Tracker(uri)
    [paused] = tracker.search("late", Query.of(role=Role.TRIAL))
    assert paused.data.tags[TagKey.TRIAL_STATE] == TrialState.PAUSED
    assert paused.info.status == "KILLED"
    done = int(paused.data.metrics[MetricName.EPOCHS_TRAINED])
    assert 1 <= done < 8
    assert tracker.list_artifacts(paused.info.run_id, "checkpoint")  # kept for the next launch
    [parent] = tracker.search("late", Query.of(role=Role.SWEEP))
    assert parent.data.metrics[MetricName.TRIALS_PAUSED] == 1
    assert parent.data.metrics[MetricName.TRIALS_FAILED] == 0
    # max_consecutive_failures is 1: a pause that counted as a failure would stop the sweep
    second = quiet_sweep(
        spec, tiny_splits, tracking_uri=uri, storage_url=storage, timeout_seconds=600.0
    )
    assert second.counts["complete"] == 1 and second.counts["failed"] == 0
    runs = tracker.search("late", Query.of(role=Role.TRIAL))
    [continued] = [r for r in runs if r.info.run_id != paused.info.run_id]
    assert continued.data.tags[TagKey.TRIAL_STATE] == TrialState.COMPLETE
    assert continued.data.metrics.get(MetricName.RESUMED_FROM_EPOCH, 0) == done
    assert continued.data.metrics[MetricName.EPOCHS_TRAINED] == 8
    assert continued.data.tags[TagKey.RETRIES_TRIAL] == "0"
    assert not tracker.list_artifacts(paused.info.run_id, "checkpoint")  # the trial is over
    study = optuna.load_study(study_name="late", storage=storage)
    assert [t.state for t in study.trials] == [
        optuna.trial.TrialState.FAIL,  # Optuna's word for the paused attempt
        optuna.trial.TrialState.COMPLETE,
    ]
    assert all(r.info.status != "RUNNING" for r in tracker.search("late", Query()))


@pytest.mark.slow
def test_the_time_budget_is_the_running_time_of_all_launches_together(
    tmp_path: Path, tiny_splits: Splits
) -> None:
    spec = write(tmp_path, epochs=30, experiment=EXPERIMENT.replace("trials: 1", "trials: 5"))
    uri, storage = f"sqlite:///{tmp_path / 'mlflow.db'}", f"sqlite:///{tmp_path / 'optuna.db'}"
    started = time.monotonic()
    first = quiet_sweep(
        spec, tiny_splits, tracking_uri=uri, storage_url=storage, timeout_seconds=10.0
    )
    first_wall = time.monotonic() - started
    tracker = Tracker(uri)
    [paused] = tracker.search("late", Query.of(role=Role.TRIAL, status="KILLED"))
    longest = max(v for _, v in tracker.metric_steps(paused.info.run_id, MetricName.EPOCH_SECONDS))
    # it used its 10 s: it stopped only when the next step (about the longest so far) did not fit
    assert 10.0 - 2 * longest < first.spent_seconds < 16.0
    steps_before = len(tracker.metric_steps(paused.info.run_id, MetricName.EPOCH_SECONDS))
    # a budget the first launch has used up: this launch trains nothing and opens no run
    used_up = quiet_sweep(
        spec,
        tiny_splits,
        tracking_uri=uri,
        storage_url=storage,
        timeout_seconds=first.spent_seconds - 0.5,
    )
    assert "spent by earlier launches" in used_up.stopped_because
    assert used_up.launch_seconds < 5.0
    assert used_up.spent_seconds == pytest.approx(first.spent_seconds)
    # half a second left, less than the paused trial's next step: it looks, trains nothing,
    # and the seconds it took count
    started = time.monotonic()
    again = quiet_sweep(
        spec,
        tiny_splits,
        tracking_uri=uri,
        storage_url=storage,
        timeout_seconds=first.spent_seconds + 0.5,
    )
    again_wall = time.monotonic() - started
    assert "the time budget is spent" in again.stopped_because
    assert first.spent_seconds < again.spent_seconds <= first.spent_seconds + again_wall
    assert steps_before == len(tracker.metric_steps(paused.info.run_id, MetricName.EPOCH_SECONDS))
    started = time.monotonic()
    more = quiet_sweep(
        spec, tiny_splits, tracking_uri=uri, storage_url=storage, timeout_seconds=25.0
    )
    more_wall = time.monotonic() - started
    assert more.spent_before == pytest.approx(again.spent_seconds)  # it started from the others
    # it trains on in the seconds the others left (startup and checkpoint restore included),
    # and stops by the summed budget plus at most one step
    steps = [
        seconds
        for run in tracker.search("late", Query.of(role=Role.TRIAL))
        for _, seconds in tracker.metric_steps(run.info.run_id, MetricName.EPOCH_SECONDS)
    ]
    assert len(steps) > steps_before
    assert again.spent_seconds < more.spent_seconds < 25.0 + max(steps)
    [parent] = tracker.search("late", Query.of(role=Role.SWEEP))
    ledger = Ledger(tracker, parent.info.run_id, "sweep")
    # the launch that found nothing left opened no run and recorded no interval
    assert len(ledger.intervals()) == 3
    assert ledger.spent() == pytest.approx(more.spent_seconds)
    # measured apart from the ledger: the two launches' own wall clocks bound what it counts
    assert more.spent_seconds <= first_wall + again_wall + more_wall
    assert more.spent_seconds - again.spent_seconds <= more_wall


def test_overlapping_launches_count_once() -> None:
    assert union_seconds([(0, 10), (5, 12), (20, 25)]) == 17
    assert union_seconds([(0, 10), (2, 3)]) == 10
    assert union_seconds([]) == 0


@pytest.mark.slow
def test_a_keras_tuner_trial_paused_at_the_deadline_continues_in_the_next_launch(
    tmp_path: Path, tiny_splits: Splits
) -> None:
    experiment = EXPERIMENT.replace(
        "engine: {name: optuna, sampler: random}", "engine: {name: kerastuner, tuner: random}"
    )
    spec = write(tmp_path, epochs=8, experiment=experiment)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    state = tmp_path / "keras_tuner"
    first = quiet_sweep(
        spec, tiny_splits, tracking_uri=uri, state_dir=state, deadline=after_a_few_steps()
    )
    assert first.counts["paused"] == 1 and first.counts["failed"] == 0
    tracker = Tracker(uri)
    [paused] = tracker.search("late", Query.of(role=Role.TRIAL))
    assert paused.data.tags[TagKey.TRIAL_STATE] == TrialState.PAUSED
    done = int(paused.data.metrics[MetricName.EPOCHS_TRAINED])
    second = quiet_sweep(
        spec, tiny_splits, tracking_uri=uri, state_dir=state, timeout_seconds=600.0
    )
    assert second.counts["complete"] == 1
    runs = tracker.search("late", Query.of(role=Role.TRIAL))
    [continued] = [r for r in runs if r.info.run_id != paused.info.run_id]
    assert continued.data.tags[TagKey.TRIAL_NUMBER] == paused.data.tags[TagKey.TRIAL_NUMBER]
    assert continued.data.metrics[MetricName.EPOCHS_TRAINED] == 8
    assert 1 <= done < 8 and continued.data.metrics[MetricName.RESUMED_FROM_EPOCH] == done
    assert all(r.info.status != "RUNNING" for r in tracker.search("late", Query()))

"""A tiny Optuna sweep on the fixture: nested MLflow runs, pruned and failed trials, resumption."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import optuna
import pytest

from conftest import quiet_sweep
from tunelab.define.data import Splits
from tunelab.define.experiment import ExperimentSpec, load_experiment
from tunelab.engines import runner
from tunelab.engines.optuna import engine as optuna_engine
from tunelab.record.names import MetricName, Role, TagKey
from tunelab.record.query import Query
from tunelab.record.store import Tracker

# lr 1e-6 learns nothing (pruned by the median rule); conv_blocks 4 cannot be built (failed)
SPACE = """
parameters:
  learning_rate: {type: categorical, values: [0.003, 0.002, 0.000001]}
  conv_blocks: {type: categorical, values: [1, 4]}
fixed: {optimizer: adam, filters: 8, dense_units: 16, epochs: 3, batch_size: 128}
"""
EXPERIMENT = """
name: tiny
search_space: space.yaml
engine: {name: optuna, sampler: grid, pruner: median, startup_trials: 1}
budget: {trials: 6, max_epochs: 3, max_consecutive_failures: 20}
seed: 3
"""


def write_experiment(folder: Path, experiment: str = EXPERIMENT) -> ExperimentSpec:
    (folder / "space.yaml").write_text(textwrap.dedent(SPACE))
    (folder / "tiny.yaml").write_text(textwrap.dedent(experiment))
    return load_experiment(folder / "tiny.yaml")


def sweep(spec: ExperimentSpec, splits: Splits, uri: str, storage: str, **kwargs: Any) -> Any:
    return quiet_sweep(spec, splits, tracking_uri=uri, storage_url=storage, **kwargs)


@pytest.fixture()
def stores(tmp_path: Path) -> tuple[str, str]:
    return f"sqlite:///{tmp_path / 'mlflow.db'}", f"sqlite:///{tmp_path / 'optuna.db'}"


def raise_on_call(monkeypatch: pytest.MonkeyPatch, call: int, error: BaseException) -> None:
    """Make the engine's training raise `error` on its `call`-th training (1-based)."""
    real = runner.train_and_validate
    calls = {"n": 0}

    def training(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == call:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "train_and_validate", training)


def children_of(tracker: Tracker, parent_id: str) -> list[Any]:
    return tracker.search("tiny", Query.of(parent=parent_id))


@pytest.mark.slow
def test_sweep_records_a_parent_with_nested_complete_pruned_and_failed_trials(
    tmp_path: Path, tiny_splits: Splits, stores: tuple[str, str]
) -> None:
    uri, storage = stores
    spec = write_experiment(tmp_path)
    summary = sweep(spec, tiny_splits, uri, storage)
    tracker = Tracker(uri)
    [parent] = tracker.search("tiny", Query.of(role=Role.SWEEP))
    assert parent.info.status == "FINISHED"
    children = children_of(tracker, parent.info.run_id)
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert len(children) == len(study.trials) == 6
    states = {c.data.tags[TagKey.TRIAL_STATE] for c in children}
    assert states == {"complete", "pruned", "failed"}
    for child in children:
        assert child.info.status == (
            "FAILED" if child.data.tags[TagKey.TRIAL_STATE] == "failed" else "FINISHED"
        )
        assert child.data.tags[TagKey.ROLE] == Role.TRIAL
        number = int(child.data.tags[TagKey.TRIAL_NUMBER])
        assert child.data.params["trial_number"] == str(number)
        if child.data.tags[TagKey.TRIAL_STATE] == "failed":
            assert child.data.tags[TagKey.FAILURE_REASON].startswith(
                "impossible config: conv_blocks"
            )
        else:
            history = tracker.client.get_metric_history(child.info.run_id, "val_accuracy")
            assert [m.step for m in history] == list(range(1, len(history) + 1))
    pruned = [c for c in children if c.data.tags[TagKey.TRIAL_STATE] == "pruned"]
    assert all(c.data.params["learning_rate"] == "1e-06" for c in pruned)
    assert all(c.data.metrics[MetricName.PRUNED_AT_EPOCH] < 3 for c in pruned)
    metrics = parent.data.metrics
    counts = {
        s: sum(c.data.tags[TagKey.TRIAL_STATE] == s for c in children)
        for s in ("complete", "pruned", "failed")
    }
    assert metrics[MetricName.TRIALS_COMPLETE] == counts["complete"]
    assert metrics[MetricName.TRIALS_PRUNED] == counts["pruned"]
    assert metrics[MetricName.TRIALS_FAILED] == counts["failed"] == 3  # every conv_blocks=4
    best = max((t for t in study.trials if t.value is not None), key=lambda t: t.value)
    assert metrics[MetricName.BEST_VALUE] == pytest.approx(best.value)
    assert parent.data.tags[TagKey.BEST_RUN_ID] == best.user_attrs["mlflow_run_id"]
    artifacts = {a.path for a in tracker.client.list_artifacts(parent.info.run_id, "plots")}
    assert {"plots/optimization_history.png", "plots/intermediate_values.png"} <= artifacts
    experiment_files = {
        a.path for a in tracker.client.list_artifacts(parent.info.run_id, "experiment")
    }
    assert experiment_files == {"experiment/tiny.yaml", "experiment/space.yaml"}
    assert summary.counts == {**counts, "paused": 0}  # what the command prints is the record
    assert f"{counts['complete']} complete, {counts['pruned']} pruned, 3 failed" in (
        summary.summary()
    )
    assert summary.best is not None and summary.best.run_id == parent.data.tags[TagKey.BEST_RUN_ID]


@pytest.mark.slow
def test_the_same_command_resumes_into_the_same_parent(
    tmp_path: Path, tiny_splits: Splits, stores: tuple[str, str]
) -> None:
    uri, storage = stores
    spec = write_experiment(tmp_path, EXPERIMENT.replace("sampler: grid", "sampler: random"))
    sweep(spec, tiny_splits, uri, storage, trials=2)
    sweep(spec, tiny_splits, uri, storage, trials=4)
    tracker = Tracker(uri)
    parents = tracker.search("tiny", Query.of(role=Role.SWEEP))
    assert len(parents) == 1
    study = optuna.load_study(study_name="tiny", storage=storage)
    finished = [
        t
        for t in study.trials
        if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    ]
    assert len(finished) == 4
    assert len(children_of(tracker, parents[0].info.run_id)) == len(study.trials)


@pytest.mark.slow
def test_ctrl_c_fails_the_trial_closes_its_run_and_the_study_resumes(
    tmp_path: Path, tiny_splits: Splits, stores: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    uri, storage = stores
    spec = write_experiment(tmp_path, EXPERIMENT.replace("sampler: grid", "sampler: random"))
    real = runner.train_and_validate
    raise_on_call(monkeypatch, 2, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        sweep(spec, tiny_splits, uri, storage, trials=3)
    tracker = Tracker(uri)
    [parent] = tracker.search("tiny", Query.of(role=Role.SWEEP))
    assert parent.info.status == "KILLED"
    statuses = [c.info.status for c in children_of(tracker, parent.info.run_id)]
    assert "RUNNING" not in statuses and "KILLED" in statuses
    monkeypatch.setattr(runner, "train_and_validate", real)
    sweep(spec, tiny_splits, uri, storage, trials=3)
    study = optuna.load_study(study_name="tiny", storage=storage)
    finished = [t for t in study.trials if t.state != optuna.trial.TrialState.FAIL]
    assert len(finished) == 3  # the budget is exact: the interrupted trial was retried, once
    runs = tracker.search("tiny", Query())
    assert all(r.info.status != "RUNNING" for r in runs)
    assert len(tracker.search("tiny", Query.of(role=Role.SWEEP))) == 1


@pytest.mark.slow
def test_repeated_failures_stop_the_sweep_with_one_line(
    tmp_path: Path, tiny_splits: Splits, stores: tuple[str, str]
) -> None:
    uri, storage = stores
    broken = EXPERIMENT.replace("max_consecutive_failures: 20", "max_consecutive_failures: 2")
    spec = write_experiment(tmp_path, broken.replace("values: [1, 4]", "values: [4, 5]"))
    with pytest.raises(optuna_engine.SweepError) as caught:
        sweep(spec, tiny_splits, uri, storage)
    assert str(caught.value).startswith("2 trials failed in a row; the last: impossible config")
    tracker = Tracker(uri)
    [parent] = tracker.search("tiny", Query.of(role=Role.SWEEP))
    assert parent.info.status == "FAILED"
    assert all(r.info.status != "RUNNING" for r in tracker.search("tiny", Query()))


@pytest.mark.slow
def test_an_exception_in_one_trial_fails_it_and_the_sweep_goes_on(
    tmp_path: Path, tiny_splits: Splits, stores: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    uri, storage = stores
    spec = write_experiment(tmp_path, EXPERIMENT.replace("sampler: grid", "sampler: random"))
    raise_on_call(monkeypatch, 1, RuntimeError("CUDA_ERROR_ILLEGAL_ADDRESS\nmore detail"))
    sweep(spec, tiny_splits, uri, storage, trials=2)
    tracker = Tracker(uri)
    reasons = [r.data.tags.get(TagKey.FAILURE_REASON) for r in tracker.search("tiny", Query())]
    assert "RuntimeError: CUDA_ERROR_ILLEGAL_ADDRESS" in reasons
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert len([t for t in study.trials if t.state != optuna.trial.TrialState.FAIL]) == 2


@pytest.mark.slow
def test_a_missing_pruning_metric_stops_the_sweep_instead_of_never_pruning(
    tmp_path: Path, tiny_splits: Splits, stores: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    uri, storage = stores
    spec = write_experiment(tmp_path, EXPERIMENT.replace("sampler: grid", "sampler: random"))
    monkeypatch.setattr(optuna_engine, "MONITOR", "val_acc")  # the classic typo (optuna #1936)
    with pytest.raises(optuna_engine.PruningMetricMissing, match="pruning monitors 'val_acc' but"):
        sweep(spec, tiny_splits, uri, storage, trials=2)
    assert all(r.info.status != "RUNNING" for r in Tracker(uri).search("tiny", Query()))


def test_time_to_beat_the_baseline_counts_earlier_trials_and_the_beating_epoch(
    tmp_path: Path, tiny_splits: Splits
) -> None:
    from tunelab.engines.sweep import BaselineBar, SweepTracker
    from tunelab.training.progress import SweepProgress

    spec = write_experiment(tmp_path)
    sweep_tracker = SweepTracker(
        Tracker(f"sqlite:///{tmp_path / 'm.db'}"),
        spec,
        "tiny",
        "optuna",
        BaselineBar(run_id="b", val_accuracy=0.9, test_accuracy=None),
    )
    beats: list[tuple[int, float]] = []
    with sweep_tracker.parent(tiny_splits):
        for number, accuracies in enumerate(([0.5, 0.8], [0.85, 0.95, 0.97])):
            with sweep_tracker.trial(number, {"learning_rate": 0.01}, seed=number) as run:
                sink = sweep_tracker.epoch_sink(
                    run, SweepProgress(show=False), lambda e, s: beats.append((e, s))
                )
                for epoch, accuracy in enumerate(accuracies, start=1):
                    sink(epoch, {"val_accuracy": accuracy, "epoch_seconds": 10.0})
                run.log_metrics(
                    {
                        MetricName.WALL_SECONDS: 10.0 * len(accuracies),
                        MetricName.EPOCHS_TRAINED: len(accuracies),
                    }
                )
        assert beats == [(2, 20.0)]  # once, at the first epoch past 0.9
        beat = sweep_tracker.time_to_beat_from_runs()
    assert beat == {"seconds": 20.0 + 20.0, "epochs": 2 + 2, "trial": 1.0}


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_workers_that_launch_together_never_draw_the_same_points(
    tmp_path: Path, sampler: str
) -> None:
    """Two workers open the study at the same moment (each with the sampler it launched with)
    and ask in turn, as the study lock orders them: no point is drawn twice, and the same study
    history gives the same suggestions again."""
    from tunelab.engines.optuna.engine import _ask, make_sampler
    from tunelab.engines.optuna.space import suggest

    space = "parameters:\n  learning_rate: {type: float, low: 0.0001, high: 0.01, log: true}\n"
    (tmp_path / "space.yaml").write_text(space + "fixed: {epochs: 1}\n")
    (tmp_path / "tiny.yaml").write_text(
        EXPERIMENT.replace(
            "sampler: grid, pruner: median, startup_trials: 1",
            f"sampler: {sampler}, pruner: none, startup_trials: 10",  # every draw a random one
        )
    )
    spec = load_experiment(tmp_path / "tiny.yaml")

    def draws(storage: str) -> list[float]:
        workers = [
            optuna.create_study(
                storage=storage, study_name="s", load_if_exists=True, sampler=make_sampler(spec)
            )
            for _ in range(2)
        ]
        points = []
        for step in range(6):
            trial = _ask(workers[step % 2], spec)
            points.append(float(suggest(spec.search_space, trial)["learning_rate"]))
            workers[step % 2].tell(trial, 0.5)
        return points

    first = draws(f"sqlite:///{tmp_path / 'a.db'}")
    assert len(set(first)) == 6  # before: each worker's first draw was the same point
    assert draws(f"sqlite:///{tmp_path / 'b.db'}") == first  # reproducible from the seed

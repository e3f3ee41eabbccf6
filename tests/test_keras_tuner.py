"""KerasTuner: the same search spaces as Optuna, the same MLflow record, resumable searches."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import keras_tuner as kt
import optuna
import pytest

from conftest import quiet_sweep
from tunelab.define.data import Splits
from tunelab.define.experiment import ExperimentSpec, load_experiment
from tunelab.define.space import SearchSpace, load_search_space
from tunelab.engines.kerastuner.space import chosen_values, declare
from tunelab.engines.optuna.space import distribution, suggest
from tunelab.record.names import Role, TagKey
from tunelab.record.query import Query
from tunelab.record.store import Tracker

ROOT = Path(__file__).resolve().parent.parent
SPACES = sorted((ROOT / "search_spaces").glob("*.yaml"))


def optuna_view(space: SearchSpace) -> dict[str, dict[str, Any]]:
    """What Optuna is asked for: every name that can be suggested, its distribution, conditions."""
    out = {}
    for parameter in space.parameters:
        dist = distribution(parameter)
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            shape = {"kind": "categorical", "values": list(dist.choices)}
        else:
            kind = "int" if isinstance(dist, optuna.distributions.IntDistribution) else "float"
            step = None if dist.log else dist.step
            shape = {
                "kind": kind,
                "low": dist.low,
                "high": dist.high,
                "step": step,
                "log": dist.log,
            }
        chain, current = [], parameter
        by_name = {p.name: p for p in space.parameters}
        while current.condition is not None:
            chain.append((current.condition.parent, list(current.condition.values)))
            current = by_name[current.condition.parent]
        out[parameter.name] = {**shape, "conditions": sorted(chain)}
    return out


def keras_tuner_view(hp: kt.HyperParameters) -> dict[str, dict[str, Any]]:
    out = {}
    for item in hp.space:
        config = item.get_config()
        conditions = sorted((c.name, list(c.values)) for c in item.conditions)
        if isinstance(item, kt.engine.hyperparameters.Choice):
            shape = {"kind": "categorical", "values": config["values"]}
        else:
            kind = "int" if isinstance(item, kt.engine.hyperparameters.Int) else "float"
            shape = {
                "kind": kind,
                "low": config["min_value"],
                "high": config["max_value"],
                "step": config["step"],
                "log": config["sampling"] == "log",
            }
            if kind == "int" and not shape["log"] and shape["step"] is None:
                shape["step"] = 1
        out[item.name] = {**shape, "conditions": conditions}
    return out


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_both_translators_declare_identical_names_types_bounds_and_conditions(path: Path) -> None:
    space = load_search_space(path)
    assert keras_tuner_view(declare(space)) == optuna_view(space)


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_a_keras_tuner_sample_is_a_point_optuna_could_suggest(path: Path) -> None:
    space = load_search_space(path)
    hp = declare(space)
    for seed in range(5):
        oracle = kt.oracles.RandomSearchOracle(
            objective="val_accuracy",
            max_trials=1,
            seed=seed,
            hyperparameters=hp,
            allow_new_entries=False,
            tune_new_entries=False,
        )
        sampled = hp.copy()
        sampled.values = oracle.populate_space("0")["values"]
        active = chosen_values(space, sampled)
        assert active and all(sampled.is_active(name) for name in active)
        assert suggest(space, optuna.trial.FixedTrial(active)) == active


def test_an_undeclared_name_is_an_error_not_a_silent_default() -> None:
    space = load_search_space(ROOT / "search_spaces" / "mnist_small.yaml")
    oracle = kt.oracles.RandomSearchOracle(
        objective="val_accuracy",
        max_trials=1,
        hyperparameters=declare(space),
        allow_new_entries=False,
        tune_new_entries=False,
    )
    oracle.update_space(declare(space))  # the declared space itself is accepted
    grown = declare(space)
    grown.Int("dense_width", 8, 64)  # a name a model might ask for that the space lacks
    with pytest.raises(RuntimeError, match="allow_new_entries"):
        oracle.update_space(grown)


SPACE = """
parameters:
  learning_rate: {type: float, low: 0.001, high: 0.004}
  conv_blocks: {type: categorical, values: [1, 4]}
fixed: {optimizer: adam, filters: 8, dense_units: 16, epochs: 3, batch_size: 128}
"""
EXPERIMENT = """
name: kt
search_space: space.yaml
engine: {name: kerastuner, tuner: TUNER}
budget: {trials: TRIALS, max_epochs: 3, max_consecutive_failures: 20}
seed: 1
"""


def experiment(folder: Path, tuner: str, trials: int, space: str = SPACE) -> ExperimentSpec:
    (folder / "space.yaml").write_text(textwrap.dedent(space))
    text = EXPERIMENT.replace("TUNER", tuner).replace("TRIALS", str(trials))
    (folder / "kt.yaml").write_text(textwrap.dedent(text))
    return load_experiment(folder / "kt.yaml")


def search(spec: ExperimentSpec, splits: Splits, folder: Path, **kwargs: Any) -> str:
    return quiet_sweep(
        spec,
        splits,
        tracking_uri=f"sqlite:///{folder / 'mlflow.db'}",
        state_dir=folder / "keras_tuner",
        **kwargs,
    )


@pytest.mark.slow
def test_hyperband_rounds_are_child_runs_that_continue_earlier_rounds(
    tmp_path: Path, tiny_splits: Splits
) -> None:
    spec = experiment(tmp_path, "hyperband", 20, SPACE.replace("values: [1, 4]", "values: [1]"))
    search(spec, tiny_splits, tmp_path)
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [parent] = tracker.search("kt", Query.of(role=Role.SWEEP))
    assert parent.info.status == "FINISHED" and parent.data.tags[TagKey.ENGINE] == "kerastuner"
    children = tracker.search("kt", Query.of(parent=parent.info.run_id))
    assert children and all(c.info.status == "FINISHED" for c in children)
    assert {c.data.params["tuner/epochs"] for c in children} >= {"1", "3"}
    continued = [c for c in children if TagKey.CONTINUES_TRIAL in c.data.tags]
    assert continued  # a promoted configuration continues from its earlier round's weights
    for child in continued:  # ...and trains only its extra epochs, numbered on
        history = tracker.client.get_metric_history(child.info.run_id, "val_accuracy")
        assert min(m.step for m in history) == int(child.data.params["tuner/initial_epoch"]) + 1
    assert parent.data.metrics["trials_complete"] == len(children)
    assert parent.data.tags[TagKey.BEST_RUN_ID] in {c.info.run_id for c in children}
    # the reported model comes back: a continued round is replayed as the tuner ran it
    from tunelab.record.recorded import load_recorded_run
    from tunelab.training.retrain import reproduce

    original = load_recorded_run(tracker, continued[-1].info.run_id)
    again = reproduce(tracker, original, tiny_splits)
    assert again.best_val_accuracy == pytest.approx(original.best_val_accuracy, abs=1 / 500)
    recorded = tracker.client.get_metric_history(original.run_id, "val_accuracy")
    replayed = tracker.client.get_metric_history(again.run_id, "val_accuracy")
    assert sorted(m.step for m in replayed) == sorted(m.step for m in recorded)
    # compare reads the same record for either engine
    from tunelab.analysis.compare import comparison_table
    from tunelab.record.recorded import find_sweep

    table = comparison_table(tracker, find_sweep(tracker, "kt"), top=3)
    assert len(table) == 3 and set(table["engine"]) == {"kerastuner"}
    assert table["best val"].tolist() == sorted(table["best val"], reverse=True)


@pytest.mark.slow
def test_failed_trials_are_recorded_like_optuna_and_the_search_goes_on(
    tmp_path: Path, tiny_splits: Splits
) -> None:
    spec = experiment(tmp_path, "random", 3)
    search(spec, tiny_splits, tmp_path)
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [parent] = tracker.search("kt", Query.of(role=Role.SWEEP))
    children = tracker.search("kt", Query.of(parent=parent.info.run_id))
    failed = [c for c in children if c.data.tags[TagKey.TRIAL_STATE] == "failed"]
    complete = [c for c in children if c.data.tags[TagKey.TRIAL_STATE] == "complete"]
    assert failed and len(complete) == 3
    assert all(c.info.status == "FAILED" for c in failed)
    assert all(c.data.tags[TagKey.FAILURE_REASON].startswith("impossible config") for c in failed)
    assert parent.data.metrics["trials_failed"] == len(failed)


@pytest.mark.slow
def test_random_search_resumes_with_the_same_command(tmp_path: Path, tiny_splits: Splits) -> None:
    continuous = SPACE.replace(
        "categorical, values: [0.003, 0.002]", "float, low: 0.001, high: 0.004"
    )
    continuous = continuous.replace("values: [1, 4]", "values: [1]")
    spec = experiment(tmp_path, "random", 2, continuous)
    search(spec, tiny_splits, tmp_path)
    spec = experiment(tmp_path, "random", 3, continuous)
    search(spec, tiny_splits, tmp_path)
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parents = tracker.search("kt", Query.of(role=Role.SWEEP))
    assert len(parents) == 1
    children = tracker.search("kt", Query.of(parent=parents[0].info.run_id))
    complete = [c for c in children if c.data.tags[TagKey.TRIAL_STATE] == "complete"]
    assert len(complete) == 3
    numbers = [int(c.data.tags[TagKey.TRIAL_NUMBER]) for c in children]
    assert len(numbers) == len(set(numbers))  # no trial run twice


@pytest.mark.slow
def test_ctrl_c_closes_the_trial_run_and_the_same_command_resumes(
    tmp_path: Path, tiny_splits: Splits, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tunelab.engines import runner as keras_tuner_engine  # the runner trains every trial

    spec = experiment(tmp_path, "random", 2, SPACE.replace("values: [1, 4]", "values: [1]"))
    real = keras_tuner_engine.train_and_validate
    calls = {"n": 0}

    def interrupted_second_time(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(keras_tuner_engine, "train_and_validate", interrupted_second_time)
    with pytest.raises(KeyboardInterrupt):
        search(spec, tiny_splits, tmp_path)
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [parent] = tracker.search("kt", Query.of(role=Role.SWEEP))
    assert parent.info.status == "KILLED"
    trials = tracker.search("kt", Query.of(role=Role.TRIAL))
    killed = [r for r in trials if r.info.status == "KILLED"]
    assert any(r.data.tags.get(TagKey.FAILURE_REASON, "").startswith("interrupted") for r in killed)
    monkeypatch.setattr(keras_tuner_engine, "train_and_validate", real)
    search(spec, tiny_splits, tmp_path)
    runs = tracker.search("kt", Query())
    assert all(r.info.status != "RUNNING" for r in runs)
    complete = [r for r in runs if r.data.tags.get(TagKey.TRIAL_STATE) == "complete"]
    assert len(complete) == 2
    assert len(tracker.search("kt", Query.of(role=Role.SWEEP))) == 1

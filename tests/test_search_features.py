"""Search that spends its time well: data-size rungs, known-good points first, warm starts."""

from __future__ import annotations

import textwrap
from pathlib import Path

import optuna
import pytest

from conftest import quiet_sweep
from tunelab.define.data import Splits
from tunelab.define.experiment import load_experiment
from tunelab.define.files import ConfigError
from tunelab.record.names import MetricName, Role, TagKey
from tunelab.record.query import Query
from tunelab.record.store import Tracker
from tunelab.training.inputs import pass_order, plan_steps

SPACE = """
parameters:
  learning_rate: {type: float, low: 0.0005, high: 0.01, log: true}
  filters: {type: categorical, values: [4, 8]}
fixed: {optimizer: adam, dense_units: 16, epochs: 3, batch_size: 100}
"""
EXPERIMENT = """
name: rungs
search_space: space.yaml
engine: {name: optuna, sampler: tpe, pruner: successive_halving, startup_trials: 2,
         min_images: 300, reduction_factor: 3}
budget: {trials: 3}
seed: 4
enqueue:
  - {learning_rate: 0.003, filters: 8}
  - {learning_rate: 0.001, filters: 4}
"""


def write(folder: Path, experiment: str = EXPERIMENT, name: str = "rungs.yaml") -> Path:
    (folder / "space.yaml").write_text(textwrap.dedent(SPACE))
    (folder / name).write_text(textwrap.dedent(experiment))
    return folder / name


def test_rungs_cut_the_first_epoch_then_every_epoch_is_a_step() -> None:
    plan = plan_steps(50_000, 128, 3, min_images=5_000, reduction_factor=3)
    assert [s.report_images for s in plan.steps] == [5_000, 15_000, 50_000, 100_000, 150_000]
    assert [s.images_seen for s in plan.steps] == [5_120, 15_104, 50_000, 100_000, 150_000]
    assert plan.steps_for_epochs(1) == 3 and plan.images == 150_000
    # without data-size fidelity a step is an epoch, as it always was
    plain = plan_steps(50_000, 128, 3)
    assert [s.report_images for s in plain.steps] == [50_000, 100_000, 150_000]
    # a batch size that does not divide the rung reports the nominal images (trials align)
    odd = plan_steps(50_000, 96, 2, min_images=5_000)
    assert odd.steps[0].report_images == 5_000 and odd.steps[0].images_seen == 5_088


def test_the_data_order_is_a_function_of_seed_and_position() -> None:
    assert (pass_order(3, 1, 100) == pass_order(3, 1, 100)).all()
    assert not (pass_order(3, 1, 100) == pass_order(3, 2, 100)).all()  # another pass
    assert not (pass_order(3, 1, 100) == pass_order(4, 1, 100)).all()  # another seed
    assert sorted(pass_order(3, 1, 100)) == list(range(100))


@pytest.mark.slow
def test_enqueued_points_run_first_and_pruning_reports_images_seen(
    tmp_path: Path, tiny_splits: Splits
) -> None:
    spec = load_experiment(write(tmp_path))
    uri, storage = f"sqlite:///{tmp_path / 'm.db'}", f"sqlite:///{tmp_path / 'o.db'}"
    quiet_sweep(spec, tiny_splits, tracking_uri=uri, storage_url=storage)
    study = optuna.load_study(study_name="rungs", storage=storage)
    assert study.trials[0].params == {"learning_rate": 0.003, "filters": 8}
    assert study.trials[1].params == {"learning_rate": 0.001, "filters": 4}
    # 2,500 training images, batch 100: rungs at 300 (3 batches) and 900 images, then epochs
    assert sorted(study.trials[0].intermediate_values) == [300, 900, 2_500, 5_000, 7_500]
    tracker = Tracker(uri)
    run = tracker.get_run(study.trials[0].user_attrs["mlflow_run_id"])
    assert run.data.metrics[MetricName.EPOCHS_TRAINED] == 5  # five validation steps
    seen = tracker.metric_steps(run.info.run_id, MetricName.IMAGES_SEEN)
    assert [value for _, value in seen] == [300, 900, 2_500, 5_000, 7_500]
    assert run.data.metrics[MetricName.IMAGES_PER_SECOND] > 0


def test_an_enqueued_point_outside_the_space_is_refused_before_anything_runs(
    tmp_path: Path,
) -> None:
    bad = EXPERIMENT.replace("learning_rate: 0.001, filters: 4", "learning_rate: 0.5, filters: 4")
    with pytest.raises(ConfigError, match=r"enqueue\[1\]: learning_rate=0.5 is outside"):
        load_experiment(write(tmp_path, bad))
    missing = EXPERIMENT.replace("{learning_rate: 0.001, filters: 4}", "{filters: 4}")
    with pytest.raises(ConfigError, match=r"enqueue\[1\]: learning_rate is active here"):
        load_experiment(write(tmp_path, missing))


@pytest.mark.slow
def test_warm_start_gives_the_sampler_an_earlier_studys_fitting_trials(
    tmp_path: Path, tiny_splits: Splits
) -> None:
    uri, storage = f"sqlite:///{tmp_path / 'm.db'}", f"sqlite:///{tmp_path / 'o.db'}"
    first = load_experiment(write(tmp_path, EXPERIMENT.replace("trials: 3", "trials: 2")))
    quiet_sweep(first, tiny_splits, tracking_uri=uri, storage_url=storage)
    second_text = EXPERIMENT.replace("name: rungs", "name: later").replace("trials: 3", "trials: 1")
    second_text = second_text.split("enqueue:")[0]  # (enqueued points would be numbered first)
    second = load_experiment(write(tmp_path, second_text, "later.yaml"))
    result = quiet_sweep(
        second, tiny_splits, tracking_uri=uri, storage_url=storage, warm_start_from="rungs"
    )
    study = optuna.load_study(study_name="later", storage=storage)
    copies = [t for t in study.trials if t.user_attrs.get("warm_start_from") == "rungs"]
    source = optuna.load_study(study_name="rungs", storage=storage)
    finished = [t for t in source.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(copies) == len(finished) >= 1
    # what the sampler learns from: each copy carries its source's point and score
    assert [(c.params, c.value) for c in copies] == [(t.params, t.value) for t in finished]
    assert [c.number for c in copies] == list(range(len(copies)))  # before any suggestion
    # the copies use no trial budget and have no MLflow run of this sweep
    assert result.counts["complete"] + result.counts["pruned"] == 1
    runs = Tracker(uri).search("later", Query.of(role=Role.TRIAL))
    assert len(runs) == 1 and runs[0].data.tags[TagKey.TRIAL_NUMBER] == str(len(copies))
    # a second launch does not add them again
    quiet_sweep(
        second,
        tiny_splits,
        tracking_uri=uri,
        storage_url=storage,
        warm_start_from="rungs",
        trials=2,
    )
    study = optuna.load_study(study_name="later", storage=storage)
    assert len([t for t in study.trials if "warm_start_from" in t.user_attrs]) == len(copies)

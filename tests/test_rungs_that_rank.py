"""Rungs that rank: batch-norm statistics settled before a validation is read, and rank
agreement between rungs and ends measured on a known ranking, on a sweep, and by the pruner."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import keras
import numpy as np
import optuna
import pytest

from conftest import quiet_sweep
from tunelab.define.data import Splits
from tunelab.define.experiment import load_experiment
from tunelab.engines.agreement import FINAL, TOO_FEW, agreement, rung_agreements
from tunelab.engines.optuna.study import CheckedPruner
from tunelab.record.names import Artifact, Role
from tunelab.record.query import Query
from tunelab.record.store import Tracker
from tunelab.training.batch_norm import batch_norm_layers, recompute_batch_norm


def batch_norm_model() -> keras.Model:
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, use_bias=False)(inputs)
    x = keras.layers.BatchNormalization(momentum=0.99)(x)
    x = keras.layers.Activation("relu")(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))


def test_recomputing_batch_norm_changes_its_statistics_and_nothing_else() -> None:
    model = batch_norm_model()
    images = np.random.default_rng(0).uniform(0, 255, (600, 8, 8, 1)).astype("float32")
    [layer] = batch_norm_layers(model)
    before = {v.path: np.array(v) for v in model.variables}
    assert recompute_batch_norm(model, images, batch=200) == 1
    after = {v.path: np.array(v) for v in model.variables}
    changed = {path for path in before if not np.array_equal(before[path], after[path])}
    assert changed == {layer.moving_mean.path, layer.moving_variance.path}
    # the moving statistics are now the average of the three batches' statistics
    features = keras.Model(model.input, layer.input)
    batches = [np.asarray(features(images[i : i + 200])) for i in range(0, 600, 200)]
    mean = np.mean([b.mean(axis=(0, 1, 2)) for b in batches], axis=0)
    np.testing.assert_allclose(np.asarray(layer.moving_mean), mean, rtol=1e-4, atol=1e-4)
    assert layer.momentum == 0.99  # its own momentum again, for the training that goes on


def test_a_model_without_batch_norm_is_left_alone() -> None:
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))
    assert recompute_batch_norm(model, np.zeros((10, 4))) == 0


@pytest.mark.slow
def test_a_training_that_never_validates_ends_with_settled_batch_norm(tiny_splits: Splits) -> None:
    """A refit validates nothing, so no validation settles its statistics: the training does
    at its end (they are then what recomputing from the training images gives)."""
    from conftest import flat_config
    from tunelab.training.batch_norm import IMAGES
    from tunelab.training.train import train_and_validate

    cfg = flat_config(
        optimizer="adam", filters=8, dense_units=16, epochs=1, batch_size=128, batch_norm=True
    )
    refit = tiny_splits.for_refit()
    model = train_and_validate(cfg, refit, seed=0).model
    layers = batch_norm_layers(model)
    assert layers
    trained = [np.array(layer.moving_variance) for layer in layers]
    recompute_batch_norm(model, refit.train.x[:IMAGES])
    for layer, variance in zip(layers, trained, strict=True):
        np.testing.assert_allclose(np.asarray(layer.moving_variance), variance, rtol=1e-3)


def test_rank_agreement_on_known_rankings() -> None:
    same = [(float(i), float(i) + 0.5) for i in range(10)]
    alike = agreement("rung 1", FINAL, same)
    assert alike.spearman == pytest.approx(1.0) and alike.kendall == pytest.approx(1.0)
    assert alike.significant and alike.spearman_p is not None and alike.spearman_p < 1e-6
    reversed_order = agreement("rung 1", FINAL, [(a, -b) for a, b in same])
    assert reversed_order.spearman == pytest.approx(-1.0) and not reversed_order.significant
    few = agreement("rung 1", FINAL, same[: TOO_FEW - 1])
    assert few.too_few and not few.significant and "too few to tell" in few.line()
    ties = agreement("rung 1", FINAL, [(0.1, float(i)) for i in range(10)])
    assert ties.spearman is None and not ties.significant  # chance level everywhere: no order


def test_rung_agreements_pair_each_rung_with_the_next_the_end_and_the_confirmations() -> None:
    curves = {t: [0.1 * t, 0.2 * t, 0.3 * t] for t in range(1, 11)}  # complete: ranked alike
    curves.update({t: [0.05 * t] for t in range(11, 14)})  # pruned after one rung
    finals = {t: 0.3 * t for t in range(1, 11)}
    found = {(a.first, a.second): a for a in rung_agreements(curves, finals, {1: 0.3, 2: 0.6})}
    assert found[("rung 1", "rung 2")].n == 10
    assert found[("rung 1", FINAL)].n == 10 and found[("rung 1", FINAL)].significant
    assert ("rung 3", FINAL) not in found  # the last step of a complete trial is its end
    assert found[(FINAL, "confirmed")].too_few


def test_the_checked_pruner_prunes_only_at_a_rung_that_ranks() -> None:
    always = optuna.pruners.ThresholdPruner(lower=1.0)  # would prune everything
    study = optuna.create_study(direction="maximize", pruner=CheckedPruner(always))
    values = np.random.default_rng(1).permutation(10) / 10
    for score, final in zip(values, np.random.default_rng(2).permutation(10) / 10, strict=True):
        study.add_trial(
            optuna.trial.create_trial(value=float(final), intermediate_values={1000: float(score)})
        )
    trial = study.ask()
    trial.report(0.5, step=1000)
    assert not trial.should_prune()  # the rung's scores do not predict the ends: no pruning
    ordered = optuna.create_study(direction="maximize", pruner=CheckedPruner(always))
    for score in range(10):
        ordered.add_trial(
            optuna.trial.create_trial(value=score / 10, intermediate_values={1000: score / 20})
        )
    trial = ordered.ask()
    trial.report(0.5, step=1000)
    assert trial.should_prune()  # measured to rank: the pruner decides


SPACE = """
parameters:
  learning_rate: {type: categorical, values: [0.003, 0.001, 0.0003]}
fixed: {optimizer: adam, filters: 8, dense_units: 16, epochs: 1, batch_size: 128,
        batch_norm: true, conv_bias: false}
"""
EXPERIMENT = """
name: rungs
search_space: space.yaml
engine: {name: optuna, sampler: grid, pruner: none, min_images: 500}
budget: {trials: 3}
seed: 0
"""


@pytest.mark.slow
def test_every_sweep_records_its_rank_agreement(tmp_path: Path, tiny_splits: Splits) -> None:
    (tmp_path / "space.yaml").write_text(textwrap.dedent(SPACE))
    (tmp_path / "rungs.yaml").write_text(textwrap.dedent(EXPERIMENT))
    uri, storage = f"sqlite:///{tmp_path / 'm.db'}", f"sqlite:///{tmp_path / 'o.db'}"
    quiet_sweep(
        load_experiment(tmp_path / "rungs.yaml"), tiny_splits, tracking_uri=uri, storage_url=storage
    )
    tracker = Tracker(uri)
    [parent] = tracker.search("rungs", Query.of(role=Role.SWEEP))
    path = tracker.download_artifact(parent.info.run_id, Artifact.RANK_AGREEMENT, tmp_path)
    assert path is not None
    found = json.loads(path.read_text())
    pairs = {(item["first"].split(" (")[0], item["second"].split(" (")[0]) for item in found}
    assert ("rung 1", "rung 2") in pairs and ("rung 1", FINAL) in pairs
    assert all(item["n"] == 3 for item in found)  # three trials: too few to tell
    assert parent.data.metrics["rank_n__rung_1_512_images__end"] == 3.0

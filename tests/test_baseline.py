"""A tiny end-to-end baseline run (fixture, 1 epoch, temporary store) and what MLflow holds."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml

from tunelab.define.cnn import CnnConfig
from tunelab.define.data import Splits, published_accuracy
from tunelab.define.run_config import RunConfig
from tunelab.record.names import Artifact, MetricName, Role, TagKey
from tunelab.record.store import Tracker
from tunelab.training.baseline import baseline_config, is_reference, run_baseline


@pytest.fixture(scope="module")
def recorded(tiny_splits: Splits, tmp_path_factory: pytest.TempPathFactory) -> tuple[Tracker, str]:
    store = tmp_path_factory.mktemp("store")
    tracker = Tracker(f"sqlite:///{store / 'mlflow.db'}")
    outcome = run_baseline(tiny_splits, tracker, cfg=baseline_config(tiny_splits, 1), seed=1)
    assert outcome.test is not None
    return tracker, outcome.run_id


@pytest.mark.slow
def test_run_is_tagged_and_finished(recorded: tuple[Tracker, str], tiny_splits: Splits) -> None:
    tracker, run_id = recorded
    run = tracker.client.get_run(run_id)
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags[TagKey.ROLE] == Role.BASELINE
    assert tags[TagKey.REFERENCE] == "false"  # 1 epoch on the fixture is not the real baseline
    assert tags[TagKey.DATASET] == "mnist"
    assert tags[TagKey.DATASET_DIGEST] == tiny_splits.digest
    assert len(tags[TagKey.GIT_COMMIT]) in (40, 7) or tags[TagKey.GIT_COMMIT] == "unknown"
    for package in ("tensorflow", "keras", "mlflow", "numpy", "python"):
        assert tags[TagKey.VERSION_PREFIX + package]
    assert len(tags[TagKey.DATASET_DIGEST]) == 64  # the full SHA-256 in the tags ...
    [dataset_input] = run.inputs.dataset_inputs
    assert tiny_splits.digest.startswith(dataset_input.dataset.digest)  # ... MLflow's is 32
    assert dataset_input.dataset.name == "mnist"


@pytest.mark.slow
def test_params_and_per_epoch_metrics(recorded: tuple[Tracker, str]) -> None:
    tracker, run_id = recorded
    run = tracker.client.get_run(run_id)
    params = run.data.params
    assert params["data_validation_size"] == "500" and params["data_train_size"] == "2500"
    # the config once: config.json (exact) and under trial runs' names for the UI, not twice
    assert params["cfg.training.optimizer"] == "adadelta"
    assert params["cfg.training.epochs"] == "1" and params["cfg.model.filters"] == "32"
    assert "optimizer" not in params and "epochs" not in params
    text = tracker.client.download_artifacts(run_id, Artifact.CONFIG)
    config = RunConfig.read(Path(text).read_text())
    assert config.cnn() == CnnConfig() and config.training.epochs == 1
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "epoch_seconds", "full_train_loss"):
        history = tracker.client.get_metric_history(run_id, key)
        assert [m.step for m in history] == [1], key
    metrics = run.data.metrics
    assert metrics[MetricName.PARAM_COUNT] == 1_199_882
    assert 0.0 < metrics[MetricName.TEST_ACCURACY] <= 1.0
    assert metrics[MetricName.TEST_ACCURACY_VS_PUBLISHED] == pytest.approx(
        metrics[MetricName.TEST_ACCURACY] - (published_accuracy("mnist") or 0.0)
    )
    assert metrics[MetricName.BEST_VAL_ACCURACY] == metrics[MetricName.VAL_ACCURACY]


@pytest.mark.slow
def test_artifacts_include_plots_history_predictions_and_a_model_that_predicts(
    recorded: tuple[Tracker, str], tiny_splits: Splits, tmp_path: Path
) -> None:
    tracker, run_id = recorded
    listed = {a.path for a in tracker.client.list_artifacts(run_id)}
    assert {
        "history.csv",
        "learning_curves.png",
        "confusion_matrix.png",
        "model",
        "predictions",
    } <= listed
    local = Path(tracker.client.download_artifacts(run_id, "", str(tmp_path)))
    assert (local / "history.csv").read_text().splitlines()[0].startswith("epoch,")
    assert (local / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"
    predictions = np.load(local / Artifact.TEST_PREDICTIONS)
    assert predictions.shape == (1000,)
    mlmodel = yaml.safe_load((local / "model" / "MLmodel").read_text())
    assert "keras" in mlmodel["flavors"] and mlmodel["signature"]["inputs"]
    assert mlmodel["saved_input_example_info"]["artifact_path"]
    model = mlflow.pyfunc.load_model(str(local / "model"))
    probabilities = np.asarray(model.predict(tiny_splits.test.x.astype("float32")))
    np.testing.assert_array_equal(probabilities.argmax(axis=1), predictions)


@pytest.mark.slow
def test_only_the_seed_cnn_on_every_training_image_is_the_reference(
    recorded: tuple[Tracker, str], tiny_splits: Splits
) -> None:
    tracker, _ = recorded
    assert is_reference(baseline_config(tiny_splits), tiny_splits)  # every image of this data
    assert not is_reference(baseline_config(tiny_splits, 1), tiny_splits)  # fewer epochs
    subset = replace(
        tiny_splits,
        train=replace(tiny_splits.train, x=tiny_splits.train.x[:100], y=tiny_splits.train.y[:100]),
    )
    assert not is_reference(baseline_config(subset), subset)  # a training subset
    assert tracker.find_baseline(tiny_splits.digest) is None  # the partial run never is

"""The baseline as a first-class object: the classic Keras MNIST CNN, trained and recorded.

On any data the baseline is the same seed CNN, adapted to the data's image shape and classes
(`baseline_config`), trained as the classic example trains it (Adadelta 1.0, batch 128, 12
epochs). One MLflow run tagged role=baseline holds two trainings of it:

1. validation stage: trained on the training split (50,000 images by default) and validated on
   the held-out validation split after every epoch; its per-epoch `val_accuracy` is the bar that
   trials are measured against on validation (trials never see the test set).
2. test stage: trained exactly as the classic example, on all 60,000 training images, then
   evaluated once on the 10,000 test images; `test_accuracy` is compared with the published 99.25 %.

The run also stores the test-set predictions per image (for McNemar's test against later models),
the confusion matrix, learning curves and the test-stage model. It is a reference recorded once
per dataset (by its digest) and store, outside any sweep's budget. The published 99.25 % is
MNIST's alone: on other data the baseline is measured, never assumed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunelab.define.cnn import CnnConfig, check_fits
from tunelab.define.data import Splits, published_accuracy
from tunelab.define.run_config import RunConfig, cnn_run_config
from tunelab.define.training import ConfigFieldError, TrainingConfig
from tunelab.record.names import Artifact, MetricName, Role, TagKey
from tunelab.record.results import TestEvaluation, TrialResult
from tunelab.record.store import RunHandle, Tracker
from tunelab.training.callbacks import EpochSinkCallback
from tunelab.training.progress import ProgressFactory, no_progress
from tunelab.training.train import evaluate_test, train_and_validate

# per-epoch metrics of the test stage, prefixed so they do not mix with the validation stage's
FULL_TRAIN_PREFIX = "full_train_"


def baseline_experiment(dataset: str) -> str:
    """The MLflow experiment that holds a dataset's baseline runs."""
    return f"{dataset}-baseline"


@dataclass(frozen=True)
class BaselineOutcome:
    run_id: str
    validation: TrialResult
    full_train: TrialResult
    test: TestEvaluation | None
    reference: bool
    dataset: str = "mnist"


def baseline_config(splits: Splits, epochs: int | None = None) -> RunConfig:
    """The seed CNN on this data's shape and classes, trained as the classic example trains
    it (`epochs`: fewer for a quick look, which is then not the reference baseline). Images too
    small for its valid 3x3 convolutions keep their size with 'same' padding."""
    cnn = CnnConfig()
    try:
        check_fits(cnn, splits.input_shape, splits.num_classes)
    except ConfigFieldError:
        cnn = CnnConfig(padding="same")
        check_fits(cnn, splits.input_shape, splits.num_classes)
    training = TrainingConfig() if epochs is None else TrainingConfig(epochs=epochs)
    return cnn_run_config(cnn, training, splits.input_shape, splits.num_classes)


def is_reference(cfg: RunConfig, splits: Splits) -> bool:
    """True when this is the real baseline: the seed CNN as classically trained, on every
    training image of the data."""
    every = splits.description.get("train_total")
    images = len(splits.train) + len(splits.val)
    return cfg == baseline_config(splits) and (every is None or images == every)


def run_baseline(
    splits: Splits,
    tracker: Tracker,
    *,
    cfg: RunConfig | None = None,
    seed: int = 0,
    progress: ProgressFactory = no_progress,
    log_model: bool = True,
) -> BaselineOutcome:
    """Train and record the baseline (both stages) in one MLflow run tagged role=baseline.

    Args:
        splits: the data; the test split is evaluated once, by the test stage.
        tracker: where the run is recorded.
        cfg: the config to train; default the baseline. Anything else (fewer epochs, a training
            subset) is recorded as role=baseline but not as the reference baseline.
        seed: training seed of both stages.
        progress: makes a per-epoch progress display for a (title, epochs) pair.
        log_model: log the test-stage model in MLflow's Keras flavor.
    """
    cfg = cfg or baseline_config(splits)
    reference = is_reference(cfg, splits)
    tags = {
        TagKey.ROLE: Role.BASELINE,
        TagKey.REFERENCE: str(reference).lower(),
        TagKey.SEED: str(seed),
    }
    epochs = cfg.training.epochs
    run_name = f"baseline-{splits.dataset}-{epochs}ep" + ("" if reference else "-partial")
    with tracker.run(baseline_experiment(splits.dataset), run_name, tags=tags) as run:
        run.log_params(_split_params(splits))
        run.log_config(cfg)
        run.log_dataset(splits)
        with progress("baseline: validation stage", epochs) as show:
            validation = _train(cfg, splits, seed, run, show, prefix="")
        run.log_training(validation, title="baseline, validation stage")
        refit = splits.for_refit()
        with progress("baseline: all training images", epochs) as show:
            full = _train(cfg, refit, seed, run, show, prefix=FULL_TRAIN_PREFIX)
        test = None
        if full.ok:
            test = evaluate_test(full.model, splits)
            _log_test(run, test, splits, full, log_model=log_model)
        return BaselineOutcome(run.run_id, validation, full, test, reference, splits.dataset)


def _train(
    cfg: RunConfig, splits: Splits, seed: int, run: RunHandle, show: Any, *, prefix: str
) -> TrialResult:
    def log(epoch: int, logs: dict[str, float]) -> None:
        run.log_metrics({prefix + k: v for k, v in logs.items()}, step=epoch)
        show(epoch, logs)

    return train_and_validate(cfg, splits, callbacks=[EpochSinkCallback(log)], seed=seed)


def _log_test(
    run: RunHandle, test: TestEvaluation, splits: Splits, full: TrialResult, *, log_model: bool
) -> None:
    metrics = {
        MetricName.TEST_ACCURACY: test.accuracy,
        MetricName.TEST_LOSS: test.loss,
        MetricName.TEST_ERRORS: test.errors,
        FULL_TRAIN_PREFIX + MetricName.WALL_SECONDS: full.wall_seconds,
    }
    published = published_accuracy(splits.dataset)
    if published is not None:
        metrics[MetricName.TEST_ACCURACY_VS_PUBLISHED] = test.accuracy - published
    run.log_metrics(metrics)
    run.log_array(test.predictions, Artifact.TEST_PREDICTIONS)
    run.log_array(test.labels, Artifact.TEST_LABELS)
    run.log_confusion(
        test.labels, test.predictions, splits.class_names, title="baseline on the test set"
    )
    if log_model:
        run.log_keras_model(full.model, splits.test.x[:2].astype("float32"))


def _split_params(splits: Splits) -> dict[str, Any]:
    return {f"data_{k}": v for k, v in splits.description.items()} | {"dataset": splits.dataset}

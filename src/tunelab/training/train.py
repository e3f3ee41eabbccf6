"""The one training function every path uses (baseline, Optuna, KerasTuner, retraining, refit).

`train_and_validate` builds the model its run config names (any factory; or continues a
checkpoint in the model the factory builds again), trains it step by step on the deterministic
stream of `tunelab.training.inputs`, validates after every step (batch-norm statistics settled
first, `tunelab.training.batch_norm`), and returns a typed `TrialResult`: per-step history
(wall time, validation time, images per second, images seen, learning rate), best validation
accuracy, and a status: completed; failed with a reason (NaN/inf loss, memory exhausted); or
paused, when the next step could not finish before the deadline (its checkpoint holds the steps
done). It never reads the test split; `evaluate_test` does, and only the baseline and export
call it (architecture rule 1).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tunelab.define.data import Splits
from tunelab.define.run_config import RunConfig
from tunelab.record.results import COMPLETED, FAILED, PAUSED, TestEvaluation, TrialResult
from tunelab.training.averaging import WeightAverage
from tunelab.training.batch_norm import IMAGES as BATCH_NORM_IMAGES
from tunelab.training.batch_norm import PreciseBatchNorm, batch_norm_layers, recompute_batch_norm
from tunelab.training.callbacks import NonFiniteLossGuard, StepClock, StopWhenAsked
from tunelab.training.checkpoints import Checkpoint, CheckpointWriter
from tunelab.training.cost import training_flops
from tunelab.training.deadline import Deadline, StepTimer
from tunelab.training.factory import Factory, build_model
from tunelab.training.inputs import StepPlan, eval_dataset, plan_steps, step_dataset
from tunelab.training.model import steps_per_epoch
from tunelab.training.session import fresh_session
from tunelab.training.snapshots import SnapshotTaker


@dataclass(frozen=True)
class Fidelity:
    """Data-size fidelity: validate first after `min_images` images, then eta times as many..."""

    min_images: int | None = None
    reduction_factor: int = 3


def step_plan(cfg: RunConfig, train_size: int, fidelity: Fidelity | None = None) -> StepPlan:
    """The validation steps of training `cfg` on `train_size` images."""
    fidelity = fidelity or Fidelity()
    return plan_steps(
        train_size,
        cfg.training.batch_size,
        cfg.training.epochs,
        min_images=fidelity.min_images,
        reduction_factor=fidelity.reduction_factor,
    )


def train_and_validate(
    cfg: RunConfig,
    splits: Splits,
    callbacks: Sequence[Any] = (),
    seed: int = 0,
    *,
    epochs: int | None = None,
    initial_epoch: int = 0,
    initial_weights: str | None = None,
    resume: Checkpoint | None = None,
    fidelity: Fidelity | None = None,
    deadline: Deadline | None = None,
    flop_rate: float | None = None,
    checkpoint: CheckpointWriter | None = None,
    factory: Factory | None = None,
    verbose: int = 0,
) -> TrialResult:
    """Train `cfg` on splits.train, validating on splits.val after every step.

    Args:
        cfg: what to train: the factory, its parameters, the training settings, the data shape.
        splits: the data; its test split is never touched here. An empty validation split
            (`Splits.for_refit()`) trains on everything without validating.
        callbacks: Keras callbacks (tracking, pruning, progress); they receive per-step logs
            that include the clock's keys (see `StepClock`).
        seed: seeds Python, NumPy and TensorFlow, the data order and the augmentation.
        epochs: stop after this many epochs instead of cfg.epochs (Hyperband rounds); the
            learning-rate schedule still spans cfg.epochs.
        initial_epoch: epochs already trained elsewhere (a Hyperband round continuing another).
        initial_weights: a `.weights.h5` file to start from, instead of fresh initial weights.
        resume: a checkpoint to continue from (model with optimizer state, history, seconds).
        fidelity: validation steps inside the first epoch (data-size multi-fidelity).
        deadline: no step starts that cannot finish before it; the training is then paused.
        flop_rate: measured training FLOP/s of earlier trainings, for the first step's estimate.
        checkpoint: saves model and history after every step that is not the last.
        factory: the imported factory (default: imported from the config's name).
        verbose: Keras' own progress output (0: none; tunelab shows its own).

    Returns:
        A TrialResult; status "failed" with a reason for a NaN/inf loss or exhausted memory,
        "paused" when the deadline came first. Exceptions raised by callbacks propagate.
    """
    started = time.perf_counter()
    # counted before seeding: a first count builds the model, drawing random numbers
    timer = StepTimer(training_flops(cfg), len(splits.val), flop_rate)
    fresh_session()
    keras.utils.set_random_seed(seed)
    plan = step_plan(cfg, len(splits.train), fidelity)
    last = plan.steps_for_epochs(epochs) if epochs is not None else len(plan.steps)
    first = (resume.step if resume else plan.steps_for_epochs(initial_epoch)) + 1
    history = {k: list(v) for k, v in (resume.history if resume else {}).items()}
    earlier_seconds = resume.seconds if resume else 0.0
    guard = NonFiniteLossGuard()
    status, reason, model = COMPLETED, None, None
    snapshots: list[SnapshotTaker] = []
    try:
        model = build_model(
            cfg, steps_per_epoch(len(splits.train), cfg.training.batch_size), factory
        )
        if resume is not None:
            resume.restore(model)
        if initial_weights is not None:
            with warnings.catch_warnings():
                # the weights only: a round that continues another starts a fresh optimizer,
                # as KerasTuner's Hyperband does, so the saved optimizer state is not wanted
                warnings.filterwarnings("ignore", "Skipping variable loading for optimizer")
                model.load_weights(initial_weights)
        optimizer = getattr(model, "optimizer", None)
        if optimizer is not None and not optimizer.built:
            # its variables made now, not inside the first traced step: a step that creates
            # variables is traced twice by TensorFlow (a small CNN's first fit: 1.11
            # instead of 1.34 CPU-s, float32, 2 cores of an AMD EPYC Zen 4 with AVX-512 BF16)
            optimizer.build(model.trainable_variables)
        validation = eval_dataset(splits.val) if len(splits.val) else None
        # a validation a pruner or sampler reads sees settled batch-norm statistics
        settle = splits.train.x[:BATCH_NORM_IMAGES]
        precise = (
            [PreciseBatchNorm(settle)]
            if validation is not None and batch_norm_layers(model)
            else []
        )
        averaging = (
            [WeightAverage(cfg.training, settle)] if cfg.training.weight_averaging != "none" else []
        )
        snapshots = (
            [SnapshotTaker(cfg.training, plan.batches_per_epoch)]
            if cfg.training.snapshot_cycles > 1
            else []
        )
        for step in plan.steps[first - 1 : last]:
            images = step.images_seen - plan.images_before(step)
            if deadline is not None and timer.seconds_for(images) > deadline.remaining():
                status = PAUSED
                break
            clock = StepClock(images, step.images_seen)
            for average in averaging:
                ends = (
                    step.stop // plan.batches_per_epoch
                    if step.stop % plan.batches_per_epoch == 0
                    else None
                )
                average.begin_step(ends, last=step.number == last)
            fit = model.fit(
                step_dataset(splits.train, cfg.training, plan, step, seed),
                validation_data=validation,
                epochs=step.number,
                initial_epoch=step.number - 1,
                shuffle=False,  # the stream is already in its seeded order
                callbacks=[
                    StopWhenAsked(),
                    clock,
                    *snapshots,
                    *averaging,
                    *precise,
                    guard,
                    *callbacks,
                ],
                verbose=verbose,
            )
            for key, values in fit.history.items():
                history.setdefault(key, []).extend(float(v) for v in values)
            timer.observe(images, clock.train_seconds, clock.validation_seconds)
            if guard.reason is not None or model.stop_training:
                break
            if checkpoint is not None and step.number < last:
                checkpoint.save(
                    model, step.number, history, earlier_seconds + time.perf_counter() - started
                )
        if status == COMPLETED and validation is None and guard.reason is None:
            # a training that never validates (a refit) ends with settled statistics too: its
            # running averages lag the last steps' weights (measured: a two-epoch Fashion-MNIST
            # refit tested 57.4 % as trained, 85.3 % with recomputed statistics)
            recompute_batch_norm(model, settle)
    except tf.errors.ResourceExhaustedError as error:
        status, reason = FAILED, f"out of memory: {str(error).splitlines()[0][:200]}"
    if guard.reason is not None:
        status, reason = FAILED, guard.reason
    return TrialResult(
        config=cfg,
        status=status,
        history=history,
        param_count=int(model.count_params()) if model is not None else 0,
        wall_seconds=earlier_seconds + time.perf_counter() - started,
        seed=seed,
        failure_reason=reason,
        model=model,
        resumed_from_epoch=resume.step if resume else 0,
        measured_flop_rate=timer.measured_flop_rate(),
        snapshots=[weights for taker in snapshots for weights in taker.snapshots],
    )


def evaluate_test(model: Any, splits: Splits) -> TestEvaluation:
    """Evaluate on the test split. Only the baseline and export may call this (rule 1)."""
    dataset = eval_dataset(splits.test)
    probabilities = np.asarray(model.predict(dataset, verbose=0), dtype=np.float32)
    return score_test(probabilities, splits)


def score_test(probabilities: Any, splits: Splits) -> TestEvaluation:
    """Accuracy and loss of given test-set probabilities (a model's or an ensemble's)."""
    probabilities = np.asarray(probabilities, dtype=np.float32)
    labels = splits.test.y
    chosen = np.clip(probabilities[np.arange(len(labels)), labels.astype(np.int64)], 1e-7, 1.0)
    return TestEvaluation(
        accuracy=float(np.mean(np.argmax(probabilities, axis=1) == labels)),
        loss=float(-np.mean(np.log(chosen))),
        probabilities=probabilities,
        labels=labels,
    )

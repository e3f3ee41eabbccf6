"""Training data as a deterministic stream, cut into the steps at which a training is validated.

Pass p over the training images uses the permutation `default_rng([seed, p])`; batch b of the whole
training gets its augmentation from stateless random ops seeded with `(seed, b)`. What a training
sees is therefore a function of its seed and its position alone: a training continued from a
checkpoint at step k sees exactly the images, in the same order and with the same shifts, that
an uninterrupted one would have seen after step k.

A training is validated at *steps*. Normally a step is an epoch. With data-size fidelity
(`min_images`), the first epoch is cut at `min_images`, `eta * min_images`, ... so that a pruner
can judge a trial after a few thousand images; survivors go on to full epochs. Each step is one
Keras epoch (one `fit` call), so every callback and the history see steps as epochs.

Pixels stay uint8 until a batch is formed; augmentation (translation, rotation, zoom) is one
vectorised projective transform per batch, or an integer pad-and-crop when only translation is
asked for, then the optional left-right mirror and cutout. None of it is a layer of the model,
so exported models contain none of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import tensorflow as tf

from tunelab.define.data import Split
from tunelab.define.training import TrainingConfig

EVAL_BATCH = 512
# tf.data's autotuner is off, with fixed parallelism: on two cores and a cheap vectorised map it
# buys nothing, and in a long-lived process its model thread made destroying a step's iterator
# wait for up to ~40 s with the CPU idle (seen with py-spy in TF's ~LogicalThreadWrapper during
# the hour run's refit: 593 s lost over 28 epochs, docs/results.md)
PARALLEL_CALLS = 2
PREFETCH_BATCHES = 2
# a rung closer than this to the end of the first epoch is dropped (validating twice in a row
# for a handful of images buys no information)
LAST_RUNG_SHARE = 2 / 3


@dataclass(frozen=True)
class Step:
    """One validation step: batches [start, stop) of the whole training (0-based, global)."""

    number: int  # 1-based: the Keras epoch, the MLflow step
    start: int
    stop: int
    images_seen: int  # training images seen by the end of this step
    report_images: int  # the pruning step: nominal, so that every batch size reports alike


@dataclass(frozen=True)
class StepPlan:
    """All steps of one training: `epochs` passes over `train_size` images."""

    train_size: int
    batch_size: int
    epochs: int
    steps: tuple[Step, ...]

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.train_size / self.batch_size)

    @property
    def images(self) -> int:
        return self.epochs * self.train_size

    def step(self, number: int) -> Step:
        return self.steps[number - 1]

    def images_before(self, step: Step) -> int:
        """Training images seen before `step` starts."""
        return self.steps[step.number - 2].images_seen if step.number > 1 else 0

    def steps_for_epochs(self, epochs: int) -> int:
        """How many steps end by the end of epoch `epochs` (a continued Hyperband round)."""
        limit = epochs * self.batches_per_epoch
        return sum(step.stop <= limit for step in self.steps)


def plan_steps(
    train_size: int,
    batch_size: int,
    epochs: int,
    *,
    min_images: int | None = None,
    reduction_factor: int = 3,
) -> StepPlan:
    """Cut `epochs` passes into validation steps (rungs inside the first epoch if `min_images`)."""
    per_epoch = math.ceil(train_size / batch_size)
    cuts: list[tuple[int, int]] = []  # (batches, nominal images) at the end of each step
    if min_images is not None and min_images < train_size:
        nominal = min_images
        while math.ceil(nominal / batch_size) < LAST_RUNG_SHARE * per_epoch:
            cuts.append((math.ceil(nominal / batch_size), nominal))
            nominal *= reduction_factor
    cuts += [(per_epoch * epoch, train_size * epoch) for epoch in range(1, epochs + 1)]
    steps, start = [], 0
    for number, (stop, nominal) in enumerate(cuts, start=1):
        seen = _images_seen(stop, per_epoch, train_size, batch_size)
        steps.append(Step(number, start, stop, seen, nominal))
        start = stop
    return StepPlan(train_size, batch_size, epochs, tuple(steps))


def _images_seen(batches: int, per_epoch: int, train_size: int, batch_size: int) -> int:
    passes, rest = divmod(batches, per_epoch)
    return passes * train_size + min(rest * batch_size, train_size)


def pass_order(seed: int, number: int, size: int) -> npt.NDArray[np.int64]:
    """The order of images in pass `number` of a training with `seed`."""
    return np.random.default_rng([seed, number]).permutation(size)


def step_dataset(split: Split, cfg: TrainingConfig, plan: StepPlan, step: Step, seed: int) -> Any:
    """The batches of one step: gathered in stream order, augmented, float32 pixels 0..255."""
    per_epoch = plan.batches_per_epoch
    parts: list[Any] = []
    batch = step.start
    while batch < step.stop:
        number, first = divmod(batch, per_epoch)
        last = min(step.stop, (number + 1) * per_epoch)  # batches of this pass in the step
        order = pass_order(seed, number, len(split))
        chosen = order[first * plan.batch_size : min(last * plan.batch_size, len(split))]
        images = tf.data.Dataset.from_tensor_slices((split.x[chosen], split.y[chosen]))
        parts.append(images.batch(plan.batch_size))
        batch = last
    data = parts[0]
    for part in parts[1:]:
        data = data.concatenate(part)
    numbers = tf.data.Dataset.range(step.start, step.stop)
    data = tf.data.Dataset.zip((numbers, data))
    augment = Augmenter(cfg, split.x.shape[1:3], seed)
    data = data.map(augment, num_parallel_calls=PARALLEL_CALLS).prefetch(PREFETCH_BATCHES)
    return data.with_options(_fixed_threads())


def eval_dataset(split: Split) -> Any:
    """Validation or test images in order, float32 pixels 0..255, never augmented."""
    data = tf.data.Dataset.from_tensor_slices((split.x, split.y)).batch(EVAL_BATCH).cache()
    data = data.map(_plain, num_parallel_calls=PARALLEL_CALLS).prefetch(PREFETCH_BATCHES)
    return data.with_options(_fixed_threads())


def _fixed_threads() -> Any:
    """Options without the autotuner (see PARALLEL_CALLS); the stream's order is unchanged."""
    options = tf.data.Options()
    options.autotune.enabled = False
    options.deterministic = True
    return options


def _plain(x: Any, y: Any) -> tuple[Any, Any]:
    return tf.cast(x, tf.float32), y


class Augmenter:
    """Per batch: uint8 -> float32 and the config's random shifts, rotations, zooms, mirrors
    and cutouts.

    Translation alone is an integer pad-and-crop (the shift in pixels is the fraction times the
    side, rounded); with rotation or zoom, one bilinear projective transform does all three.
    Then each image is mirrored left to right with probability 1/2 (`augment_flip`), and a
    square of `augment_cutout` times the sides is set to 0 (black) around a centre drawn
    anywhere in the image, so it may hang over the border (DeVries and Taylor's cutout).
    Random numbers are stateless, seeded by (seed, global batch number): reproducible and
    resumable; the mirror and the cutout draw from streams of their own (folded from that
    seed), so turning them on leaves the shifts a training sees as they were.
    """

    def __init__(self, cfg: TrainingConfig, size: tuple[int, int], seed: int) -> None:
        self.height, self.width = int(size[0]), int(size[1])
        self.shift = (
            cfg.augment_translation * self.height,
            cfg.augment_translation * self.width,
        )
        self.rotation = math.radians(cfg.augment_rotation)
        self.zoom = cfg.augment_zoom
        self.flip = cfg.augment_flip
        self.cutout = (
            round(cfg.augment_cutout * self.height),
            round(cfg.augment_cutout * self.width),
        )
        self.seed = seed

    @property
    def active(self) -> bool:
        return bool(any(self.shift) or self.rotation or self.zoom or self.flip or any(self.cutout))

    def __call__(self, number: Any, batch: tuple[Any, Any]) -> tuple[Any, Any]:
        x, y = batch
        x = tf.cast(x, tf.float32)
        if not self.active:
            return x, y
        seed = tf.stack([tf.constant(self.seed, tf.int64), number])
        transform = self._transform if self.rotation or self.zoom else self._pad_and_crop
        x = transform(x, seed)
        if self.flip:
            x = self._mirror(x, tf.random.experimental.stateless_fold_in(seed, 1))
        if any(self.cutout):
            x = self._cut_out(x, tf.random.experimental.stateless_fold_in(seed, 2))
        return x, y

    def _mirror(self, x: Any, seed: Any) -> Any:
        heads = tf.random.stateless_uniform([tf.shape(x)[0], 1, 1, 1], seed=seed) < 0.5
        return tf.where(heads, tf.reverse(x, axis=[2]), x)

    def _cut_out(self, x: Any, seed: Any) -> Any:
        tall, wide = self.cutout
        centres = tf.random.stateless_uniform([tf.shape(x)[0], 2], seed=seed)
        top = tf.cast(centres[:, 0:1] * self.height, tf.int32) - tall // 2
        left = tf.cast(centres[:, 1:2] * self.width, tf.int32) - wide // 2
        rows, columns = tf.range(self.height)[tf.newaxis], tf.range(self.width)[tf.newaxis]
        in_rows = (rows >= top) & (rows < top + tall)  # [images, height]
        in_columns = (columns >= left) & (columns < left + wide)  # [images, width]
        square = in_rows[:, :, tf.newaxis, tf.newaxis] & in_columns[:, tf.newaxis, :, tf.newaxis]
        return tf.where(square, tf.zeros_like(x), x)

    def _pad_and_crop(self, x: Any, seed: Any) -> Any:
        down, across = round(self.shift[0]), round(self.shift[1])
        if down == 0 and across == 0:
            return x
        count = tf.shape(x)[0]
        padded = tf.pad(x, [[0, 0], [down, down], [across, across], [0, 0]])
        most = max(down, across)
        offsets = tf.random.stateless_uniform(
            [count, 2], seed=seed, minval=0, maxval=2 * most + 1, dtype=tf.int32
        )
        # a shorter side shifts by at most its own share: offsets re-centred and clipped
        row_offsets = tf.clip_by_value(offsets[:, 0:1] - most + down, 0, 2 * down)
        column_offsets = tf.clip_by_value(offsets[:, 1:2] - most + across, 0, 2 * across)
        rows = row_offsets + tf.range(self.height)[tf.newaxis]
        columns = column_offsets + tf.range(self.width)[tf.newaxis]
        cropped = tf.gather(padded, rows, axis=1, batch_dims=1)
        return tf.gather(cropped, columns, axis=2, batch_dims=1)

    def _transform(self, x: Any, seed: Any) -> Any:
        count = tf.shape(x)[0]
        draws = tf.random.stateless_uniform([count, 4], seed=seed, minval=-1.0, maxval=1.0)
        angle = draws[:, 0] * self.rotation
        scale = 1.0 + draws[:, 1] * self.zoom  # > 1 zooms in
        shift_x, shift_y = draws[:, 2] * self.shift[1], draws[:, 3] * self.shift[0]
        cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
        centre_x, centre_y = (self.width - 1) / 2.0, (self.height - 1) / 2.0
        # output pixel (x, y) reads input (a0 x + a1 y + a2, b0 x + b1 y + b2)
        a2 = centre_x - cos * centre_x + sin * centre_y - shift_x
        b2 = centre_y - sin * centre_x - cos * centre_y - shift_y
        zeros = tf.zeros_like(angle)
        transforms = tf.stack([cos, -sin, a2, sin, cos, b2, zeros, zeros], axis=1)
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=x,
            transforms=transforms,
            output_shape=[self.height, self.width],
            interpolation="BILINEAR",
            fill_mode="CONSTANT",
            fill_value=0.0,
        )

"""What a budget buys on this machine: the search's schedule, the refit's epochs, the least budget.

Every figure here starts from a measured speed: this machine's training FLOP per second in the
sweep's precision (`tunelab.engines.numerics`, a few timed steps at start-up) before a model has
trained, and a run's own wall seconds per image once it has. Nothing is planned from a fixed
guess of how fast two CPU cores are.

- `search_schedule`: when the search's share cannot complete one trial's full schedule, the
  longest complete shorter schedule that fits (0: not even one epoch; the search is skipped and
  the final stage trains the best-known configuration instead).
- `minimum_budget`: the least budget in which one epoch of the experiment's representative model
  on every training image, its test and its export fit; `tunelab run` refuses less up front.
- `final_epochs`: the refit's length, so that its fixed-length schedule ends before the deadline.
- `baseline_seconds`: how long recording the classic CNN takes here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from tunelab.define.run_config import RunConfig
from tunelab.engines.numerics import Numerics
from tunelab.training.cost import TRAINING_PASSES, forward_flops, parameters

STARTUP_SECONDS = 8.0  # building a model, tracing its functions, the first checkpoint
# an epoch in tunelab's loop costs this much more than the probe's bare training steps (the
# augmented stream, per-step checkpoints, the learning-rate schedule)
LOOP_OVERHEAD = 1.15
SEARCH_FIT = 0.85  # a search trial plans to fill at most this much of the search's share
# the refit's plan is stretched by this much over its measured training throughput, for the
# shared VM's swings within a run. The throughput a trial measured (`images_per_second`:
# augmentation, schedule and per-step overhead included, validation excluded) is an upper bound
# on a refit's: the cold start's 20-epoch refit and its export took 23.8 min, where 825 images/s
# predicted 24.2 for the training alone (docs/results.md); 1.15 on top of the loop's overhead
# left 10.6 of the hour's minutes unused. Should it still run late, the kept models are
# delivered instead.
FINAL_SAFETY = 1.06
REFIT_EPOCH_SECONDS = 2.0  # per refit epoch besides training: its checkpoint, the step change
MAX_FINAL_EPOCHS = 60
MEMBER_SCHEDULE_SHARE = 0.75  # kept models trained at least this share of the schedule are members
# seconds of export work per format, besides its test pass: writing and converting grows with
# the parameters written. Measured on a quiet machine (docs/results.md, budgets of 2026-11-29):
# the 327k-parameter recipe's test and four formats in 27 s, an ensemble of three in 60 s; the
# 20k-parameter digits network about 4 s a format. 3 s plus 8 us a parameter keeps about 1.7x
# that (an earlier 27 us, fitted on a loaded machine, reserved three times what was used)
EXPORT_SECONDS_PER_FORMAT = 3.0
EXPORT_SECONDS_PER_PARAMETER = 8e-6
EXPORT_FIXED_SECONDS = 10.0
BASELINE_EPOCHS = 12


def epoch_seconds(
    cfg: RunConfig, numerics: Numerics, train_images: int, validation_images: int
) -> float:
    """Estimated wall seconds of one epoch of `cfg` before it has measured itself."""
    per_image = numerics.seconds_per_image(cfg)
    validating = validation_images * per_image / TRAINING_PASSES
    return LOOP_OVERHEAD * (train_images * per_image + validating)


def longest_trial(cfg: RunConfig, screens: Sequence[int]) -> RunConfig:
    """The longest schedule a search trial of `cfg` trains: with `engine.screens`, the last
    screen's complete schedule (if shorter than `cfg`'s own)."""
    if screens and screens[-1] < cfg.training.epochs:
        return cfg.with_epochs(screens[-1])
    return cfg


def search_schedule(
    cfg: RunConfig, numerics: Numerics, train_images: int, validation_images: int, seconds: float
) -> int | None:
    """Epochs of the search's trials: None when the full schedule fits `seconds`, else the
    longest shorter one that does (0 when not even one epoch fits)."""
    epoch = epoch_seconds(cfg, numerics, train_images, validation_images)
    room = SEARCH_FIT * seconds - STARTUP_SECONDS
    if cfg.training.epochs * epoch <= room:
        return None
    return max(0, math.floor(room / epoch))


def export_seconds(
    cfg: RunConfig,
    formats: int,
    members: int,
    flop_rate: float,
    test_images: int,
    views: int = 1,
) -> float:
    """Time to reserve after the refit for testing and exporting (single and ensemble): per
    format a fixed cost plus one that grows with the parameters written (an ensemble writes all
    its members' at once), and a test pass per format check and per member, each pass looking
    at every test image `views` times (1 + the shifts of test-time augmentation)."""
    passes = formats + 1  # a test pass per format check, and the test evaluation
    per_pass = views * test_images * forward_flops(cfg) / flop_rate

    def per_format(weights: float) -> float:
        return EXPORT_SECONDS_PER_FORMAT + EXPORT_SECONDS_PER_PARAMETER * weights

    single = EXPORT_FIXED_SECONDS + formats * per_format(parameters(cfg)) + passes * per_pass
    ensemble = (
        0.0
        if members < 2
        else EXPORT_FIXED_SECONDS
        + formats * per_format(members * parameters(cfg))
        + passes * per_pass * members
    )
    return single + ensemble


def minimum_budget(
    cfg: RunConfig, numerics: Numerics, images: int, test_images: int, formats: int
) -> float:
    """The least budget that delivers: one epoch on `images` training images, test, export."""
    refit = epoch_seconds(cfg, numerics, images, 0) + STARTUP_SECONDS
    return FINAL_SAFETY * refit + export_seconds(cfg, formats, 0, numerics.flop_rate, test_images)


def final_epochs(
    seconds: float, images: int, seconds_per_image: float, schedule_epochs: int
) -> int:
    """Epochs of a refit that end within `seconds` (at least one, at most MAX_FINAL_EPOCHS and
    ten times `schedule_epochs`, the experiment's whole schedule: not a screen's), with
    FINAL_SAFETY for this machine's swings in speed."""
    per_epoch = FINAL_SAFETY * (images * seconds_per_image + REFIT_EPOCH_SECONDS)
    fitting = math.floor(max(0.0, seconds - 5.0) / per_epoch)
    return max(1, min(MAX_FINAL_EPOCHS, fitting, 10 * schedule_epochs))


def kept_models_join_the_ensemble(trained_epochs: int | None, schedule_epochs: int) -> bool:
    """Whether models the search kept, trained `trained_epochs` of the experiment's
    `schedule_epochs` (None: all of them), are worth averaging with the refit.

    Measured: 2- and 4-epoch screening models of a 15-epoch space pulled the refit down
    (MNIST 99.66 % single, 99.54 % ensemble; Fashion-MNIST 88.50 % and 86.87 %). Kept models of
    the whole schedule lifted a 37-epoch MNIST refit once (99.68 % -> 99.71 %), left a 47-epoch
    one unchanged (13-epoch members, 29 errors both) and pulled a 52-epoch Fashion-MNIST refit
    down (93.09 % -> 92.52 %; docs/results.md, 2026-11-30): this rule only keeps screening
    models out; whether full-schedule members help is not settled."""
    return trained_epochs is None or trained_epochs >= MEMBER_SCHEDULE_SHARE * schedule_epochs


def baseline_seconds(images_per_second: float, train_images: int, validation_images: int) -> float:
    """Recording the baseline: 12 epochs validated, then 12 epochs on every training image."""
    validation_stage = train_images + validation_images / TRAINING_PASSES
    test_stage = train_images + validation_images
    return LOOP_OVERHEAD * BASELINE_EPOCHS * (validation_stage + test_stage) / images_per_second

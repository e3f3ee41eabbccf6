"""Images per second of tunelab's tracked training against a bare `model.fit` of the same model.

Usage: python benchmarks/overhead.py [--train-size 20000] [--epochs 2] [--repeats 3]
                                     [--precision mixed_bfloat16] [--config recipe|baseline]

Both sides train the same model (the hand recipe by default, in the same precision) on the same
images for the same epochs, validating on the same 10,000 held-out images. The bare side is what
a user would write: numpy arrays into model.fit. The tunelab side is everything a tracked run
does: train_and_validate (the step plan and its deterministic tf.data stream, the step clock,
the NaN guard, a per-step checkpoint on the run), per-epoch MLflow metrics, params, config.json,
dataset input, history CSV and learning-curve PNG, into a SQLite store created before timing.
No augmentation on either side (the bare side has none to compare with). The sides alternate so
that drift in machine speed hits both; images per second count training images over the whole
wall time of each side, validation and logging included. Target: tunelab >= 0.97 x bare.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import keras

from tunelab.define.cnn import RECIPE, CnnConfig
from tunelab.define.data import Splits, load_splits
from tunelab.quiet import import_tensorflow, quiet_environment
from tunelab.record.store import Tracker
from tunelab.training.callbacks import EpochSinkCallback
from tunelab.training.checkpoints import CheckpointWriter
from tunelab.training.model import build_cnn, steps_per_epoch
from tunelab.training.train import train_and_validate


def bare_fit(cfg: CnnConfig, splits: Splits, seed: int) -> float:
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    started = time.perf_counter()
    x_train = splits.train.x[..., None].astype("float32")
    x_val = splits.val.x[..., None].astype("float32")
    model = build_cnn(cfg, steps_per_epoch(len(splits.train), cfg.batch_size))
    model.fit(
        x_train,
        splits.train.y,
        batch_size=cfg.batch_size,
        epochs=cfg.epochs,
        validation_data=(x_val, splits.val.y),
        verbose=0,
    )
    return time.perf_counter() - started


def tracked_fit(cfg: CnnConfig, splits: Splits, seed: int, tracker: Tracker) -> float:
    started = time.perf_counter()
    with tracker.run("overhead-benchmark", "tracked", tags={}) as run:
        run.log_config(cfg)
        run.log_dataset(splits)
        result = train_and_validate(
            cfg,
            splits,
            callbacks=[EpochSinkCallback(run.epoch_sink())],
            seed=seed,
            checkpoint=CheckpointWriter(tracker, run.run_id),
        )
        run.log_training(result, title="overhead benchmark")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", default="mixed_bfloat16")
    parser.add_argument("--config", choices=("recipe", "baseline"), default="recipe")
    args = parser.parse_args()
    quiet_environment()
    import_tensorflow()
    splits = load_splits("mnist", train_size=args.train_size)
    base = RECIPE if args.config == "recipe" else CnnConfig()
    cfg = base.model_copy(
        update={"epochs": args.epochs, "precision": args.precision, "augment_translation": 0.0}
    )
    # warm-up: the first fit in a process pays for TensorFlow's one-time initialisation
    bare_fit(cfg.model_copy(update={"epochs": 1}), splits, seed=0)
    images = args.epochs * len(splits.train)
    bare, tracked = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tracker = Tracker(f"sqlite:///{Path(tmp) / 'mlflow.db'}")
        tracker.experiment_id("overhead-benchmark")  # the store exists, as a user's does
        for repeat in range(args.repeats):
            bare.append(images / bare_fit(cfg, splits, seed=repeat))
            tracked.append(images / tracked_fit(cfg, splits, seed=repeat, tracker=tracker))
            print(
                f"repeat {repeat + 1}: bare {bare[-1]:.0f} images/s, "
                f"tunelab {tracked[-1]:.0f} images/s",
                flush=True,
            )
    print(
        f"{args.config} ({cfg.precision}), train {len(splits.train)} / val {len(splits.val)} "
        f"images, {args.epochs} epochs, {args.repeats} repeats"
    )
    print(
        f"median images/s: bare model.fit {statistics.median(bare):.0f}, "
        f"tunelab {statistics.median(tracked):.0f}; best: {max(bare):.0f} vs {max(tracked):.0f}"
    )
    print(
        f"ratio tunelab / bare: median {statistics.median(tracked) / statistics.median(bare):.3f}, "
        f"best of each {max(tracked) / max(bare):.3f} (target >= 0.97)"
    )


if __name__ == "__main__":
    main()

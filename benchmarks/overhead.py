"""Images per second of tunelab's tracked training against a bare `model.fit` of the same model.

Usage: python benchmarks/overhead.py [--train-size 20000] [--epochs 2] [--repeats 3]
                                     [--precision mixed_bfloat16] [--config recipe|baseline]
                                     [--experiment examples/digits/experiment.yaml]

Both sides train the same model (the hand recipe by default; with --experiment, that experiment's
model factory at the representative point of its space, on its own data) in the same precision
on the same images for the same epochs, validating on the same held-out images. The bare side is
what a user would write: numpy arrays into model.fit. The tunelab side is everything a tracked run
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

from tunelab.define.cnn import RECIPE, RECIPE_TRAINING, CnnConfig
from tunelab.define.data import Splits, load_splits
from tunelab.define.run_config import RunConfig, cnn_run_config
from tunelab.define.training import TrainingConfig
from tunelab.quiet import import_tensorflow, quiet_environment
from tunelab.record.store import Tracker
from tunelab.training.callbacks import EpochSinkCallback
from tunelab.training.checkpoints import CheckpointWriter
from tunelab.training.factory import build_model
from tunelab.training.model import steps_per_epoch
from tunelab.training.session import fresh_session
from tunelab.training.train import train_and_validate


def bare_fit(cfg: RunConfig, splits: Splits, seed: int) -> float:
    fresh_session()
    keras.utils.set_random_seed(seed)
    started = time.perf_counter()
    x_train = splits.train.x.astype("float32")
    x_val = splits.val.x.astype("float32")
    training = cfg.training
    model = build_model(cfg, steps_per_epoch(len(splits.train), training.batch_size))
    model.fit(
        x_train,
        splits.train.y,
        batch_size=training.batch_size,
        epochs=training.epochs,
        validation_data=(x_val, splits.val.y),
        verbose=0,
    )
    return time.perf_counter() - started


def experiment_config(path: Path, precision: str, epochs: int) -> tuple[RunConfig, Splits]:
    """The experiment's factory at its representative point, and its data."""
    from tunelab.define.experiment import load_experiment
    from tunelab.training.prepare import load_splits_of, prepare

    spec = load_experiment(path)
    prepared = prepare(spec, load_splits_of(spec))
    splits = prepared.splits
    point = prepared.spec.representative_point(splits.input_shape, splits.num_classes)
    config = prepared.spec.with_precision(precision).run_config(
        point, splits.input_shape, splits.num_classes
    )
    unaugmented = config.training.model_copy(
        update={"augment_translation": 0.0, "augment_rotation": 0.0, "augment_zoom": 0.0}
    )
    return config.with_training(unaugmented).with_epochs(epochs), splits


def tracked_fit(cfg: RunConfig, splits: Splits, seed: int, tracker: Tracker) -> float:
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
    parser.add_argument("--experiment", type=Path, help="an experiment's factory and data")
    args = parser.parse_args()
    quiet_environment()
    import_tensorflow()
    if args.experiment is not None:
        cfg, splits = experiment_config(args.experiment, args.precision, args.epochs)
        name = f"{cfg.factory} ({args.experiment.name})"
    else:
        splits = load_splits("mnist", train_size=args.train_size)
        recipe = args.config == "recipe"
        training = (RECIPE_TRAINING if recipe else TrainingConfig()).model_copy(
            update={"precision": args.precision, "augment_translation": 0.0}
        )
        cfg = cnn_run_config(RECIPE if recipe else CnnConfig(), training).with_epochs(args.epochs)
        name = args.config
    # warm-up: the first fit in a process pays for TensorFlow's one-time initialisation
    bare_fit(cfg.with_epochs(1), splits, seed=0)
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
        f"{name} ({cfg.training.precision}), train {len(splits.train)} / val "
        f"{len(splits.val)} images, {args.epochs} epochs, {args.repeats} repeats"
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

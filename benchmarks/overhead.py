"""Overhead of tunelab's tracked training against a bare Keras `model.fit` (same model, data).

Usage: python benchmarks/overhead.py [--train-size 20000] [--epochs 3] [--repeats 2]

Both sides train the baseline CNN on the same images for the same epochs, validating on the same
10,000 held-out images. The bare side is what a user would write: numpy arrays into model.fit.
The tunelab side is everything a tracked run does: train_and_validate (tf.data pipeline, epoch
clock, NaN guard), per-epoch MLflow metrics, params, dataset input, history CSV, learning-curve
PNG and the model logged in MLflow's Keras flavor, into a SQLite store created before timing (a
user's exists after the first run). The sides alternate (bare, tunelab, bare, ...) so that drift
in machine speed hits both; the ratio uses the fastest run of each side, and the ratio of the
medians is printed too. Target: <= 1.03.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import keras

from tunelab.define.cnn import CnnConfig
from tunelab.define.data import Splits, load_splits
from tunelab.record.names import Role, TagKey
from tunelab.record.store import Tracker
from tunelab.training.callbacks import EpochSinkCallback
from tunelab.training.model import build_cnn
from tunelab.training.train import train_and_validate


def bare_fit(cfg: CnnConfig, splits: Splits, seed: int) -> float:
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    started = time.perf_counter()
    x_train = splits.train.x[..., None].astype("float32")
    x_val = splits.val.x[..., None].astype("float32")
    model = build_cnn(cfg)
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
    with tracker.run("overhead-benchmark", "tracked", tags={TagKey.ROLE: Role.TRIAL}) as run:
        run.log_params(cfg.as_params())
        run.log_dataset(splits)
        result = train_and_validate(
            cfg, splits, callbacks=[EpochSinkCallback(run.epoch_sink())], seed=seed
        )
        run.log_training(result, title="overhead benchmark")
        run.log_keras_model(result.model, splits.val.x[:2, ..., None].astype("float32"))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    splits = load_splits("mnist", train_size=args.train_size)
    cfg = CnnConfig(epochs=args.epochs)
    # warm-up: the first fit in a process pays for TensorFlow's one-time initialisation
    bare_fit(cfg.model_copy(update={"epochs": 1}), splits, seed=0)
    bare, tracked = [], []
    with tempfile.TemporaryDirectory() as tmp:
        # the store exists before timing, as a user's does after their first run
        tracker = Tracker(f"sqlite:///{Path(tmp) / 'mlflow.db'}")
        tracker.experiment_id("overhead-benchmark")
        for repeat in range(args.repeats):
            bare.append(bare_fit(cfg, splits, seed=repeat))
            tracked.append(tracked_fit(cfg, splits, seed=repeat, tracker=tracker))
            print(
                f"repeat {repeat + 1}: bare {bare[-1]:.1f} s, tunelab {tracked[-1]:.1f} s",
                flush=True,
            )
    # on a shared VM one run can take 40 % longer than the next; the minimum of each side is the
    # closest estimate of its uncontended cost, the median is printed beside it
    ratio = min(tracked) / min(bare)
    median_ratio = statistics.median(tracked) / statistics.median(bare)
    print(
        f"train {len(splits.train)} / val {len(splits.val)} images, {args.epochs} epochs, "
        f"{args.repeats} repeats"
    )
    print(
        f"median bare model.fit: {statistics.median(bare):.1f} s; "
        f"median tunelab tracked run: {statistics.median(tracked):.1f} s"
    )
    print(f"fastest bare: {min(bare):.1f} s; fastest tunelab: {min(tracked):.1f} s")
    print(
        f"ratio tunelab / bare (fastest of each): {ratio:.3f} (target <= 1.03); "
        f"of the medians: {median_ratio:.3f}"
    )


if __name__ == "__main__":
    main()

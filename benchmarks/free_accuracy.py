"""Accuracy at no extra training, each option alone against its absence, on the hand recipe.

Usage: python benchmarks/free_accuracy.py [--epochs 6] [--seeds 2] [--cycles 3]
                                          [--variants plain,ema,swa,snapshots]
                                          [--precision mixed_bfloat16] [--dataset mnist]
                                          [--cutout 0.25]

Trains the recipe (`tunelab.define.cnn.RECIPE`, its schedule shortened to `--epochs`; pass
`--precision float32` on a CPU without native bfloat16) on the usual 50,000 / 10,000 split
once per variant and seed, with the same seed, data order and epochs for every variant:

- plain: the recipe as it is;
- ema / swa: `weight_averaging` (batch norm recomputed after averaging);
- snapshots: `snapshot_cycles: --cycles`; scored twice: its last model alone, and the averaged
  softmax of its cycle ends (the ensemble `tunelab run` would deliver from one refit);
- flip / cutout / flip+cutout: the augmentations for clothes and scenes (`augment_flip`,
  `augment_cutout: --cutout`), meant for `--dataset fashion_mnist` (mirrored digits are wrong).

Scores are validation accuracy (the test split is read only by the baseline and exports), and
the table gives each variant's mean over seeds, its spread, and its gain over plain paired by
seed, in points.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np

from tunelab.quiet import import_tensorflow, quiet_environment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--variants", default="plain,ema,swa,snapshots")
    parser.add_argument("--precision", default="mixed_bfloat16")
    parser.add_argument("--dataset", default="mnist", choices=["mnist", "fashion_mnist"])
    parser.add_argument("--cutout", type=float, default=0.25)
    args = parser.parse_args()
    quiet_environment()
    import_tensorflow()
    from tunelab.define.cnn import RECIPE, RECIPE_TRAINING
    from tunelab.define.data import load_splits
    from tunelab.define.run_config import cnn_run_config
    from tunelab.delivery.ensemble import snapshot_members
    from tunelab.training.batch_norm import IMAGES
    from tunelab.training.factory import serving_model
    from tunelab.training.train import train_and_validate

    splits = load_splits(args.dataset)
    base = cnn_run_config(RECIPE, RECIPE_TRAINING.with_epochs(args.epochs))
    precision = args.precision
    updates: dict[str, dict[str, Any]] = {
        "plain": {},
        "ema": {"weight_averaging": "ema"},
        "swa": {"weight_averaging": "swa"},
        "snapshots": {"snapshot_cycles": args.cycles},
        "flip": {"augment_flip": True},
        "cutout": {"augment_cutout": args.cutout},
        "flip+cutout": {"augment_flip": True, "augment_cutout": args.cutout},
    }
    chosen = args.variants.split(",")
    images, labels = splits.val.x.astype("float32"), splits.val.y
    scores: dict[str, list[float]] = {}
    print(
        f"recipe on {args.dataset}, {args.epochs} epochs, {precision}, seeds 1..{args.seeds}",
        flush=True,
    )
    for seed in range(1, args.seeds + 1):
        for name in chosen:
            training = base.training.model_copy(update=updates[name])
            config = base.with_training(training).with_precision(precision)
            started = time.time()
            result = train_and_validate(config, splits, seed=seed)
            last = result.history["val_accuracy"][-1]
            scores.setdefault(name, []).append(last)
            line = f"seed {seed} {name:<10} last model {last:.4f}"
            if name == "snapshots":
                members = snapshot_members(
                    "", "", config, result.snapshots, splits.train.x[:IMAGES]
                )
                models = [serving_model(result.model, config)] + [
                    serving_model(m.model, m.config) for m in members
                ]
                each = [np.asarray(m.predict(images, verbose=0)) for m in models]
                ensemble = float(np.mean(np.mean(each, axis=0).argmax(axis=1) == labels))
                alone = ", ".join(f"{np.mean(p.argmax(axis=1) == labels):.4f}" for p in each)
                scores.setdefault("snapshot ensemble", []).append(ensemble)
                line += f"; members {alone}; ensemble of {len(each)} {ensemble:.4f}"
            print(f"{line} ({time.time() - started:.0f} s)", flush=True)
    plain = scores.get("plain")
    print(f"\n{'variant':<18} {'mean':>7} {'spread':>7}  gain over plain, paired by seed")
    for name, values in scores.items():
        spread = max(values) - min(values)
        gain = ""
        if plain is not None and name != "plain":
            gains = [(v - p) * 100 for v, p in zip(values, plain, strict=True)]
            gain = f"{statistics.mean(gains):+.2f} points ({', '.join(f'{g:+.2f}' for g in gains)})"
        print(f"{name:<18} {statistics.mean(values):>7.4f} {spread:>7.4f}  {gain}")


if __name__ == "__main__":
    main()

"""Do early rungs tell configurations apart? Validation after a few thousand images, by BN momentum.

Usage: python benchmarks/rungs.py [--epochs 3] [--min-images 5000] [--momenta 0.99,0.9]
                                  [--seeds 1]

Trains the hand recipe (`tunelab.define.cnn.RECIPE`, bfloat16) on the usual 50,000 / 10,000 split
with data-size fidelity (validated after min_images, 3x as many, ..., then every epoch), once per
batch-norm momentum, and prints validation accuracy at every step. With Keras' default momentum
(0.99) the moving statistics that validation uses still hold mostly their initial values after
a few dozen steps, so a rung inside the first epoch scores every model near chance and a pruner
at that rung decides by noise; a lower momentum settles them. The last column says whether the
momentum costs accuracy where it matters (the end of the run).
"""

from __future__ import annotations

import argparse
import time

from tunelab.quiet import import_tensorflow, quiet_environment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--min-images", type=int, default=5000)
    parser.add_argument("--momenta", default="0.99,0.9")
    parser.add_argument("--seeds", type=int, default=1)
    args = parser.parse_args()
    quiet_environment()
    import_tensorflow()
    from tunelab.define.cnn import RECIPE, RECIPE_TRAINING
    from tunelab.define.data import load_splits
    from tunelab.define.run_config import cnn_run_config
    from tunelab.training.train import Fidelity, train_and_validate

    splits = load_splits("mnist")
    for momentum in (float(m) for m in args.momenta.split(",")):
        for seed in range(1, args.seeds + 1):
            config = cnn_run_config(
                RECIPE.model_copy(update={"batch_norm_momentum": momentum}),
                RECIPE_TRAINING.with_epochs(args.epochs),
            ).with_precision("mixed_bfloat16")
            started = time.time()
            result = train_and_validate(
                config, splits, seed=seed, fidelity=Fidelity(min_images=args.min_images)
            )
            seen = result.history.get("images_seen", [])
            scores = ", ".join(
                f"{int(images):,}: {value:.4f}"
                for images, value in zip(seen, result.history["val_accuracy"], strict=True)
            )
            print(
                f"momentum {momentum:<5} seed {seed}: {scores}  ({time.time() - started:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()

"""Does a complete one-epoch schedule rank configurations like a longer one? And an epoch prefix?

Usage: python benchmarks/schedule_agreement.py [--experiment experiments/mnist_hour.yaml]
                                               [--configs 12] [--short 1] [--long 4]
                                               [--precision mixed_bfloat16] [--seed 0]

Draws `--configs` random points of the experiment's search space (seeded; nothing enqueued, so
the hand recipe is not among them unless drawn) and trains each twice on the experiment's
training / validation split, with the same seed: once on a *complete* short schedule
(`--short` epochs, warm-up and decay compressed into them: what a screen trains), once on a
`--long`-epoch schedule whose validation after `--short` epochs is the *prefix* rung (what an
epoch-rung pruner reads). It prints every configuration's three scores and the rank agreement
(Spearman and Kendall with p-values, `tunelab.engines.agreement`) of each cheap rung with the
end of the long schedule, and of the two cheap rungs with each other. Scores are validation
accuracy; batch-norm statistics are recomputed before every validation, as in a sweep.
Pass `--precision float32` on a CPU without native bfloat16.
"""

from __future__ import annotations

import argparse
import random
import time

from tunelab.quiet import import_tensorflow, quiet_environment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="experiments/mnist_hour.yaml")
    parser.add_argument("--configs", type=int, default=12)
    parser.add_argument("--short", type=int, default=1)
    parser.add_argument("--long", type=int, default=4)
    parser.add_argument("--precision", default="mixed_bfloat16")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    quiet_environment()
    import_tensorflow()
    from tunelab.define.experiment import load_experiment
    from tunelab.define.training import ConfigFieldError
    from tunelab.engines.agreement import agreement
    from tunelab.training.prepare import load_splits_of
    from tunelab.training.train import train_and_validate

    spec = load_experiment(args.experiment).with_precision(args.precision)
    splits = load_splits_of(spec)
    rng = random.Random(args.seed)
    short_scores: list[float] = []
    prefix_scores: list[float] = []
    long_scores: list[float] = []
    print(
        f"{args.experiment}: {args.configs} random points, complete {args.short}-epoch schedule "
        f"vs {args.long}-epoch schedule, {args.precision}, seed {args.seed}",
        flush=True,
    )
    while len(long_scores) < args.configs:
        point = spec.search_space.random_point(rng)
        try:
            config = spec.run_config(point, splits.input_shape, splits.num_classes)
        except ConfigFieldError:
            continue  # a point that cannot be built is no configuration to rank
        seed = args.seed + len(long_scores) + 1
        started = time.time()
        short = train_and_validate(config.with_epochs(args.short), splits, seed=seed)
        middle = time.time()
        full = train_and_validate(config.with_epochs(args.long), splits, seed=seed)
        short_scores.append(short.history["val_accuracy"][-1])
        prefix_scores.append(full.history["val_accuracy"][args.short - 1])
        long_scores.append(full.history["val_accuracy"][-1])
        print(
            f"config {len(long_scores):>2}: complete {args.short} ep {short_scores[-1]:.4f} "
            f"({middle - started:.0f} s) | prefix {prefix_scores[-1]:.4f} | "
            f"end of {args.long} ep {long_scores[-1]:.4f} ({time.time() - middle:.0f} s) | "
            + ", ".join(f"{k}={v}" for k, v in sorted(point.items())),
            flush=True,
        )
    complete = f"complete {args.short}-epoch schedule"
    prefix = f"epoch {args.short} of {args.long}"
    end = f"end of {args.long} epochs"
    for first, second, xs, ys in (
        (complete, end, short_scores, long_scores),
        (prefix, end, prefix_scores, long_scores),
        (complete, prefix, short_scores, prefix_scores),
    ):
        print(agreement(first, second, list(zip(xs, ys, strict=True))).line(), flush=True)


if __name__ == "__main__":
    main()

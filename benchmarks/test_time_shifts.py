"""Test-time shifts alone against their absence, on models a sweep already trained.

Usage: python benchmarks/test_time_shifts.py --tracking-uri URI [--experiment NAME ...]
                                             [--pixels 1]

For every trial and confirmation run of the named MLflow experiments (default: every
experiment in the store) that kept its trained model, the model is rebuilt in float32 and scored
on that run's own validation split, reloaded and checked against the recorded data digest, once
as it is and once averaged over the image and its four shifts by `--pixels`
(`tunelab.delivery.tta`, what `pipeline.test_time_shifts` exports; with the mirrored image and
its shifts too for a model trained with `augment_flip`, as exported). Nothing is trained and the
test split is not read (rule 1: only the baseline and exports score it). Prints one row per model
(accuracy, errors, the change in errors, McNemar's exact p) and the mean change over models with
its 95 % t-interval.
"""

from __future__ import annotations

import argparse
import functools

import numpy as np

from tunelab.quiet import import_tensorflow, quiet_environment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--experiment", action="append", default=[])
    parser.add_argument("--pixels", type=int, default=1)
    args = parser.parse_args()
    quiet_environment()
    import_tensorflow()
    from tunelab.analysis.stats import mcnemar_exact, seed_summary
    from tunelab.delivery.ensemble import member_from_run
    from tunelab.delivery.tta import with_test_time_shifts
    from tunelab.record.names import Artifact, Role
    from tunelab.record.query import Query
    from tunelab.record.recorded import load_recorded_run
    from tunelab.record.store import Tracker
    from tunelab.training.inputs import eval_dataset

    tracker = Tracker(args.tracking_uri)
    names = args.experiment or [e.name for e in tracker.client.search_experiments()]
    changes: list[int] = []
    print("| model | validation | with shifts | errors | change | McNemar p |")
    print("|---|---|---|---|---|---|")
    splits_of = functools.cache(lambda data: data.load())  # each recorded split loaded once
    runs = [
        (name, role, run.info.run_id)
        for name in names
        for role in (Role.TRIAL, Role.CONFIRMATION)
        for run in tracker.search(name, Query.of(role=role))
        if tracker.has_artifact(run.info.run_id, Artifact.TRAINED_MODEL)
    ]
    for name, role, run_id in runs:
        recorded = load_recorded_run(tracker, run_id)
        validation = splits_of(recorded.data).val
        model = member_from_run(tracker, run_id, recorded.label).model
        images = eval_dataset(validation)
        plain = _correct(model, images, validation.y)
        mirrored = recorded.config.training.augment_flip
        averaged = with_test_time_shifts(model, args.pixels, mirrored=mirrored)
        shifted = _correct(averaged, images, validation.y)
        change = int((~shifted).sum() - (~plain).sum())
        changes.append(change)
        print(
            f"| {name} {recorded.label} ({role}{', mirrored too' if mirrored else ''}) | "
            f"{plain.mean():.4f} | {shifted.mean():.4f} | "
            f"{(~plain).sum()} -> {(~shifted).sum()} | {change:+d} | "
            f"{mcnemar_exact(plain, shifted).p_value:.3g} |",
            flush=True,
        )
    if not changes:
        raise SystemExit("no run with a kept trained model in the named experiments")
    summary = seed_summary([float(c) for c in changes])
    print(
        f"\nchange in validation errors with {args.pixels}-pixel shifts over {len(changes)} "
        f"model(s): mean {summary.mean:+.1f}, standard deviation {summary.std:.1f}, 95 % "
        f"interval [{summary.interval.low:+.1f}, {summary.interval.high:+.1f}]"
    )


def _correct(model: object, dataset: object, labels: np.ndarray) -> np.ndarray:
    """Which validation images `model` classifies correctly."""
    probabilities = np.asarray(model.predict(dataset, verbose=0))  # type: ignore[attr-defined]
    return np.asarray(np.argmax(probabilities, axis=1) == labels)


if __name__ == "__main__":
    main()

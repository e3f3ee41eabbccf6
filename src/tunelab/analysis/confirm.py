"""Confirm before crowning: retrain the top configurations with fresh seeds, crown the best mean.

A sweep's best trial is the maximum of many noisy scores, so its own score is biased upwards
(the winner's curse) and the runner-up may well be as good. `confirm_sweep` retrains each of the
top K configurations with S fresh seeds (validation only, never the test set), records every
retraining as a `confirmation` run under the sweep's parent, and summarises each configuration
by its mean, standard deviation and 95 % t-interval over the fresh seeds. The champion is the
configuration with the best mean; the parent run records it (tag `tunelab.champion_run_id`), and
export uses it. An interrupted confirmation resumes: finished retrainings are reused, a paused
one continues from its checkpoint. Under a deadline (`tunelab run`), what is not confirmed when
it comes is left out, and the champion is crowned from the configurations that were.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tunelab.analysis.stats import SeedSummary, seed_summary
from tunelab.define.data import Splits
from tunelab.errors import UserError
from tunelab.record.names import Artifact, MetricName, Role, TagKey
from tunelab.record.query import Query
from tunelab.record.recorded import RecordedRun, SweepRecord
from tunelab.record.store import RunHandle, Tracker
from tunelab.training.deadline import SAFETY, Deadline
from tunelab.training.progress import ProgressFactory, no_progress
from tunelab.training.retrain import fresh_seeds, retrain


@dataclass(frozen=True)
class Confirmed:
    """One configuration's fresh-seed retrainings (finished ones only)."""

    original: RecordedRun
    seeds: tuple[int, ...]
    run_ids: tuple[str, ...]
    summary: SeedSummary


@dataclass(frozen=True)
class Confirmation:
    """All confirmed configurations, best mean first; the first is the champion."""

    sweep: SweepRecord
    confirmed: list[Confirmed]
    complete: bool = True  # False when a deadline left retrainings undone

    @property
    def champion(self) -> Confirmed:
        return self.confirmed[0]

    @property
    def member_runs(self) -> list[str]:
        """Every finished retraining, champion's first (candidate ensemble members)."""
        return [run_id for item in self.confirmed for run_id in item.run_ids]


def finished_retraining(
    tracker: Tracker, original: RecordedRun, seed: int
) -> tuple[str, float] | None:
    """An earlier confirmation run of this config and seed that finished (resume)."""
    runs = tracker.search(
        original.experiment,
        Query.of(role=Role.CONFIRMATION, status="FINISHED").and_tags(
            **{TagKey.RETRAINS_RUN_ID: original.run_id, TagKey.SEED: str(seed)}
        ),
    )
    for run in reversed(runs):
        value = run.data.metrics.get(MetricName.BEST_VAL_ACCURACY)
        if value is not None:
            return run.info.run_id, float(value)
    return None


def confirm_sweep(
    tracker: Tracker,
    sweep: SweepRecord,
    splits: Splits,
    *,
    top: int,
    seeds: int,
    progress: ProgressFactory = no_progress,
    report: Callable[[str], None] = lambda _: None,
    deadline: Deadline | None = None,
    keep_models: bool = False,
) -> Confirmation:
    """Retrain the sweep's `top` configs with `seeds` fresh seeds each; crown the best mean."""
    if top < 1 or seeds < 1:
        raise UserError(f"--top and --seeds must be at least 1 (got {top} and {seeds})")
    originals = sweep.top_trials(tracker, top)
    if not originals:
        raise UserError(
            f"sweep {sweep.study} of {sweep.experiment} has no complete trial to confirm"
        )
    confirmed: list[Confirmed] = []
    complete = True
    for seed_index in range(seeds):  # every configuration's first seed, then the second, ...
        for original in originals:
            seed = fresh_seeds(original, seeds)[seed_index]
            earlier = finished_retraining(tracker, original, seed)
            if earlier is not None:
                report(f"{original.label} seed {seed}: {earlier[1]:.4f} (recorded earlier)")
                continue
            if not complete:
                continue
            needed = original.metrics.get(MetricName.WALL_SECONDS, 0.0) * SAFETY
            if deadline is not None and needed > deadline.remaining():
                complete = False  # starting it would only pause it: its time goes to the next stage
                report(
                    f"{original.label} seed {seed}: not started (about {needed:.0f} s needed, "
                    f"{max(0.0, deadline.remaining()):.0f} s left)"
                )
                continue
            done = retrain(
                tracker,
                original,
                splits,
                seed=seed,
                role=Role.CONFIRMATION,
                progress=progress,
                deadline=deadline,
                keep_model=keep_models,
            )
            if done.result.paused:
                complete = False
                report(f"{original.label} seed {seed}: paused at the deadline")
                continue
            if done.best_val_accuracy is None:
                raise UserError(
                    f"confirmation of {original.label} with seed {seed} failed "
                    f"({done.result.failure_reason}); run {done.run_id}"
                )
            report(f"{original.label} seed {seed}: {done.best_val_accuracy:.4f}")
    for original in originals:
        values, run_ids, used = [], [], []
        for seed in fresh_seeds(original, seeds):
            found = finished_retraining(tracker, original, seed)
            if found is not None:
                run_ids.append(found[0])
                values.append(found[1])
                used.append(seed)
        if values:
            summary = seed_summary(values)
            confirmed.append(Confirmed(original, tuple(used), tuple(run_ids), summary))
            _record_on_trial(tracker, original, summary)
    if not confirmed:
        raise UserError(
            "no configuration was confirmed before the deadline: give the confirmation stage a "
            "larger share, or run `tunelab confirm` without a deadline"
        )
    confirmed.sort(key=lambda c: -c.summary.mean)
    confirmation = Confirmation(sweep, confirmed, complete)
    _record_on_parent(tracker, confirmation)
    return confirmation


def _record_on_trial(tracker: Tracker, original: RecordedRun, summary: SeedSummary) -> None:
    RunHandle(tracker.client, original.run_id).log_metrics(
        {
            MetricName.CONFIRMED_MEAN: summary.mean,
            MetricName.CONFIRMED_STD: summary.std,
            MetricName.CONFIRMED_LOW: summary.interval.low,
            MetricName.CONFIRMED_HIGH: summary.interval.high,
            MetricName.CONFIRMED_SEEDS: len(summary.values),
        }
    )


def _record_on_parent(tracker: Tracker, confirmation: Confirmation) -> None:
    champion = confirmation.champion
    parent = RunHandle(tracker.client, confirmation.sweep.parent_run_id)
    parent.set_tags(
        {
            TagKey.CHAMPION_RUN_ID: champion.original.run_id,
            TagKey.CHAMPION_PARAMS: ", ".join(
                f"{k}={v}" for k, v in champion.original.chosen.items()
            ),
        }
    )
    parent.log_metrics(
        {
            MetricName.CHAMPION_MEAN: champion.summary.mean,
            MetricName.CHAMPION_LOW: champion.summary.interval.low,
            MetricName.CHAMPION_HIGH: champion.summary.interval.high,
        }
    )
    parent.log_text(confirmation_csv(confirmation), Artifact.CONFIRMATION)


def confirmation_rows(confirmation: Confirmation) -> list[dict[str, object]]:
    """One row per configuration, champion first (for the CLI table and the CSV artifact)."""
    rows: list[dict[str, object]] = []
    for rank, item in enumerate(confirmation.confirmed, start=1):
        summary = item.summary
        rows.append(
            {
                "rank": rank,
                "trial": item.original.label,
                "run_id": item.original.run_id,
                "recorded_best_val_accuracy": item.original.best_val_accuracy,
                "seeds": " ".join(str(s) for s in item.seeds),
                "mean_val_accuracy": summary.mean,
                "std": summary.std,
                "ci95_low": summary.interval.low,
                "ci95_high": summary.interval.high,
                "values": " ".join(f"{v:.4f}" for v in summary.values),
            }
        )
    return rows


def confirmation_csv(confirmation: Confirmation) -> str:
    import pandas as pd

    return str(pd.DataFrame(confirmation_rows(confirmation)).to_csv(index=False))

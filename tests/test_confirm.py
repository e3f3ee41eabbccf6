"""Confirm before crowning: fresh seeds per top configuration, the champion is the best mean."""

from __future__ import annotations

import pytest

from conftest import RecordedSweep
from tunelab.analysis.confirm import confirm_sweep
from tunelab.define.data import Splits
from tunelab.errors import UserError
from tunelab.record.names import PARENT_RUN_TAG, Artifact, MetricName, Role, TagKey
from tunelab.record.recorded import RunNotFound, find_sweep
from tunelab.record.store import Tracker


@pytest.mark.slow
def test_top_configurations_are_retrained_with_fresh_seeds_and_the_best_mean_is_champion(
    recorded_sweep: RecordedSweep, tiny_splits: Splits
) -> None:
    tracker = Tracker(recorded_sweep.tracking_uri)
    sweep = find_sweep(tracker, "recorded")
    lines: list[str] = []
    result = confirm_sweep(tracker, sweep, tiny_splits, top=2, seeds=2, report=lines.append)
    assert len(result.confirmed) == 2
    means = [c.summary.mean for c in result.confirmed]
    assert means == sorted(means, reverse=True)
    for item in result.confirmed:
        assert item.original.seed not in item.seeds  # the selected run's own score is biased
        assert len(set(item.seeds)) == 2 and len(item.summary.values) == 2
        assert item.summary.interval.low <= item.summary.mean <= item.summary.interval.high
        runs = [tracker.client.get_run(run_id) for run_id in item.run_ids]
        assert all(r.data.tags[TagKey.ROLE] == Role.CONFIRMATION for r in runs)
        assert all(r.data.tags[PARENT_RUN_TAG] == sweep.parent_run_id for r in runs)
        assert all(r.data.tags[TagKey.RETRAINS_RUN_ID] == item.original.run_id for r in runs)
        trial = tracker.client.get_run(item.original.run_id)
        assert trial.data.metrics[MetricName.CONFIRMED_MEAN] == pytest.approx(item.summary.mean)
    parent = tracker.client.get_run(sweep.parent_run_id)
    assert parent.data.tags[TagKey.CHAMPION_RUN_ID] == result.champion.original.run_id
    assert parent.data.metrics[MetricName.CHAMPION_MEAN] == pytest.approx(means[0])
    assert Artifact.CONFIRMATION in {
        a.path for a in tracker.client.list_artifacts(parent.info.run_id)
    }
    # the same command again reuses the finished retrainings instead of training again
    again = confirm_sweep(tracker, sweep, tiny_splits, top=2, seeds=2, report=lines.append)
    assert [c.run_ids for c in again.confirmed] == [c.run_ids for c in result.confirmed]
    assert sum("recorded earlier" in line for line in lines) == 4


def test_confirm_refuses_an_unknown_experiment_or_study(recorded_sweep: RecordedSweep) -> None:
    tracker = Tracker(recorded_sweep.tracking_uri)
    with pytest.raises(RunNotFound, match=r"experiment .nope. not found .*it has: .*recorded"):
        find_sweep(tracker, "nope")
    with pytest.raises(RunNotFound, match="has no sweep with study 'other'"):
        find_sweep(tracker, "recorded", "other")
    with pytest.raises(RunNotFound, match=r"experiment file missing\.yaml does not exist"):
        find_sweep(tracker, "missing.yaml")
    with pytest.raises(UserError, match="at least 1"):
        confirm_sweep(tracker, find_sweep(tracker, "recorded"), None, top=0, seeds=1)  # type: ignore[arg-type]

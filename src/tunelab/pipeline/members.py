"""Which trained models the final stage uses: the best-known configuration when the search found
none, and the members of the delivered ensemble. Nothing is trained here to choose them."""

from __future__ import annotations

from tunelab.define.experiment import ExperimentSpec
from tunelab.delivery.ensemble import Member, member_from_run
from tunelab.delivery.export import ExportResult
from tunelab.engines.numerics import config_of
from tunelab.pipeline.state import PipelineState
from tunelab.record.names import Artifact, MetricName, Role, TagKey, TrialState
from tunelab.record.recorded import (
    RecordedRun,
    SweepRecord,
    finalists,
    load_recorded_run,
)
from tunelab.record.store import Tracker


def best_known_source(state: PipelineState, sweep: SweepRecord) -> tuple[RecordedRun, str]:
    """What the final stage trains when the search finished no trial, and how to name it: the
    configuration of the trial the deadline paused, else the experiment's first enqueued point,
    else the middle of its space (recorded as a `candidate` run under the sweep's parent)."""
    tracker, spec = state.tracker, state.spec
    paused = [
        run
        for run in sweep.trial_runs(tracker)
        if run.data.tags.get(TagKey.TRIAL_STATE) == TrialState.PAUSED
        and tracker.has_artifact(run.info.run_id, Artifact.CONFIG)
    ]
    if paused:
        source = load_recorded_run(tracker, paused[-1].info.run_id)
        return source, f"the configuration of {source.label}, which the deadline had paused"
    why = "the experiment's first enqueued point" if spec.enqueue else "the middle of its space"
    earlier = sweep.runs_of(tracker, Role.CANDIDATE)
    if earlier:
        return load_recorded_run(tracker, earlier[-1].info.run_id), why
    return _record_candidate(state, spec, sweep, why), why


def _record_candidate(
    state: PipelineState, spec: ExperimentSpec, sweep: SweepRecord, why: str
) -> RecordedRun:
    splits = state.splits
    point = spec.representative_point(splits.input_shape, splits.num_classes)
    config = config_of(spec.with_schedule(None), point, spec.precision, splits)
    tags = {
        TagKey.ROLE: Role.CANDIDATE,
        TagKey.STUDY: sweep.study,
        TagKey.ENGINE: sweep.engine,
        TagKey.SEED: str(spec.seed),
        TagKey.DATASET: spec.dataset,
    }
    with state.tracker.run(
        sweep.experiment, f"candidate: {why}", tags=tags, parent_run_id=sweep.parent_run_id
    ) as run:
        run.log_params(dict(point))
        run.log_config(config)
    return load_recorded_run(state.tracker, run.run_id)


def ensemble_members(
    tracker: Tracker,
    sweep: SweepRecord,
    champion: RecordedRun,
    single: ExportResult,
    count: int,
    *,
    with_kept: bool = True,
) -> list[Member]:
    """Up to `count` members: the champion's refit first, then the snapshots its schedule's
    restarts left (`snapshot_cycles`, newest first), then (`with_kept`) `kept_members`.
    Nothing is trained for the ensemble."""
    assert single.config is not None
    members = [Member(single.run_id, f"{champion.label} refit", single.config, single.model)]
    members += list(single.snapshots[: count - 1])
    if not with_kept:
        return members
    return members + kept_members(tracker, sweep, champion, count - len(members))


def kept_members(
    tracker: Tracker, sweep: SweepRecord, champion: RecordedRun, count: int
) -> list[Member]:
    """Up to `count` trained models the sweep kept: its confirmation retrainings (the
    champion's own seeds first, then by validation accuracy), then its complete trials."""
    members: list[Member] = []
    confirmations = [
        r for r in sweep.runs_of(tracker, Role.CONFIRMATION) if r.info.status == "FINISHED"
    ]
    confirmations.sort(
        key=lambda r: (
            r.data.tags.get(TagKey.RETRAINS_RUN_ID) != champion.run_id,
            -r.data.metrics.get(MetricName.BEST_VAL_ACCURACY, 0.0),
        )
    )
    trials = finalists(sweep.trial_runs(tracker))
    for run in [*confirmations, *trials]:
        if len(members) >= count:
            break
        if not tracker.has_artifact(run.info.run_id, Artifact.TRAINED_MODEL):
            continue
        tags = run.data.tags
        label = (
            f"{tags.get(TagKey.ENGINE, '')} t{tags.get(TagKey.TRIAL_NUMBER, '?')} "
            f"seed {tags.get(TagKey.SEED, '?')}"
        )
        members.append(member_from_run(tracker, run.info.run_id, label))
    return members

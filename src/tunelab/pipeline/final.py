"""Stage 3, final: the champion refit on every training image, tested once, exported; an ensemble.

The refit is planned once (then kept on the parent run, so a resumed launch trains the same
schedule) from the training throughput the champion measured (or this machine's measured speed
for a configuration that has not trained yet), so its fixed-length schedule ends before the
deadline. With `pipeline.ensemble: K`, the averaged softmax of K trained members is
delivered too. When the final share holds fewer refit epochs than the champion's own schedule
(measured: a one-epoch refit of a two-epoch champion tested 3 points below the kept models,
docs/results.md), or should the refit run late, the models search and confirmation kept are
delivered instead (where the experiment keeps models: `pipeline.ensemble` of 2 or more); when
the search finished no trial, the best-known configuration (the paused trial's, an enqueued
point, the middle of the space) is the one refit: a result always comes out of the budget.
"""

from __future__ import annotations

import json

from tunelab.delivery.ensemble import Member
from tunelab.delivery.export import ExportPaused, ExportResult, export_ensemble, export_model
from tunelab.delivery.tta import views_per_image
from tunelab.engines.numerics import representative_config
from tunelab.errors import UserError
from tunelab.pipeline import plan
from tunelab.pipeline.members import best_known_source, ensemble_members, kept_members
from tunelab.pipeline.state import Delivered, PipelineState
from tunelab.record.names import MetricName, TagKey
from tunelab.record.recorded import RecordedRun, SweepRecord, find_sweep, load_recorded_run
from tunelab.record.store import RunHandle
from tunelab.training.deadline import Deadline


def final(state: PipelineState, deadline: Deadline) -> None:
    sweep = find_sweep(state.tracker, state.spec.name, state.study)
    champion_id = sweep.tags.get(TagKey.CHAMPION_RUN_ID) or sweep.tags.get(TagKey.BEST_RUN_ID)
    if champion_id:
        champion = load_recorded_run(state.tracker, champion_id)
    else:
        champion, why = best_known_source(state, sweep)
        state.note(f"final: the search finished no trial; trained {why} instead")
    settings = state.spec.pipeline
    formats = tuple(settings.formats)
    epochs = planned_epochs(state, champion, deadline)
    trained = champion.config.training.epochs
    if champion_id and epochs < trained:  # a shorter refit would be worse than what was kept
        kept = _kept(state, sweep, champion)
        if kept:
            why = (
                f"a refit of {epochs} epoch(s) is all the final share holds, fewer than the "
                f"{trained} the champion trained"
            )
            _deliver_kept(state, kept, sweep, formats, why)
            return
    ensemble = ensemble_size(state)
    state.say(f"final: {champion.label} refit on every training image for {epochs} epochs")
    refit_deadline = Deadline(deadline.at - _reserve(state, champion, len(formats)))
    try:
        single = export_model(
            state.tracker,
            champion,
            state.full_splits,
            out=state.out / "single",
            formats=formats,
            refit=True,
            epochs=epochs,
            register=ensemble < 2,
            deadline=refit_deadline,
            progress=state.progress,
            report=state.say,
            test_time_shifts=settings.test_time_shifts,
            snapshot_cycles=settings.snapshot_cycles,
        )
    except ExportPaused as error:
        kept = _kept(state, sweep, champion)
        if not kept:
            raise UserError(
                f"final stage: {error}; no trained model was kept to deliver instead: "
                "run again with a larger --budget to finish the refit"
            ) from None
        _deliver_kept(state, kept, sweep, formats, str(error))
        return
    state.outcome.single = Delivered.of(single)
    with_kept = kept_models_join(state)
    if settings.ensemble >= 2 and not with_kept:
        weaker = (
            f"the search trained shortened {_short(state)}-epoch schedules, whose models are "
            "weaker than the refit"
        )
        state.note(
            f"ensemble: only the refit's {ensemble} cycle ends are averaged: {weaker}"
            if ensemble
            else f"ensemble: not built: {weaker}; delivered the single champion"
        )
    if ensemble >= 2:
        members = ensemble_members(
            state.tracker, sweep, champion, single, ensemble, with_kept=with_kept
        )
        if len(members) >= 2:
            state.outcome.ensemble = _export_ensemble(
                state, sweep, members, formats, "ensemble", single
            )
        else:
            state.note(
                "ensemble: fewer than 2 trained members were available; delivered the single "
                "champion"
            )


def ensemble_size(state: PipelineState) -> int:
    """How many members the delivered ensemble averages (0: none is built). When the search's
    models are screening models, trained much shorter schedules than the refit
    (`kept_models_join`), only the refit's own cycle ends (`snapshot_cycles`) count."""
    settings = state.spec.pipeline
    if kept_models_join(state):
        return settings.ensemble
    own = min(settings.ensemble, settings.snapshot_cycles)
    return own if own >= 2 else 0


def kept_models_join(state: PipelineState) -> bool:
    """Whether the search's kept models may join the ensemble: not when they are screening
    models (`plan.kept_models_join_the_ensemble`)."""
    return plan.kept_models_join_the_ensemble(_short(state), full_schedule_epochs(state))


def full_schedule_epochs(state: PipelineState) -> int:
    """The epochs of the experiment's whole schedule, however short the search's trials were."""
    return representative_config(state.spec.with_schedule(None), state.splits).training.epochs


def _short(state: PipelineState) -> int | None:
    """The epochs of the search's longest trial, when shorter than the experiment's schedule
    (shortened by the plan, or screens); None when trials trained the whole schedule."""
    spec = state.spec
    screens = spec.engine.screens
    caps = [c for c in (spec.schedule_epochs, screens[-1] if screens else None) if c is not None]
    return min(caps) if caps else None


def _reserve(state: PipelineState, champion: RecordedRun, formats: int) -> float:
    """Seconds kept after the refit for testing and exporting (every view of each test image
    when the delivered models average test-time shifts, mirrored ones included)."""
    return plan.export_seconds(
        champion.config,
        formats,
        ensemble_size(state),
        state.numerics.flop_rate,
        len(state.full_splits.test),
        views=views_per_image(
            state.spec.pipeline.test_time_shifts, champion.config.training.augment_flip
        ),
    )


def refit_seconds_per_image(run: RecordedRun, estimate: float) -> float:
    """What one training image will cost a refit of `run`'s configuration (every training
    image, no validation): the inverse of the training throughput `run` measured, else
    `estimate` (this machine's measured speed, with the loop's overhead) for a run that has not
    trained. Not its wall time per image: a trial validated after every rung or epoch, and that
    cost would shorten the refit's plan for nothing."""
    speed = run.metrics.get(MetricName.IMAGES_PER_SECOND)
    return 1.0 / float(speed) if speed else estimate


def wall_seconds_per_image(run: RecordedRun, estimate: float) -> float:
    """What one training image cost `run` in wall time: its whole training (validation,
    per-step overhead, tracing and checkpoints included) over the images it saw; `estimate`
    (from this machine's measured speed) for a run that has not trained yet. Throughput alone
    (`images_per_second`) leaves out about a tenth of a refit's wall time."""
    wall = run.metrics.get(MetricName.WALL_SECONDS)
    seen = run.metrics.get(MetricName.IMAGES_SEEN)
    if wall and seen:
        return float(wall) / float(seen)
    return estimate


def refit_epochs(state: PipelineState, champion: RecordedRun, seconds: float) -> tuple[int, float]:
    """The epochs of a refit of `champion` on every training image that fit in `seconds`, and
    the seconds per image they were planned at. The cap is ten times the experiment's whole
    schedule, not the shortened one (a screen) the champion may have won with."""
    estimate = plan.LOOP_OVERHEAD * state.numerics.seconds_per_image(champion.config)
    per_image = refit_seconds_per_image(champion, estimate)
    images = len(state.full_splits.train) + len(state.full_splits.val)
    schedule = max(champion.config.training.epochs, full_schedule_epochs(state))
    return plan.final_epochs(seconds, images, per_image, schedule), per_image


def planned_epochs(state: PipelineState, champion: RecordedRun, deadline: Deadline) -> int:
    """The refit's epochs: planned once from the measured speed, then kept (resumable)."""
    tracker = state.tracker
    run = tracker.get_run(state.parent_run_id)
    stored = json.loads(run.data.tags.get(TagKey.PIPELINE_PLAN, "{}")) if run else {}
    if stored.get("champion") == champion.run_id:
        return int(stored["epochs"])
    seconds = deadline.remaining() - _reserve(state, champion, len(state.spec.pipeline.formats))
    epochs, per_image = refit_epochs(state, champion, seconds)
    planned = {
        "champion": champion.run_id,
        "epochs": epochs,
        "wall_seconds_per_image": per_image,
        "seconds": seconds,
    }
    RunHandle(tracker.client, state.parent_run_id).set_tags(
        {TagKey.PIPELINE_PLAN: json.dumps(planned)}
    )
    return epochs


def _kept(state: PipelineState, sweep: SweepRecord, champion: RecordedRun) -> list[Member]:
    """The trained models search and confirmation kept, at least two where there are."""
    return kept_members(state.tracker, sweep, champion, max(2, state.spec.pipeline.ensemble))


def _deliver_kept(
    state: PipelineState,
    members: list[Member],
    sweep: SweepRecord,
    formats: tuple[str, ...],
    why: str,
) -> None:
    """Deliver the models the search and confirmation kept (complete schedules, trained on the
    search split) rather than nothing, a half-decayed refit or a shorter one."""
    state.say(
        f"final: {why}; delivering the {len(members)} model(s) kept by the search and "
        "confirmation instead"
    )
    state.outcome.ensemble = _export_ensemble(state, sweep, members, formats, "kept", None)
    state.note(
        f"final: {why}; delivered the averaged softmax of {len(members)} kept model(s) "
        "instead (trained on the search split with complete schedules)"
    )


def _export_ensemble(
    state: PipelineState,
    sweep: SweepRecord,
    members: list[Member],
    formats: tuple[str, ...],
    folder: str,
    single: ExportResult | None,
) -> Delivered:
    """The averaged softmax of `members`, exported into `out/folder` and summarised."""
    exported = export_ensemble(
        state.tracker,
        sweep,
        members,
        state.full_splits,
        out=state.out / folder,
        formats=formats,
        single=single,
        report=state.say,
        test_time_shifts=state.spec.pipeline.test_time_shifts,
    )
    return Delivered.of(exported)

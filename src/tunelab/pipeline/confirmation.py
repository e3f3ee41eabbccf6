"""Stage 2, confirmation: the top configurations retrained with fresh seeds; the best mean is
the champion, and the retrainings keep their models as ensemble members. Without a complete
trial there is nothing to confirm; when confirmation cannot run, the best trial is crowned."""

from __future__ import annotations

from tunelab.analysis.confirm import confirm_sweep
from tunelab.errors import UserError
from tunelab.pipeline.search import has_complete_trial
from tunelab.pipeline.state import PipelineState
from tunelab.record.names import TagKey
from tunelab.record.recorded import find_sweep
from tunelab.record.store import RunHandle
from tunelab.training.deadline import Deadline


def confirmation(state: PipelineState, deadline: Deadline) -> None:
    if not has_complete_trial(state):
        state.note("confirmation: the search finished no trial; nothing to confirm")
        return
    sweep = find_sweep(state.tracker, state.spec.name, state.study)
    settings = state.spec.pipeline
    try:
        confirmed = confirm_sweep(
            state.tracker,
            sweep,
            state.splits,
            top=settings.confirm_top,
            seeds=settings.confirm_seeds,
            progress=state.progress,
            report=state.say,
            deadline=deadline,
            keep_models=settings.ensemble > 0,
        )
    except UserError as error:
        state.note(f"confirmation: {error}; the champion is the best trial")
        best = sweep.tags.get(TagKey.BEST_RUN_ID)
        if best:
            RunHandle(state.tracker.client, sweep.parent_run_id).set_tags(
                {TagKey.CHAMPION_RUN_ID: best}
            )
        return
    if not confirmed.complete:
        state.note("confirmation: the deadline left some retrainings undone")
    state.say(
        f"champion: {confirmed.champion.original.label}, mean val_accuracy "
        f"{confirmed.champion.summary.mean:.4f} over "
        f"{len(confirmed.champion.summary.values)} fresh seed(s)"
    )

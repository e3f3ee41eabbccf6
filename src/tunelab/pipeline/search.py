"""Stage 1, search: the sweep until its share's deadline, starting only trials that can finish.

The sweep is the experiment's (`run_sweep`): the same study, parent run and trials as `tunelab
tune`, with the pipeline's decided precision and schedule. When the search's share cannot hold a
configuration's full schedule, the trials train complete shorter schedules (decided once,
`tunelab.pipeline.plan.search_schedule`, and recorded on the sweep); when not even one epoch
fits, the search is skipped and the final stage trains the best-known configuration.
"""

from __future__ import annotations

from tunelab.engines.launch import SweepResult, run_sweep
from tunelab.pipeline.state import PipelineState
from tunelab.record.names import TagKey
from tunelab.record.recorded import find_sweep
from tunelab.training.deadline import Deadline


def search(state: PipelineState, deadline: Deadline) -> None:
    if state.spec.schedule_epochs == 0:
        state.note(
            "search: its share could not fit one epoch of a trial on this machine: skipped; "
            "the final stage trained the best-known configuration"
        )
        return
    if not deadline.passed():
        state.say(sweep(state, deadline).summary())


def sweep(state: PipelineState, deadline: Deadline) -> SweepResult:
    """One launch of the experiment's sweep under the stage's deadline."""
    return run_sweep(
        state.spec,
        deadline=deadline,
        study_name=state.study,
        storage_url=state.storage_url,
        tracking_uri=state.tracker.tracking_uri,
        console=state.console,
        show_progress=state.show_progress,
        splits=state.splits,
        keep_models=state.spec.pipeline.ensemble >= 2,
        numerics=state.numerics,
        complete_trials=True,
        factory=state.factory,
    )


def has_complete_trial(state: PipelineState) -> bool:
    """Whether the sweep has a complete trial (its parent names a best run)."""
    sweep = find_sweep(state.tracker, state.spec.name, state.study)
    return bool(sweep.tags.get(TagKey.BEST_RUN_ID))

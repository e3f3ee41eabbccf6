"""The stages of `tunelab run`, in order, as a table: name, and the function that runs it.

Each stage takes the one state object and the deadline its share of the budget sets; the launch
(`tunelab.pipeline.launch`) walks the table from the stage the parent run records, so a killed
run resumes at the stage it reached.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tunelab.define.experiment import STAGES
from tunelab.pipeline.confirmation import confirmation
from tunelab.pipeline.final import final
from tunelab.pipeline.search import search
from tunelab.pipeline.state import PipelineState
from tunelab.training.deadline import Deadline


@dataclass(frozen=True)
class Stage:
    """One stage: its name (`pipeline.shares` has one share per name) and what it does."""

    name: str
    run: Callable[[PipelineState, Deadline], None]


TABLE: tuple[Stage, ...] = (
    Stage("search", search),
    Stage("confirmation", confirmation),
    Stage("final", final),
)
assert tuple(stage.name for stage in TABLE) == STAGES, "the table follows pipeline.shares"


def stages_from(name: str) -> tuple[Stage, ...]:
    """The stages from `name` on (a resumed pipeline starts at the stage it reached)."""
    names = [stage.name for stage in TABLE]
    return TABLE[names.index(name) :]

"""`tunelab run`: a table of stages (`stages`) over one state object (`state`), launched and
resumed under one budget (`launch`), planned from this machine's measured speed (`plan`)."""

from tunelab.pipeline.final import wall_seconds_per_image
from tunelab.pipeline.launch import Pipeline, run_pipeline, stored_summary
from tunelab.pipeline.members import ensemble_members, kept_members
from tunelab.pipeline.state import Delivered, PipelineResult, PipelineState

__all__ = [
    "Delivered",
    "Pipeline",
    "PipelineResult",
    "PipelineState",
    "ensemble_members",
    "kept_members",
    "run_pipeline",
    "stored_summary",
    "wall_seconds_per_image",
]

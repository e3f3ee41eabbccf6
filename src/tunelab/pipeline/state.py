"""The one state object of `tunelab run` (`PipelineState`) and what it delivers (`PipelineResult`).

Every stage reads and writes this object and nothing else: the experiment as decided (precision,
schedule, factory digest), the data (the search's split and every training image), the imported
factory, this machine's measured speed, the budget, the sweep's parent run, the record, and the
result being built. What must survive a killed process lives on the parent run (the stage
reached, the final plan, the ledgers), so a later launch rebuilds the same state from the record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from tunelab.define.data import Splits, published_accuracy
from tunelab.define.experiment import STAGES, ExperimentSpec
from tunelab.delivery.export import ExportResult
from tunelab.engines.numerics import Numerics
from tunelab.record.store import Tracker
from tunelab.training.factory import Factory
from tunelab.training.progress import ProgressFactory


@dataclass(frozen=True)
class Delivered:
    """One exported model as the summary shows it."""

    label: str
    run_id: str
    test_accuracy: float
    ci95_low: float
    ci95_high: float
    errors: int
    p_vs_baseline: float | None
    p_vs_single: float | None
    bundle: str
    registered: str | None

    @classmethod
    def of(cls, result: ExportResult) -> Delivered:
        registered = (
            f"{result.model_name} v{result.version}" if result.version is not None else None
        )
        return cls(
            result.label,
            result.run_id,
            result.test.accuracy,
            result.interval.low,
            result.interval.high,
            result.test.errors,
            result.baseline.p_value if result.baseline else None,
            result.versus_single.p_value if result.versus_single else None,
            str(result.folder),
            registered,
        )


@dataclass
class PipelineResult:
    """What `tunelab run` delivered, and what each stage cost."""

    experiment: str
    study: str
    parent_run_id: str
    budget_seconds: float
    spent_seconds: float
    stage_seconds: dict[str, float]
    champion: str = ""
    champion_run_id: str = ""
    confirmed_mean: float | None = None
    final_epochs: int | None = None
    single: Delivered | None = None
    ensemble: Delivered | None = None
    baseline_seconds: float | None = None
    baseline_test_accuracy: float | None = None
    notes: list[str] = field(default_factory=list)
    dataset: str = "mnist"

    @property
    def delivered(self) -> Delivered | None:
        return self.ensemble or self.single

    def lines(self) -> list[str]:
        """The summary, one line each."""
        out = [f"pipeline {self.study}: parent run {self.parent_run_id}"]
        if self.champion:
            confirmed = (
                f", confirmed mean val_accuracy {self.confirmed_mean:.4f}"
                if self.confirmed_mean is not None
                else " (not confirmed)"
            )
            out.append(f"champion: {self.champion}{confirmed}")
        out += [self._delivered_line(item) for item in (self.single, self.ensemble) if item]
        stages = ", ".join(f"{s} {self.stage_seconds.get(s, 0.0) / 60:.1f} min" for s in STAGES)
        out.append(
            f"wall time: {self.spent_seconds / 60:.1f} min of a {self.budget_seconds / 60:.1f} min "
            f"budget ({stages})"
            + (
                f"; baseline recorded first in {self.baseline_seconds / 60:.1f} min (outside)"
                if self.baseline_seconds
                else ""
            )
        )
        return out + self.notes

    def _delivered_line(self, item: Delivered) -> str:
        bar = self.baseline_test_accuracy
        text = (
            f"{item.label}: test accuracy {item.test_accuracy:.4f} "
            f"[{item.ci95_low:.4f}, {item.ci95_high:.4f}] ({item.errors} errors)"
        )
        published = published_accuracy(self.dataset)
        if item.p_vs_baseline is not None and bar is not None:
            text += (
                f"; vs baseline {bar:.4f}: {(item.test_accuracy - bar) * 100:+.2f} points, "
                f"McNemar p = {item.p_vs_baseline:.2g}"
            )
        elif published is not None:
            text += (
                f"; vs the published {published:.2%}: "
                f"{(item.test_accuracy - published) * 100:+.2f} points"
            )
        if item.p_vs_single is not None:
            text += f"; vs the single champion McNemar p = {item.p_vs_single:.2g}"
        return text + f"; bundle {item.bundle}"


@dataclass
class PipelineState:
    """Everything the stages share in one launch of `tunelab run` (see the module doc)."""

    spec: ExperimentSpec
    budget: float
    tracker: Tracker
    storage_url: str
    splits: Splits  # what the search trains and validates on
    full_splits: Splits  # every training image (train + validation): the refit's
    factory: Factory
    numerics: Numerics
    out: Path
    console: Console
    show_progress: bool
    progress: ProgressFactory
    parent_run_id: str = ""
    result: PipelineResult | None = None

    @property
    def study(self) -> str:
        return self.spec.name

    @property
    def outcome(self) -> PipelineResult:
        assert self.result is not None, "the launch sets the result first"
        return self.result

    def say(self, line: str) -> None:
        """A line for the user now (stderr)."""
        self.console.print(line, highlight=False, markup=False)

    def note(self, line: str) -> None:
        """A line for the summary (and the record)."""
        self.outcome.notes.append(line)

"""`tunelab run`: from an experiment file to a verified champion under one wall-clock budget.

Three stages share the budget (the experiment's `pipeline.shares`; `tunelab.pipeline.stages`):
search, confirmation, final. Stage s must be over by `start + (share of s and the stages
before it) x budget - spent before`, measured from the start of the launch: a stage that ends
early hands its rest to the next, an overrun comes out of the next one, and no training step
starts that cannot finish in time. The budget is the running time of all launches together (a
ledger on the sweep's parent run, which also holds the stage reached and the final plan), so
the same command resumes wherever it stopped, and a finished pipeline trains nothing and prints
its result. Before anything is recorded, this machine's speed is measured (the precision
decided) and a budget too small for one epoch of the experiment's model is refused; the
baseline is a reference recorded once per dataset and store, outside the budget.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console

from tunelab.console import user_console
from tunelab.define.data import Splits, published_accuracy
from tunelab.define.experiment import ExperimentSpec
from tunelab.define.run_config import RunConfig
from tunelab.engines.agreement import CONFIRMED, FINAL, Agreement
from tunelab.engines.launch import decide_numerics, resolve_storage
from tunelab.engines.numerics import Numerics, measure_numerics, representative_config
from tunelab.engines.sweep import SweepTracker, find_baseline_bar
from tunelab.errors import UserError
from tunelab.pipeline import plan
from tunelab.pipeline.stages import TABLE, stages_from
from tunelab.pipeline.state import Delivered, PipelineResult, PipelineState
from tunelab.record.ledger import Ledger
from tunelab.record.names import Artifact, MetricName, TagKey
from tunelab.record.recorded import find_sweep, load_recorded_run
from tunelab.record.store import RunHandle, Tracker
from tunelab.training.deadline import Deadline
from tunelab.training.factory import FactoryError
from tunelab.training.precision import FLOAT32
from tunelab.training.prepare import load_both_splits, prepare
from tunelab.training.progress import ProgressFactory, no_progress

RUN_LEDGER = "run"
DONE = "done"


def stage_deadline(
    launch_start: float, spent_before: float, budget: float, shares: Any, stage: str
) -> Deadline:
    """When `stage` must be over: its cumulative share of the budget, counted from the launch."""
    return Deadline(launch_start + shares.cumulative(stage) * budget - spent_before)


class Pipeline:
    """One launch of `tunelab run`: walks the stage table over one state object."""

    def __init__(self, state: PipelineState) -> None:
        self.state = state
        self.tracker = state.tracker

    def parent_run(self) -> str:
        state = self.state
        baseline, _ = find_baseline_bar(self.tracker, state.splits)
        sweep = SweepTracker(
            self.tracker, state.spec, state.study, state.spec.engine.name, baseline, state.numerics
        )
        found = sweep.find_parent()
        if found is not None:
            return found
        with sweep.parent(state.splits) as parent:
            parent.set_tags({TagKey.PIPELINE_STAGE: TABLE[0].name})
            return parent.run_id

    def stage(self, parent: str) -> str:
        run = self.tracker.get_run(parent)
        first = TABLE[0].name
        return str(run.data.tags.get(TagKey.PIPELINE_STAGE, first)) if run else first

    def run(self) -> PipelineResult:
        state = self.state
        parent = state.parent_run_id = self.parent_run()
        reached = self.stage(parent)
        if reached == DONE:
            return self.recorded_result(parent)
        ledger = Ledger(self.tracker, parent, RUN_LEDGER)
        spent_before = ledger.spent()
        state.result = PipelineResult(
            state.spec.name,
            state.study,
            parent,
            state.budget,
            spent_before,
            {},
            dataset=state.spec.dataset,
        )
        if spent_before >= state.budget:
            raise UserError(
                f"the budget ({state.budget / 60:.1f} min) was spent by earlier launches "
                f"(stage {reached}): give a larger --budget to finish"
            )
        shares = state.spec.pipeline.shares
        names = [stage.name for stage in TABLE]
        with ledger.launch() as launch:
            for stage in stages_from(reached):
                deadline = stage_deadline(
                    launch.start, spent_before, state.budget, shares, stage.name
                )
                until = time.strftime("%H:%M:%S", time.localtime(deadline.at))
                left = max(0.0, deadline.remaining()) / 60
                state.say(f"{stage.name}: until {until} ({left:.1f} min)")
                with Ledger(self.tracker, parent, f"{RUN_LEDGER}.{stage.name}").launch():
                    stage.run(state, deadline)
                launch.touch(force=True)
                index = names.index(stage.name)
                following = names[index + 1] if index + 1 < len(names) else DONE
                RunHandle(self.tracker.client, parent).set_tags({TagKey.PIPELINE_STAGE: following})
        result = state.outcome
        result.spent_seconds = ledger.spent()
        result.stage_seconds = {
            name: Ledger(self.tracker, parent, f"{RUN_LEDGER}.{name}").spent() for name in names
        }
        self.record(parent, result)
        return result

    def record(self, parent: str, result: PipelineResult) -> None:
        state = self.state
        sweep = find_sweep(self.tracker, state.spec.name, state.study)
        champion_id = sweep.tags.get(TagKey.CHAMPION_RUN_ID)
        if champion_id:
            champion = load_recorded_run(self.tracker, champion_id)
            result.champion, result.champion_run_id = champion.label, champion_id
            result.confirmed_mean = champion.metrics.get(MetricName.CONFIRMED_MEAN)
        run = self.tracker.get_run(parent)
        planned = json.loads(run.data.tags.get(TagKey.PIPELINE_PLAN, "{}")) if run else {}
        result.final_epochs = planned.get("epochs")
        baseline = self.tracker.find_baseline(state.splits.digest)
        if baseline is not None:
            result.baseline_test_accuracy = baseline.data.metrics.get(MetricName.TEST_ACCURACY)
        sweep_record = SweepTracker(
            self.tracker, state.spec, state.study, state.spec.engine.name, None
        )
        sweep_record.parent_run_id = parent
        agreements = sweep_record.log_rank_agreements(lambda line: None)
        result.notes += agreement_notes(agreements)
        handle = RunHandle(self.tracker.client, parent)
        metrics = {
            MetricName.PIPELINE_SECONDS: result.spent_seconds,
            MetricName.PIPELINE_BUDGET: result.budget_seconds,
            **{MetricName.STAGE_SECONDS_PREFIX + s: v for s, v in result.stage_seconds.items()},
        }
        delivered = result.delivered
        if delivered is not None:
            metrics[MetricName.TEST_ACCURACY] = delivered.test_accuracy
        handle.log_metrics(metrics)
        handle.log_text(json.dumps(asdict(result), indent=1, default=str), Artifact.SUMMARY)
        self.tracker.end_run(parent, "FINISHED")

    def recorded_result(self, parent: str) -> PipelineResult:
        """A finished pipeline's result, read back (nothing is trained)."""
        data = stored_summary(self.tracker, parent)
        if data is None:
            raise UserError(f"pipeline {self.state.study} is done but its summary.json is missing")
        for key in ("single", "ensemble"):
            if data.get(key):
                data[key] = Delivered(**data[key])
        result = PipelineResult(**data)
        result.notes = [*result.notes, "(finished earlier: nothing was trained this time)"]
        return result


def agreement_notes(agreements: list[Agreement]) -> list[str]:
    """The summary's lines about rank agreement: the cheapest rung against the end, how many
    rungs rank, and the end against the confirmations."""
    to_end = [a for a in agreements if a.second == FINAL]
    lines = [f"rank agreement: {to_end[0].line()}"] if to_end else []
    if len(to_end) > 1:
        ranking = sum(a.significant for a in to_end)
        lines.append(
            f"rank agreement: {ranking} of {len(to_end)} rungs rank like the end "
            f"(significant at 5 %; {sum(a.too_few for a in to_end)} with too few trials to tell)"
        )
    lines += [f"rank agreement: {a.line()}" for a in agreements if a.second == CONFIRMED]
    return lines


def stored_summary(tracker: Tracker, parent: str) -> dict[str, Any] | None:
    """The summary.json a finished pipeline left on its sweep's parent run, as a dict (None
    when it has none): what `recorded_result` reads back and benchmarks report."""
    with tempfile.TemporaryDirectory() as tmp:
        path = tracker.download_artifact(parent, Artifact.SUMMARY, Path(tmp))
        return json.loads(path.read_text()) if path is not None else None


def run_pipeline(
    spec: ExperimentSpec,
    *,
    budget: float | None = None,
    tracking_uri: str | None = None,
    storage_url: str | None = None,
    data_file: Path | None = None,
    baseline: bool = True,
    out: Path | None = None,
    console: Console | None = None,
    show_progress: bool = True,
    progress: ProgressFactory = no_progress,
    splits: Splits | None = None,
    full_splits: Splits | None = None,
) -> PipelineResult:
    """`tunelab run`: see the module doc. `splits`/`full_splits` replace the data (tests)."""
    console = console or user_console()
    seconds = budget or spec.pipeline.budget or spec.budget.timeout
    if seconds is None:
        raise UserError(
            f"{spec.source}: pipeline.budget: give `tunelab run` a --budget (like 1h) or set "
            "pipeline.budget in the experiment file"
        )

    def say(line: str) -> None:
        console.print(line, highlight=False, markup=False)

    if splits is None or full_splits is None:
        splits, full_splits = load_both_splits(spec, data_file=data_file, report=say)
    prepared = prepare(spec, splits)
    measured = measure_numerics(prepared.spec, splits, prepared.factory)
    _check_budget_fits(prepared.spec, seconds, measured, splits, full_splits)
    tracker = Tracker(tracking_uri)  # nothing is created before the checks above
    recorded = SweepTracker(tracker, spec, spec.name, spec.engine.name, None).recorded_definition()
    recorded.check_data(splits)
    if recorded.factory_sha256 and recorded.factory_sha256 != prepared.factory.sha256:
        prepare(spec, splits, expected_sha256=recorded.factory_sha256)  # refuses in one line
    spec, numerics = decide_numerics(prepared, recorded, measured, say)
    reference = plan.longest_trial(
        representative_config(spec.with_schedule(None), splits, numerics.precision),
        spec.engine.screens,
    )
    shares = spec.pipeline.shares
    if not recorded.exists:
        spec = spec.with_schedule(
            plan.search_schedule(
                reference, numerics, len(splits.train), len(splits.val), shares.search * seconds
            )
        )
    say(
        f"run {spec.name}: budget {seconds / 60:.1f} min: search {shares.search:.0%}, "
        f"confirmation {shares.confirmation:.0%}, final model {shares.final:.0%} "
        f"(pipeline.shares in {spec.source.name}); the baseline is recorded outside the budget"
    )
    say(_search_plan(spec, reference, numerics, splits, shares.search * seconds))
    baseline_seconds = _ensure_baseline(tracker, full_splits, baseline, say, progress)
    state = PipelineState(
        spec=spec,
        budget=seconds,
        tracker=tracker,
        storage_url=resolve_storage(storage_url, spec),
        splits=splits,
        full_splits=full_splits,
        factory=prepared.factory,
        numerics=numerics,
        out=out or Path("exports") / spec.name,
        console=console,
        show_progress=show_progress,
        progress=progress,
    )
    result = Pipeline(state).run()
    result.baseline_seconds = baseline_seconds
    return result


def _check_budget_fits(
    spec: ExperimentSpec, seconds: float, numerics: Numerics, splits: Splits, full: Splits
) -> None:
    """Refuse, before anything is recorded, a budget in which no model can finish one epoch."""
    reference = representative_config(spec.with_schedule(None), splits, numerics.precision)
    images = len(full.train) + len(full.val)
    least = plan.minimum_budget(
        reference, numerics, images, len(full.test), len(spec.pipeline.formats)
    )
    if seconds >= least:
        return
    speed = numerics.choice.speeds.of(numerics.precision)
    raise UserError(
        f"budget {seconds / 60:.1f} min: too short to train one epoch of {spec.name}'s model "
        f"on {images} images and export it on this machine: needs at least {least / 60:.1f} min "
        f"(measured {speed:.0f} training images/s in {numerics.precision}); give a larger --budget"
    )


def _search_plan(
    spec: ExperimentSpec, reference: RunConfig, numerics: Numerics, splits: Splits, share: float
) -> str:
    """One line: how long a trial's schedule takes here, and what the search's share holds."""
    epoch = plan.epoch_seconds(reference, numerics, len(splits.train), len(splits.val))
    full = f"{reference.training.epochs} epochs of about {epoch:.0f} s each on this machine"
    screens = spec.engine.screens
    if spec.schedule_epochs is None:
        if screens:
            return (
                f"search: screens of complete {', '.join(map(str, screens))}-epoch schedules "
                f"(the longest: {full}); {share / 60:.1f} min for the search"
            )
        return f"search: a trial's schedule is {full}; {share / 60:.1f} min for the search"
    if spec.schedule_epochs == 0:
        return (
            f"search: skipped: a trial's schedule is {full}, and not one epoch fits the "
            f"search's {share / 60:.1f} min; the final stage trains the best-known configuration"
        )
    return (
        f"search: trials train complete {spec.schedule_epochs}-epoch schedules (warm-up and decay "
        f"scaled): the full schedule, {full}, does not fit the search's {share / 60:.1f} min"
    )


def _ensure_baseline(
    tracker: Tracker, splits: Splits, record: bool, say: Any, progress: ProgressFactory
) -> float | None:
    """Record the reference baseline first if this store has none for this data (its time is
    reported apart)."""
    if tracker.find_baseline(splits.digest) is not None:
        return None
    published = published_accuracy(splits.dataset)
    if not record:
        against = f"the published {published:.2%} only" if published is not None else "nothing"
        say(
            f"no baseline for {splits.dataset} in {tracker.shown_uri} (--no-baseline): results "
            f"are compared with {against}"
        )
        return None
    from tunelab.engines.numerics import speed_probe
    from tunelab.training.baseline import baseline_config, run_baseline

    config = baseline_config(splits)
    speed = speed_probe(config).speed(FLOAT32)
    minutes = plan.baseline_seconds(speed, len(splits.train), len(splits.val)) / 60
    say(
        f"no baseline for {splits.dataset} in {tracker.shown_uri}: recording it first (the "
        f"classic CNN on this data, 12 epochs twice; about {minutes:.0f} minutes here at the "
        f"measured {speed:.0f} images/s in float32, outside the budget)"
    )
    started = time.monotonic()
    run_baseline(splits, tracker, cfg=config, progress=progress)
    return time.monotonic() - started


__all__ = ["DONE", "FactoryError", "Pipeline", "run_pipeline", "stored_summary"]

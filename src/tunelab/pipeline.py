"""`tunelab run`: from an experiment file to a verified champion under one wall-clock budget.

Three stages share the budget (the experiment's `pipeline.shares`, by default 55 / 25 / 20 %):

1. search: the sweep (`run_sweep`) until its share's deadline or its trial budget;
2. confirmation: the top configurations retrained with fresh seeds (`confirm_sweep`), as many
   as fit; the best mean is the champion, and the retrainings keep their models as ensemble
   members;
3. final: the champion refit on every training image for as many epochs as fit before the
   deadline (planned from the champion's measured wall seconds per image, so a fixed-length
   schedule such as a cosine decay runs to its end), tested once and exported in every format;
   with `pipeline.ensemble: K`, the averaged softmax of K members is delivered too. Should the
   refit still run late (this VM's speed swings by a quarter), the models that search and
   confirmation kept are delivered instead: a result always comes out of the budget.

Stage s must be over by `start + (share of s and the stages before it) x budget - spent before`,
measured from the start of the launch: a stage that ends early hands its rest to the next, an
overrun comes out of the next one, and no training step starts that cannot finish in time. The
budget is the running time of all launches together (a ledger on the sweep's parent run, which
also holds the pipeline's stage and the final plan), so the same command resumes wherever it
stopped, and a finished pipeline trains nothing and prints its result. The baseline is a
reference recorded once per dataset and store, outside the budget.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from tunelab import plan
from tunelab.analysis.confirm import confirm_sweep
from tunelab.define.cnn import PUBLISHED_TEST_ACCURACY, CnnConfig
from tunelab.define.data import Splits, load_splits
from tunelab.define.experiment import STAGES, ExperimentSpec
from tunelab.delivery.ensemble import Member, member_from_run
from tunelab.delivery.export import ExportPaused, ExportResult, export_ensemble, export_model
from tunelab.engines.launch import SweepResult, decide_numerics, resolve_storage, run_sweep
from tunelab.engines.numerics import (
    Numerics,
    config_of,
    measure_numerics,
    representative_config,
    speed_probe,
)
from tunelab.engines.sweep import SweepTracker, find_baseline_bar
from tunelab.errors import UserError
from tunelab.record.ledger import Ledger
from tunelab.record.names import Artifact, MetricName, Role, TagKey, TrialState
from tunelab.record.recorded import (
    RecordedRun,
    SweepRecord,
    completed,
    find_sweep,
    load_recorded_run,
    ranked_by_best_val,
)
from tunelab.record.store import RunHandle, Tracker
from tunelab.training.deadline import Deadline
from tunelab.training.precision import FLOAT32
from tunelab.training.progress import ProgressFactory, no_progress

RUN_LEDGER = "run"
DONE = "done"


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
        bar = self.baseline_test_accuracy
        for item in (self.single, self.ensemble):
            if item is None:
                continue
            text = (
                f"{item.label}: test accuracy {item.test_accuracy:.4f} "
                f"[{item.ci95_low:.4f}, {item.ci95_high:.4f}] ({item.errors} errors)"
            )
            if item.p_vs_baseline is not None and bar is not None:
                text += (
                    f"; vs baseline {bar:.4f}: {(item.test_accuracy - bar) * 100:+.2f} points, "
                    f"McNemar p = {item.p_vs_baseline:.2g}"
                )
            else:
                text += (
                    f"; vs the published {PUBLISHED_TEST_ACCURACY:.2%}: "
                    f"{(item.test_accuracy - PUBLISHED_TEST_ACCURACY) * 100:+.2f} points"
                )
            if item.p_vs_single is not None:
                text += f"; vs the single champion McNemar p = {item.p_vs_single:.2g}"
            out.append(text + f"; bundle {item.bundle}")
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


def stage_deadline(
    launch_start: float, spent_before: float, budget: float, shares: Any, stage: str
) -> Deadline:
    """When `stage` must be over: its cumulative share of the budget, counted from the launch."""
    return Deadline(launch_start + shares.cumulative(stage) * budget - spent_before)


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


class Pipeline:
    """One launch of `tunelab run` for an experiment."""

    def __init__(
        self,
        spec: ExperimentSpec,
        *,
        budget: float,
        tracker: Tracker,
        storage_url: str,
        splits: Splits,
        full_splits: Splits,
        console: Console,
        show_progress: bool,
        out: Path,
        numerics: Numerics,
        progress: ProgressFactory = no_progress,
    ) -> None:
        self.spec, self.budget, self.tracker = spec, budget, tracker
        self.numerics = numerics
        self.storage_url, self.splits, self.full_splits = storage_url, splits, full_splits
        self.console, self.show_progress, self.out = console, show_progress, out
        self.progress = progress
        self.study = spec.name
        self.say: Callable[[str], None] = lambda line: console.print(line, highlight=False)

    # --- the pipeline's own record on the sweep's parent run --------------------------------

    def parent_run(self) -> str:
        baseline, _ = find_baseline_bar(self.tracker, self.splits)
        sweep = SweepTracker(
            self.tracker, self.spec, self.study, self.spec.engine.name, baseline, self.numerics
        )
        found = sweep.find_parent()
        if found is not None:
            return found
        with sweep.parent(self.splits) as parent:
            parent.set_tags({TagKey.PIPELINE_STAGE: STAGES[0]})
            return parent.run_id

    def stage(self, parent: str) -> str:
        run = self.tracker.get_run(parent)
        return str(run.data.tags.get(TagKey.PIPELINE_STAGE, STAGES[0])) if run else STAGES[0]

    def set_stage(self, parent: str, stage: str) -> None:
        RunHandle(self.tracker.client, parent).set_tags({TagKey.PIPELINE_STAGE: stage})

    # --- a launch --------------------------------------------------------------------

    def run(self) -> PipelineResult:
        parent = self.parent_run()
        if self.stage(parent) == DONE:
            return self.recorded_result(parent)
        ledger = Ledger(self.tracker, parent, RUN_LEDGER)
        spent_before = ledger.spent()
        result = PipelineResult(self.spec.name, self.study, parent, self.budget, spent_before, {})
        if spent_before >= self.budget:
            raise UserError(
                f"the budget ({self.budget / 60:.1f} min) was spent by earlier launches "
                f"(stage {self.stage(parent)}): give a larger --budget to finish"
            )
        shares = self.spec.pipeline.shares
        with ledger.launch() as launch:
            for stage in STAGES[STAGES.index(self.stage(parent)) :]:
                deadline = stage_deadline(launch.start, spent_before, self.budget, shares, stage)
                until = time.strftime("%H:%M:%S", time.localtime(deadline.at))
                left = max(0.0, deadline.remaining()) / 60
                self.say(f"[bold]{stage}[/bold]: until {until} ({left:.1f} min)")
                with Ledger(self.tracker, parent, f"{RUN_LEDGER}.{stage}").launch():
                    getattr(self, f"_{stage}")(parent, deadline, result)
                launch.touch(force=True)
                self.set_stage(
                    parent, STAGES[STAGES.index(stage) + 1] if stage != STAGES[-1] else DONE
                )
        result.spent_seconds = ledger.spent()
        result.stage_seconds = {
            s: Ledger(self.tracker, parent, f"{RUN_LEDGER}.{s}").spent() for s in STAGES
        }
        self.record(parent, result)
        return result

    def _search(self, parent: str, deadline: Deadline, result: PipelineResult) -> None:
        """The sweep until its share's deadline, starting only trials that can finish in it.

        When not even one epoch of a trial fits the share (`plan.search_schedule` gave 0), the
        search is skipped: the final stage then trains the best-known configuration.
        """
        if self.spec.schedule_epochs == 0:
            result.notes.append(
                "search: its share could not fit one epoch of a trial on this machine: skipped; "
                "the final stage trained the best-known configuration"
            )
            return
        if not deadline.passed():
            self._sweep(deadline)

    def _sweep(self, deadline: Deadline, trials: int | None = None) -> SweepResult:
        outcome = run_sweep(
            self.spec,
            trials=trials,
            deadline=deadline,
            study_name=self.study,
            storage_url=self.storage_url,
            tracking_uri=self.tracker.tracking_uri,
            console=self.console,
            show_progress=self.show_progress,
            splits=self.splits,
            keep_models=self.spec.pipeline.ensemble >= 2,
            numerics=self.numerics,
            complete_trials=True,
        )
        self.say(outcome.summary())
        return outcome

    def _has_complete_trial(self) -> bool:
        try:
            sweep = find_sweep(self.tracker, self.spec.name, self.study)
        except UserError:
            return False
        return bool(sweep.tags.get(TagKey.BEST_RUN_ID))

    def _confirmation(self, parent: str, deadline: Deadline, result: PipelineResult) -> None:
        if not self._has_complete_trial():
            result.notes.append("confirmation: the search finished no trial; nothing to confirm")
            return
        sweep = find_sweep(self.tracker, self.spec.name, self.study)
        settings = self.spec.pipeline
        try:
            confirmation = confirm_sweep(
                self.tracker,
                sweep,
                self.splits,
                top=settings.confirm_top,
                seeds=settings.confirm_seeds,
                progress=self.progress,
                report=self.say,
                deadline=deadline,
                keep_models=settings.ensemble > 0,
            )
        except UserError as error:
            result.notes.append(f"confirmation: {error}; the champion is the best trial")
            self._crown_best_trial(sweep)
            return
        if not confirmation.complete:
            result.notes.append("confirmation: the deadline left some retrainings undone")
        self.say(
            f"champion: {confirmation.champion.original.label}, mean val_accuracy "
            f"{confirmation.champion.summary.mean:.4f} over "
            f"{len(confirmation.champion.summary.values)} fresh seed(s)"
        )

    def _crown_best_trial(self, sweep: SweepRecord) -> None:
        best = sweep.tags.get(TagKey.BEST_RUN_ID)
        if best:
            RunHandle(self.tracker.client, sweep.parent_run_id).set_tags(
                {TagKey.CHAMPION_RUN_ID: best}
            )

    def _final(self, parent: str, deadline: Deadline, result: PipelineResult) -> None:
        sweep = find_sweep(self.tracker, self.spec.name, self.study)
        champion_id = sweep.tags.get(TagKey.CHAMPION_RUN_ID) or sweep.tags.get(TagKey.BEST_RUN_ID)
        if champion_id:
            champion = load_recorded_run(self.tracker, champion_id)
        else:
            champion, why = best_known_source(self.tracker, self.spec, sweep)
            result.notes.append(f"final: the search finished no trial; trained {why} instead")
        settings = self.spec.pipeline
        formats = tuple(settings.formats)
        epochs = self._planned_epochs(parent, champion, deadline, len(formats), settings.ensemble)
        self.say(f"final: {champion.label} refit on every training image for {epochs} epochs")
        reserve = plan.export_seconds(
            champion.config,
            len(formats),
            settings.ensemble,
            self.numerics.flop_rate,
            len(self.full_splits.test),
        )
        refit_deadline = Deadline(deadline.at - reserve)
        try:
            single = export_model(
                self.tracker,
                champion,
                self.full_splits,
                out=self.out / "single",
                formats=formats,
                refit=True,
                epochs=epochs,
                register=settings.ensemble < 2,
                deadline=refit_deadline,
                progress=self.progress,
                report=self.say,
            )
        except ExportPaused as error:
            self._deliver_kept(sweep, champion, formats, result, str(error))
            return
        result.single = Delivered.of(single)
        if settings.ensemble >= 2:
            members = ensemble_members(self.tracker, sweep, champion, single, settings.ensemble)
            if len(members) >= 2:
                result.ensemble = self._export_ensemble(sweep, members, formats, "ensemble", single)
            else:
                result.notes.append(
                    "ensemble: fewer than 2 trained members were available; delivered the single "
                    "champion"
                )

    def _deliver_kept(
        self,
        sweep: SweepRecord,
        champion: RecordedRun,
        formats: tuple[str, ...],
        result: PipelineResult,
        why: str,
    ) -> None:
        """The refit ran late: deliver the models the search and confirmation kept (complete
        schedules, trained on the search split) rather than nothing or a half-decayed refit."""
        count = max(2, self.spec.pipeline.ensemble)
        members = kept_members(self.tracker, sweep, champion, count)
        if not members:
            raise UserError(
                f"final stage: {why}; no trained model was kept to deliver instead: "
                "run again with a larger --budget to finish the refit"
            )
        self.say(
            f"final: {why}; delivering the {len(members)} model(s) kept by the search and "
            "confirmation instead"
        )
        result.ensemble = self._export_ensemble(sweep, members, formats, "kept", None)
        result.notes.append(
            f"final: {why}; delivered the averaged softmax of {len(members)} kept model(s) "
            "instead (trained on the search split with complete schedules)"
        )

    def _export_ensemble(
        self,
        sweep: SweepRecord,
        members: list[Member],
        formats: tuple[str, ...],
        folder: str,
        single: ExportResult | None,
    ) -> Delivered:
        """The averaged softmax of `members`, exported into `out/folder` and summarised."""
        exported = export_ensemble(
            self.tracker,
            sweep,
            members,
            self.full_splits,
            out=self.out / folder,
            formats=formats,
            single=single,
            report=self.say,
        )
        return Delivered.of(exported)

    def _planned_epochs(
        self, parent: str, champion: RecordedRun, deadline: Deadline, formats: int, members: int
    ) -> int:
        """The refit's epochs: planned once from the measured speed, then kept (resumable)."""
        run = self.tracker.get_run(parent)
        stored = json.loads(run.data.tags.get(TagKey.PIPELINE_PLAN, "{}")) if run else {}
        if stored.get("champion") == champion.run_id:
            return int(stored["epochs"])
        estimate = plan.LOOP_OVERHEAD * self.numerics.seconds_per_image(champion.config)
        per_image = wall_seconds_per_image(champion, estimate)
        images = len(self.full_splits.train) + len(self.full_splits.val)
        reserve = plan.export_seconds(
            champion.config,
            formats,
            members,
            self.numerics.flop_rate,
            len(self.full_splits.test),
        )
        seconds = deadline.remaining() - reserve
        epochs = plan.final_epochs(seconds, images, per_image, champion.config)
        planned = {
            "champion": champion.run_id,
            "epochs": epochs,
            "wall_seconds_per_image": per_image,
            "seconds": seconds,
        }
        RunHandle(self.tracker.client, parent).set_tags({TagKey.PIPELINE_PLAN: json.dumps(planned)})
        return epochs

    # --- the result on the record -----------------------------------------------------

    def record(self, parent: str, result: PipelineResult) -> None:
        sweep = find_sweep(self.tracker, self.spec.name, self.study)
        champion_id = sweep.tags.get(TagKey.CHAMPION_RUN_ID)
        if champion_id:
            champion = load_recorded_run(self.tracker, champion_id)
            result.champion, result.champion_run_id = champion.label, champion_id
            result.confirmed_mean = champion.metrics.get(MetricName.CONFIRMED_MEAN)
        run = self.tracker.get_run(parent)
        plan = json.loads(run.data.tags.get(TagKey.PIPELINE_PLAN, "{}")) if run else {}
        result.final_epochs = plan.get("epochs")
        baseline = self.tracker.find_baseline(self.splits.dataset)
        if baseline is not None:
            result.baseline_test_accuracy = baseline.data.metrics.get(MetricName.TEST_ACCURACY)
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
            raise UserError(f"pipeline {self.study} is done but its summary.json is missing")
        for key in ("single", "ensemble"):
            if data.get(key):
                data[key] = Delivered(**data[key])
        result = PipelineResult(**data)
        result.notes = [*result.notes, "(finished earlier: nothing was trained this time)"]
        return result


def stored_summary(tracker: Tracker, parent: str) -> dict[str, Any] | None:
    """The summary.json a finished pipeline left on its sweep's parent run, as a dict (None
    when it has none): what `recorded_result` reads back and benchmarks report."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = tracker.download_artifact(parent, Artifact.SUMMARY, Path(tmp))
        return json.loads(path.read_text()) if path is not None else None


def best_known_source(
    tracker: Tracker, spec: ExperimentSpec, sweep: SweepRecord
) -> tuple[RecordedRun, str]:
    """What the final stage trains when the search finished no trial, and how to name it: the
    configuration of the trial the deadline paused, else the experiment's first enqueued point,
    else the middle of its space (recorded as a `candidate` run under the sweep's parent)."""
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
    point = spec.representative_point()
    config = config_of(spec.with_schedule(None), point, spec.precision)
    tags = {
        TagKey.ROLE: Role.CANDIDATE,
        TagKey.STUDY: sweep.study,
        TagKey.ENGINE: sweep.engine,
        TagKey.SEED: str(spec.seed),
        TagKey.DATASET: spec.dataset,
    }
    with tracker.run(
        sweep.experiment, f"candidate: {why}", tags=tags, parent_run_id=sweep.parent_run_id
    ) as run:
        run.log_params(dict(point))
        run.log_config(config)
    return load_recorded_run(tracker, run.run_id), why


def ensemble_members(
    tracker: Tracker, sweep: SweepRecord, champion: RecordedRun, single: ExportResult, count: int
) -> list[Member]:
    """Up to `count` members: the champion's refit first, then `kept_members`. Nothing is
    trained for the ensemble."""
    assert single.config is not None
    members = [Member(single.run_id, f"{champion.label} refit", single.config, single.model)]
    return members + kept_members(tracker, sweep, champion, count - 1)


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
    trials = ranked_by_best_val(completed(sweep.trial_runs(tracker)))
    ranked = [*confirmations, *trials]
    for run in ranked:
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
    console = console or Console(stderr=True)
    seconds = budget or spec.pipeline.budget or spec.budget.timeout
    if seconds is None:
        raise UserError(
            f"{spec.source}: pipeline.budget: give `tunelab run` a --budget (like 1h) or set "
            "pipeline.budget in the experiment file"
        )
    if splits is None:
        splits = load_splits(
            spec.dataset,
            spec.validation_size,
            spec.split_seed,
            train_size=spec.train_size,
            user_path=data_file,
            report=lambda line: console.print(line, highlight=False),
        )
    if full_splits is None:
        full_splits = load_splits(
            spec.dataset, spec.validation_size, spec.split_seed, user_path=data_file
        )

    def say(line: str) -> None:
        console.print(line, highlight=False)

    measured = measure_numerics(spec)  # before anything is created: a refusal leaves nothing
    _check_budget_fits(
        spec,
        seconds,
        representative_config(spec.with_schedule(None), measured.precision),
        measured,
        full_splits,
    )
    tracker = Tracker(tracking_uri)
    spec, numerics, exists = decide_numerics(tracker, spec, spec.name, measured, say)
    reference = representative_config(spec.with_schedule(None), numerics.precision)
    shares = spec.pipeline.shares
    if not exists:
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
    baseline_seconds = _ensure_baseline(tracker, full_splits, baseline, console, progress)
    pipeline = Pipeline(
        spec,
        budget=seconds,
        tracker=tracker,
        storage_url=resolve_storage(storage_url, spec),
        splits=splits,
        full_splits=full_splits,
        console=console,
        show_progress=show_progress,
        out=out or Path("exports") / spec.name,
        numerics=numerics,
        progress=progress,
    )
    result = pipeline.run()
    result.baseline_seconds = baseline_seconds
    return result


def _check_budget_fits(
    spec: ExperimentSpec, seconds: float, reference: CnnConfig, numerics: Numerics, splits: Splits
) -> None:
    """Refuse, before anything is recorded, a budget in which no model can finish one epoch."""
    images = len(splits.train) + len(splits.val)
    least = plan.minimum_budget(
        reference, numerics, images, len(splits.test), len(spec.pipeline.formats)
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
    spec: ExperimentSpec, reference: CnnConfig, numerics: Numerics, splits: Splits, share: float
) -> str:
    """One line: how long a trial's schedule takes here, and what the search's share holds."""
    epoch = plan.epoch_seconds(reference, numerics, len(splits.train), len(splits.val))
    full = f"{reference.epochs} epochs of about {epoch:.0f} s each on this machine"
    if spec.schedule_epochs is None:
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
    tracker: Tracker, splits: Splits, record: bool, console: Console, progress: ProgressFactory
) -> float | None:
    """Record the reference baseline first if this store has none (its time is reported apart)."""
    if tracker.find_baseline(splits.dataset) is not None:
        return None
    if not record:
        console.print(
            f"no baseline for {splits.dataset} in {tracker.shown_uri} (--no-baseline): results "
            f"are compared with the published {PUBLISHED_TEST_ACCURACY:.2%} only",
            highlight=False,
        )
        return None
    speed = speed_probe(CnnConfig(num_classes=splits.num_classes)).speed(FLOAT32)
    minutes = plan.baseline_seconds(speed, len(splits.train), len(splits.val)) / 60
    console.print(
        f"no baseline for {splits.dataset} in {tracker.shown_uri}: recording it first (the "
        f"classic CNN, 12 epochs twice; about {minutes:.0f} minutes here at the measured "
        f"{speed:.0f} images/s in float32, outside the budget)",
        highlight=False,
    )
    from tunelab.training.baseline import run_baseline

    started = time.monotonic()
    run_baseline(splits, tracker, progress=progress)
    return time.monotonic() - started

"""What every engine records about a sweep, the same way: the parent run and its child runs.

`SweepTracker` owns the MLflow side of a sweep: it finds or creates the parent run (one per
study; a resumed sweep reuses it), opens a child run per trial with the same names and tags for
every engine, logs each trial's outcome and its distance from the baseline, keeps the parent's
summary (counts, best trial, time to beat the baseline, wall time of the sweep's launches)
current, and closes leftover RUNNING child runs of workers that died. Engines keep their own
state (an Optuna study, a KerasTuner oracle) and hand this class plain numbers.

A trial stopped by a deadline is *paused*: its run ends KILLED with `tunelab.trial_state` =
paused, its checkpoint stays, and the next launch continues it in a new run that names it
(`tunelab.retries_trial`). Paused trials are neither failures nor results.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from tunelab.define.data import Splits, published_accuracy
from tunelab.define.experiment import ExperimentSpec
from tunelab.define.run_config import RunConfig
from tunelab.define.space import Scalar
from tunelab.engines.agreement import (
    FINAL,
    SCREEN,
    Agreement,
    rung_agreements,
    screen_agreements,
)
from tunelab.engines.numerics import PRECISION_PARAM, Numerics
from tunelab.errors import UserError
from tunelab.record.ledger import Launch, Ledger
from tunelab.record.names import Artifact, MetricName, Role, TagKey, TrialState
from tunelab.record.query import Query
from tunelab.record.results import TrialResult
from tunelab.record.store import RunHandle, Tracker
from tunelab.redact import redact_text
from tunelab.text import short_value
from tunelab.training.checkpoints import Checkpoint
from tunelab.training.cost import training_flops
from tunelab.training.deadline import Deadline, StepTimer

if TYPE_CHECKING:
    from tunelab.training.inputs import StepPlan

KEY_PARAMS_IN_NAME = 3  # how many chosen params a child run's name shows
SCHEDULE_PARAM = "schedule_epochs"  # a sweep's (and each trial's) schedule length, if shortened
FACTORY_SHA_PARAM = "factory_sha256"  # the factory's source digest the sweep trains with
SWEEP_LEDGER = "sweep"


class SweepError(UserError):
    """The sweep cannot go on; the message says why and what to do (one line)."""


class TrialTakenOver(Exception):
    """Another worker failed this worker's trial and queued its retry while this one was out of
    reach (its heartbeat silent past the grace): this attempt stops, and is never finished twice.
    """


def max_trial_epochs(spec: ExperimentSpec) -> int:
    """The most epochs any trial may train: the budget cap, else the largest epochs in the space."""
    space = spec.search_space
    candidates = [int(space.fixed.get("epochs", 12))]
    for parameter in space.parameters:
        if parameter.field == "epochs":
            values = parameter.grid_values() or (parameter.high or 12,)
            candidates.append(max(int(v) for v in values))
    most = max(candidates)
    cap = spec.most_epochs()
    return min(most, cap) if cap else most


@dataclass(frozen=True)
class BaselineBar:
    """The baseline a sweep is measured against: its best validation accuracy on the same split."""

    run_id: str
    val_accuracy: float
    test_accuracy: float | None


def find_baseline_bar(tracker: Tracker, splits: Splits) -> tuple[BaselineBar | None, str]:
    """The reference baseline of the data's dataset, if it validated on the same split.

    Returns the bar (or None) and a one-line note for the user saying why there is none.
    """
    run = tracker.find_baseline(splits.digest)
    if run is None:
        published = published_accuracy(splits.dataset)
        against = f"the published {published:.2%} only" if published is not None else "nothing else"
        return None, (
            f"no baseline for {splits.dataset} yet (`tunelab baseline` on the experiment, or "
            f"`tunelab run` records it first): trials are compared with {against}"
        )
    params = run.data.params
    same_split = params.get("data_validation_size") == str(len(splits.val)) and params.get(
        "data_split_seed"
    ) == str(splits.description.get("split_seed"))
    if not same_split:
        return None, (
            f"baseline run {run.info.run_id} validated on another split "
            f"(validation_size {params.get('data_validation_size')}, split_seed "
            f"{params.get('data_split_seed')}): no validation comparison"
        )
    metrics = run.data.metrics
    bar = BaselineBar(
        run.info.run_id,
        metrics[MetricName.BEST_VAL_ACCURACY],
        metrics.get(MetricName.TEST_ACCURACY),
    )
    return bar, f"baseline {bar.run_id}: best val_accuracy {bar.val_accuracy:.4f} to beat"


@dataclass(frozen=True)
class RecordedDefinition:
    """A sweep's decisions, recorded on its parent run when it was created."""

    exists: bool
    precision: str | None = None
    schedule_epochs: int | None = None
    factory_sha256: str = ""
    data_digest: str = ""

    def check_data(self, splits: Splits) -> None:
        """Refuse to resume a sweep on data other than its own (the scores would not compare)."""
        if self.exists and self.data_digest and self.data_digest != splits.digest:
            raise SweepError(
                f"the data differs from this sweep's (SHA-256 {splits.digest[:12]} vs recorded "
                f"{self.data_digest[:12]}): resume it with the same data, or start another "
                "study (--study NAME)"
            )


@dataclass(frozen=True)
class TrialRecord:
    """One finished (or paused) trial as the parent summary and the results need it."""

    number: int
    state: str
    value: float | None
    run_id: str
    params: Mapping[str, Scalar]
    screen_epochs: int = 0  # the screen's complete schedule (`engine.screens`); 0: no screens


def count_states(records: list[TrialRecord]) -> dict[str, int]:
    """Trials per state, every state present (zero when none)."""
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAILED, TrialState.PAUSED)
    return {state: sum(r.state == state for r in records) for state in states}


class SweepTracker:
    """The MLflow record of one sweep (study): parent run, child runs, summary."""

    def __init__(
        self,
        tracker: Tracker,
        spec: ExperimentSpec,
        study: str,
        engine: str,
        baseline: BaselineBar | None,
        numerics: Numerics | None = None,
    ) -> None:
        self.tracker, self.spec, self.study, self.engine = tracker, spec, study, engine
        self.baseline, self.numerics = baseline, numerics
        self.experiment = spec.name
        self.parent_run_id: str | None = None
        self.launch: Launch | None = None  # this launch's interval on the parent, once open

    # --- parent ---------------------------------------------------------------------

    def find_parent(self) -> str | None:
        runs = self.tracker.search(self.experiment, Query.of(role=Role.SWEEP, study=self.study))
        return runs[0].info.run_id if runs else None

    @contextmanager
    def parent(
        self, splits: Splits, lock: Callable[[], AbstractContextManager[None]] = nullcontext
    ) -> Iterator[RunHandle]:
        """Open the sweep's parent run: reuse the study's one if it exists, else create it.

        Several workers may start at the same moment: finding and creating happen under `lock`
        (the study lock every worker shares), so exactly one parent run is ever created. The
        launch is recorded on it (`ledger`) from here until the block ends.
        """
        tags = {
            TagKey.ROLE: Role.SWEEP,
            TagKey.STUDY: self.study,
            TagKey.ENGINE: self.engine,
            TagKey.EXPERIMENT_FILE: str(self.spec.source),
            TagKey.SEED: str(self.spec.seed),
        }
        if self.baseline is not None:
            tags[TagKey.BASELINE_RUN_ID] = self.baseline.run_id
        with lock():
            existing = self.find_parent()
            if existing is None:
                existing = self.tracker.create_run(
                    self.experiment, f"sweep-{self.engine}-{self.study}", tags=tags
                )
                self._log_sweep_definition(RunHandle(self.tracker.client, existing), splits)
        with self.tracker.run(
            self.experiment, f"sweep-{self.engine}-{self.study}", tags=tags, resume_run_id=existing
        ) as run:
            self.parent_run_id = run.run_id
            with self.ledger().launch() as launch:
                self.launch = launch
                try:
                    yield run
                finally:
                    self.launch = None

    def ledger(self) -> Ledger:
        assert self.parent_run_id is not None, "open the parent first"
        return Ledger(self.tracker, self.parent_run_id, SWEEP_LEDGER)

    def _log_sweep_definition(self, run: RunHandle, splits: Splits) -> None:
        spec = self.spec
        run.log_params(
            {
                "engine": spec.engine.name,
                "sampler": spec.engine.sampler,
                "pruner": spec.engine.pruner,
                "tuner": spec.engine.tuner,
                "min_images": spec.engine.min_images,
                "objectives": ",".join(o.metric for o in spec.objectives),
                "budget_trials": spec.budget.trials,
                "budget_timeout_seconds": spec.budget.timeout,
                "budget_max_epochs": spec.budget.max_epochs,
                "dataset": splits.dataset,
                **{f"data_{key}": value for key, value in splits.description.items()},
                "data_validation_size": len(splits.val),
                "data_train_size": len(splits.train),
                "search_space": spec.search_space.source.name,
                "fixed": json.dumps(dict(spec.search_space.fixed)),
                SCHEDULE_PARAM: spec.schedule_epochs,
                "factory": spec.factory.factory,
                FACTORY_SHA_PARAM: spec.factory_sha256,
                **(
                    self.numerics.recorded_params()
                    if self.numerics
                    else {PRECISION_PARAM: spec.precision}
                ),
            }
        )
        if self.numerics is not None:
            run.log_metrics(self.numerics.recorded_metrics())
        run.log_dataset(splits)
        for path in (spec.source, spec.search_space.source):
            # an experiment may name its storage with a password: never record the password
            run.log_text(redact_text(path.read_text()), f"experiment/{path.name}")
        if self.baseline is not None:
            run.log_metrics({MetricName.BASELINE_VAL_ACCURACY: self.baseline.val_accuracy})

    def update_summary(
        self,
        records: list[TrialRecord],
        *,
        best: TrialRecord | None,
        beat: Mapping[str, float] | None,
        trial_seconds: float,
        flop_rate: float | None = None,
    ) -> None:
        """Counts, the best trial so far and the time to beat the baseline, on the parent."""
        assert self.parent_run_id is not None
        run = RunHandle(self.tracker.client, self.parent_run_id)
        counts = count_states(records)
        metrics: dict[str, float] = {
            MetricName.TRIALS_COMPLETE: counts[TrialState.COMPLETE],
            MetricName.TRIALS_PRUNED: counts[TrialState.PRUNED],
            MetricName.TRIALS_FAILED: counts[TrialState.FAILED],
            MetricName.TRIALS_PAUSED: counts[TrialState.PAUSED],
            MetricName.SWEEP_TRIAL_SECONDS: trial_seconds,
            MetricName.SWEEP_WALL_SECONDS: self.ledger().spent(self.launch),
        }
        if flop_rate is not None:
            metrics[MetricName.TRAINING_FLOPS] = flop_rate
        if best is not None and best.value is not None:
            metrics[MetricName.BEST_VALUE] = best.value
            metrics[MetricName.BEST_TRIAL] = best.number
            published = published_accuracy(self.spec.dataset)
            if published is not None:
                metrics[MetricName.VAL_ACCURACY_VS_PUBLISHED] = best.value - published
            if self.baseline is not None:
                metrics[MetricName.VAL_ACCURACY_VS_BASELINE] = (
                    best.value - self.baseline.val_accuracy
                )
            run.set_tags(
                {
                    TagKey.BEST_RUN_ID: best.run_id,
                    TagKey.BEST_PARAMS: json.dumps(dict(best.params), sort_keys=True),
                }
            )
        if beat:
            metrics[MetricName.SECONDS_TO_BEAT_BASELINE] = beat["seconds"]
            metrics[MetricName.EPOCHS_TO_BEAT_BASELINE] = beat["epochs"]
            metrics[MetricName.TRIAL_THAT_BEAT_BASELINE] = beat["trial"]
        run.log_metrics(metrics, step=len(records))

    def rank_agreements(self) -> list[Agreement]:
        """How the sweep's rungs rank its configurations against their ends and confirmations
        (see `tunelab.engines.agreement`), read from its trial runs."""
        curves: dict[int, list[float]] = {}
        finals: dict[int, float] = {}
        confirmed: dict[int, float] = {}
        seen: dict[int, list[float]] = {}
        screens: dict[int, tuple[int, int | None]] = {}  # trial -> (its screen, promoted from)
        for run in self.children():
            number = int(run.data.tags.get(TagKey.TRIAL_NUMBER, -1))
            scores = [
                v for _, v in self.tracker.metric_steps(run.info.run_id, MetricName.VAL_ACCURACY)
            ]
            if not scores or run.data.tags.get(TagKey.TRIAL_STATE) == TrialState.FAILED:
                continue
            curves[number] = scores
            for step, count in self.tracker.metric_steps(run.info.run_id, MetricName.IMAGES_SEEN):
                seen.setdefault(step, []).append(count)
            if run.data.tags.get(TagKey.TRIAL_STATE) == TrialState.COMPLETE:
                finals[number] = scores[-1]
            if MetricName.CONFIRMED_MEAN in run.data.metrics:
                confirmed[number] = run.data.metrics[MetricName.CONFIRMED_MEAN]
            tags = run.data.tags
            if TagKey.SCREEN_EPOCHS in tags:
                source = tags.get(TagKey.PROMOTED_FROM)
                screens[number] = (int(tags[TagKey.SCREEN_EPOCHS]), int(source) if source else None)
        positions = {step: int(sorted(v)[len(v) // 2]) for step, v in seen.items()}
        return rung_agreements(curves, finals, confirmed, positions) + screen_agreements(
            screens, finals
        )

    def log_rank_agreements(self, report: Callable[[str], None]) -> list[Agreement]:
        """Measure the rank agreement, keep it on the parent run, say what does not rank."""
        assert self.parent_run_id is not None
        found = self.rank_agreements()
        run = RunHandle(self.tracker.client, self.parent_run_id)
        metrics: dict[str, float] = {}
        for item in found:
            metrics.update(item.metrics())
        run.log_metrics(metrics)
        run.log_text(json.dumps([asdict(a) for a in found], indent=1), Artifact.RANK_AGREEMENT)
        for item in found:
            judged = item.second == FINAL or item.first.startswith(SCREEN)
            if judged and not item.significant and not item.too_few:
                report(f"rank agreement: {item.line()}")
        return found

    def recorded_flop_rate(self) -> float | None:
        """The training speed measured by earlier trials, else by this machine's speed probe
        (a first step's estimate uses it)."""
        probed = self.numerics.flop_rate if self.numerics is not None else None
        if self.parent_run_id is None:
            return probed
        run = self.tracker.get_run(self.parent_run_id)
        value = run.data.metrics.get(MetricName.TRAINING_FLOPS) if run is not None else None
        return float(value) if value else probed

    def recorded_definition(self) -> RecordedDefinition:
        """What an existing sweep decided once for all its launches and workers."""
        parent = self.find_parent()
        if parent is None:
            return RecordedDefinition(exists=False)
        run = self.tracker.get_run(parent)
        params = run.data.params if run is not None else {}
        tags = run.data.tags if run is not None else {}
        schedule = params.get(SCHEDULE_PARAM)
        return RecordedDefinition(
            exists=True,
            precision=params.get(PRECISION_PARAM),
            schedule_epochs=int(schedule) if schedule not in (None, "None", "") else None,
            factory_sha256=params.get(FACTORY_SHA_PARAM, ""),
            data_digest=tags.get(TagKey.DATASET_DIGEST, ""),
        )

    # --- children -------------------------------------------------------------------

    def run_name(self, number: int, chosen: Mapping[str, Scalar]) -> str:
        shown = list(chosen.items())[:KEY_PARAMS_IN_NAME]
        text = " ".join(f"{k}={short_value(v)}" for k, v in shown)
        return f"{self.engine} t{number:03d} {text}".strip()

    @contextmanager
    def trial(
        self,
        number: int,
        chosen: Mapping[str, Scalar],
        seed: int,
        tags: Mapping[str, str] | None = None,
    ) -> Iterator[RunHandle]:
        """A child run for one trial, nested under the parent (with the engine's `tags`)."""
        assert self.parent_run_id is not None, "open the parent first"
        run_tags = {
            **(tags or {}),
            TagKey.ROLE: Role.TRIAL,
            TagKey.STUDY: self.study,
            TagKey.ENGINE: self.engine,
            TagKey.TRIAL_NUMBER: str(number),
            TagKey.SEED: str(seed),
            TagKey.DATASET: self.spec.dataset,
        }
        with self.tracker.run(
            self.experiment,
            self.run_name(number, chosen),
            tags=run_tags,
            parent_run_id=self.parent_run_id,
        ) as run:
            run.log_params({**chosen, "trial_number": number})
            try:
                yield run
            except KeyboardInterrupt:
                run.set_tags(
                    {
                        TagKey.TRIAL_STATE: TrialState.FAILED,
                        TagKey.FAILURE_REASON: "interrupted (Ctrl-C or SIGTERM)",
                    }
                )
                raise
            except TrialTakenOver as taken:
                run.set_tags(
                    {TagKey.TRIAL_STATE: TrialState.FAILED, TagKey.FAILURE_REASON: str(taken)}
                )
                raise

    def record_trial(
        self,
        run: RunHandle,
        result: TrialResult | None,
        state: str,
        *,
        reason: str | None = None,
        pruned_at: int | None = None,
    ) -> None:
        """A trial's outcome on its child run: state, reason, summary metrics, baseline gap."""
        run.set_tags(
            {TagKey.TRIAL_STATE: state, **({TagKey.FAILURE_REASON: reason} if reason else {})}
        )
        if state == TrialState.FAILED:
            run.status_on_exit = "FAILED"
        elif state == TrialState.PAUSED:
            run.status_on_exit = "KILLED"  # stopped on purpose; the next launch continues it
        if result is not None:
            run.log_config(result.config)
            run.log_params({SCHEDULE_PARAM: result.config.training.epochs})
            run.log_training(
                result,
                title=f"trial {run.run_id[:8]}",
                reference=self.baseline.val_accuracy if self.baseline else None,
            )
            best = result.best_val_accuracy
            if best is not None:
                published = published_accuracy(self.spec.dataset)
                gaps = (
                    {MetricName.VAL_ACCURACY_VS_PUBLISHED: best - published}
                    if published is not None
                    else {}
                )
                if self.baseline is not None:
                    gaps[MetricName.VAL_ACCURACY_VS_BASELINE] = best - self.baseline.val_accuracy
                run.log_metrics(gaps)
        if pruned_at is not None:
            run.log_metrics({MetricName.PRUNED_AT_EPOCH: pruned_at})

    def log_resumed(self, run: RunHandle, earlier: Checkpoint) -> None:
        """A continued trial's run gets the resumed steps' metrics too, so its curves are whole."""
        for index in range(earlier.step):
            run.log_metrics(
                {k: v[index] for k, v in earlier.history.items() if index < len(v)},
                step=index + 1,
            )
        run.log_metrics({MetricName.RESUMED_FROM_EPOCH: earlier.step})
        run.set_tags({TagKey.RESUMED_FROM_CHECKPOINT: "true"})

    def children(self) -> list[Any]:
        """The sweep's child runs, by trial number."""
        if self.parent_run_id is None:
            return []
        runs = self.tracker.search(
            self.experiment, Query.of(role=Role.TRIAL, parent=self.parent_run_id)
        )
        return sorted(runs, key=lambda r: int(r.data.tags.get(TagKey.TRIAL_NUMBER, -1)))

    def run_ids(self) -> dict[int, str]:
        """Child run id by trial number (the latest run of a number, if it ran more than once)."""
        return {
            int(r.data.tags.get(TagKey.TRIAL_NUMBER, -1)): r.info.run_id for r in self.children()
        }

    def trial_seconds_from_runs(self) -> float:
        return float(sum(r.data.metrics.get(MetricName.WALL_SECONDS, 0.0) for r in self.children()))

    def time_to_beat_from_runs(self) -> dict[str, float] | None:
        """Trial time and epochs spent before a trial first beat the baseline (child-run record).

        Whole earlier trials (by trial number) count fully, the beating trial up to the epoch
        that beat the bar. Engines that keep this in their own state may compute it there.
        """
        seconds, epochs = 0.0, 0.0
        for run in self.children():
            metrics = run.data.metrics
            if MetricName.BEAT_BASELINE_EPOCH in metrics:
                return {
                    "seconds": seconds + metrics[MetricName.BEAT_BASELINE_SECONDS],
                    "epochs": epochs + metrics[MetricName.BEAT_BASELINE_EPOCH],
                    "trial": float(run.data.tags[TagKey.TRIAL_NUMBER]),
                }
            seconds += metrics.get(MetricName.WALL_SECONDS, 0.0)
            epochs += metrics.get(MetricName.EPOCHS_TRAINED, 0.0)
        return None

    def epoch_sink(
        self,
        run: RunHandle,
        progress: Any,
        on_beat: Callable[[int, float], None] = lambda epoch, seconds: None,
    ) -> Callable[[int, dict[str, float]], None]:
        """Per-epoch handler of a trial, the same for every engine.

        Logs the epoch's metrics (step = epoch), advances the progress display, moves this
        launch's end forward in the ledger, and the first time val_accuracy passes the
        baseline's, records when (epoch, trial seconds) on the child run and tells `on_beat`.
        """
        bar = self.baseline.val_accuracy if self.baseline else None
        state = {"seconds": 0.0, "beaten": False}

        def on_epoch(epoch: int, logs: dict[str, float]) -> None:
            run.log_metrics(logs, step=epoch)
            if self.launch is not None:
                self.launch.touch()
            state["seconds"] += logs.get(MetricName.EPOCH_SECONDS, 0.0)
            value = logs.get(MetricName.VAL_ACCURACY)
            if bar is not None and value is not None and value > bar and not state["beaten"]:
                state["beaten"] = True
                run.log_metrics(
                    {
                        MetricName.BEAT_BASELINE_EPOCH: epoch,
                        MetricName.BEAT_BASELINE_SECONDS: state["seconds"],
                    }
                )
                on_beat(epoch, state["seconds"])
            progress.epoch(epoch, logs)

        return on_epoch

    def close_orphans(self, is_dead: Callable[[int], bool]) -> int:
        """End child runs left RUNNING by a dead worker as FAILED; returns how many.

        `is_dead(trial number)` is asked after the runs are listed, so a trial another worker
        is running (or has just finished) is never closed by mistake.
        """
        if self.parent_run_id is None:
            return 0
        orphans = self.tracker.search(
            self.experiment,
            Query.of(role=Role.TRIAL, parent=self.parent_run_id, status="RUNNING"),
        )
        closed = 0
        for orphan in orphans:
            number = int(orphan.data.tags.get(TagKey.TRIAL_NUMBER, -1))
            if not is_dead(number):
                continue
            handle = RunHandle(self.tracker.client, orphan.info.run_id)
            handle.set_tags(
                {
                    TagKey.TRIAL_STATE: TrialState.FAILED,
                    TagKey.FAILURE_REASON: "the worker running it died (killed or crashed)",
                }
            )
            self.tracker.end_run(orphan.info.run_id, "FAILED")
            closed += 1
        return closed


def over_cost_cap(cfg: RunConfig, cap: float | None) -> str | None:
    """Why a configuration is not trained (it costs more than the budget allows), or None."""
    if cap is None:
        return None
    cost = training_flops(cfg) / 1e6
    if cost <= cap:
        return None
    return f"costs {cost:.0f} MFLOP per training image, over the cap of {cap:g}"


def training_seconds(
    cfg: RunConfig,
    plan: StepPlan,
    *,
    first_step: int,
    validation_images: int,
    flop_rate: float | None,
) -> float:
    """Estimated seconds of a training's steps from `first_step` on, before it has measured
    itself (the speed measured on this machine, see `tunelab.training.deadline.StepTimer`)."""
    timer = StepTimer(training_flops(cfg), validation_images, flop_rate)
    steps = plan.steps[first_step - 1 :]
    return timer.seconds_for_steps([s.images_seen - plan.images_before(s) for s in steps])


def unfinishable(
    cfg: RunConfig,
    plan: StepPlan,
    *,
    first_step: int,
    validation_images: int,
    flop_rate: float | None,
    deadline: Deadline,
) -> tuple[str, float] | None:
    """Why a trial is not started (its schedule cannot end before the deadline) and the seconds
    it would need; None when it fits. `tunelab run`'s search starts only trials it can finish."""
    need = training_seconds(
        cfg, plan, first_step=first_step, validation_images=validation_images, flop_rate=flop_rate
    )
    left = deadline.remaining()
    if need <= left:
        return None
    return (
        f"not started: its {cfg.training.epochs}-epoch schedule needs about "
        f"{need / 60:.1f} min and {max(0.0, left) / 60:.1f} min of the search are left",
        need,
    )


def best_of(records: list[TrialRecord]) -> TrialRecord | None:
    """The complete trial with the highest value (val_accuracy, the first objective)."""
    complete = [r for r in records if r.state == TrialState.COMPLETE and r.value is not None]
    return max(complete, key=lambda r: r.value or 0.0) if complete else None

"""Export the champion (or an ensemble) as a verified bundle, record it, crown it in the registry.

`export_model` takes a recorded trial (the sweep's confirmed champion, else its best trial, or a
run id), trains it again, by default on all training images (train + validation: the refit the
classic example does) with the trial's seed, optionally for a planned number of epochs, and
`deliver`s it: evaluate the test set once, write every requested format (see
`tunelab.delivery.formats`), load each back and check it against the Keras model, write a model
card, the confusion matrix and misclassified test images. `export_ensemble` delivers the
averaged softmax of several trained members the same way, with McNemar's test against the
single champion too.

Every export is an MLflow run (role `export`, nested under the sweep) holding the bundle and the
model; only when every format passes its check is the model registered, the registry alias
(`champion`) moved and the sweep's parent pointed at it. The refit checkpoints after each epoch
on its export run: an interrupted or paused export is continued by the next call. What can be
checked before training is (the output folder must be writable). Each test-set evaluation is
counted on the sweep's parent, and testing a second configuration of one sweep is warned about:
the best of several test scores is a biased estimate.

`--no-refit` retrains on the trial's own split with its seed instead: on this CPU that gives the
trial's weights bit for bit (see `tunelab reproduce`), so no trial needs to store its weights.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tunelab.analysis.stats import Interval, mcnemar_exact, wilson_interval
from tunelab.define.data import Splits
from tunelab.define.run_config import RunConfig
from tunelab.delivery.ensemble import Member, ensemble_model, snapshot_members
from tunelab.delivery.formats import PROBABILITY_TOLERANCE, FormatCheck, write_and_check
from tunelab.delivery.model_card import ModelCard
from tunelab.delivery.tta import with_test_time_shifts
from tunelab.errors import UserError
from tunelab.record.figures import confusion_counts, confusion_matrix, misclassified_examples
from tunelab.record.names import Artifact, MetricName, Role, TagKey
from tunelab.record.query import Query
from tunelab.record.recorded import RecordedRun, SweepRecord, find_sweep, load_recorded_run
from tunelab.record.results import TestEvaluation, TrialResult
from tunelab.record.store import RunHandle, Tracker, package_versions
from tunelab.training.batch_norm import IMAGES as BATCH_NORM_IMAGES
from tunelab.training.callbacks import EpochSinkCallback, fan_out
from tunelab.training.checkpoints import CheckpointWriter, load_checkpoint, remove_checkpoints
from tunelab.training.deadline import Deadline
from tunelab.training.factory import factory_of, serving_model
from tunelab.training.progress import ProgressFactory, no_progress
from tunelab.training.retrain import epochs_to_retrain, train_as_recorded
from tunelab.training.train import evaluate_test, train_and_validate

CHAMPION_ALIAS = "champion"
RUN_ID = re.compile(r"[0-9a-f]{32}")


class ExportError(UserError):
    """The export could not produce a verified bundle (one line; what was recorded is kept)."""


class ExportPaused(UserError):
    """The deadline came before the refit's last epoch; the next call continues it."""


def registered_model_name(dataset: str) -> str:
    return f"tunelab-{dataset}"


def resolve_source(
    tracker: Tracker, target: str, study: str | None = None
) -> tuple[RecordedRun, SweepRecord | None]:
    """A run id, or an experiment (file or name) whose confirmed champion / best trial to use."""
    if RUN_ID.fullmatch(target):
        return load_recorded_run(tracker, target), None
    sweep = find_sweep(tracker, target, study)
    run_id = sweep.tags.get(TagKey.CHAMPION_RUN_ID) or sweep.tags.get(TagKey.BEST_RUN_ID)
    if not run_id:
        raise ExportError(
            f"sweep {sweep.study} of {sweep.experiment} has no complete trial to export yet"
        )
    return load_recorded_run(tracker, run_id), sweep


def check_out_folder(out: Path) -> None:
    """Refuse an output folder that cannot be written, before any training starts."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".tunelab-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise ExportError(
            f"--out {out}: cannot write there ({error.strerror or error}); choose another folder"
        ) from None


@dataclass(frozen=True)
class PairedComparison:
    """McNemar's exact test of this model against another on the same test images."""

    run_id: str
    accuracy: float
    only_model: int
    only_other: int
    p_value: float


@dataclass(frozen=True)
class ExportResult:
    run_id: str
    folder: Path
    label: str
    test: TestEvaluation
    checks: list[FormatCheck]
    baseline: PairedComparison | None
    model_name: str | None
    version: str | None
    previous_version: str | None
    card: ModelCard
    interval: Interval
    versus_single: PairedComparison | None = None
    model: Any = field(default=None, repr=False)
    config: RunConfig | None = None
    # the refit's earlier cycle ends (`snapshot_cycles`), newest first: ensemble members
    snapshots: tuple[Member, ...] = field(default=(), repr=False)


def stored_predictions(tracker: Tracker, run_id: str) -> npt.NDArray[np.int64] | None:
    """A run's per-image test predictions, if it stored them."""
    with tempfile.TemporaryDirectory() as tmp:
        path = tracker.download_artifact(run_id, Artifact.TEST_PREDICTIONS, Path(tmp))
        return None if path is None else np.asarray(np.load(path), dtype=np.int64)


def compare_paired(
    tracker: Tracker, other_run: Any, splits: Splits, predictions: npt.NDArray[np.int64]
) -> PairedComparison | None:
    """McNemar against another run's stored per-image test predictions, if it has them."""
    if other_run is None:
        return None
    theirs = stored_predictions(tracker, other_run.info.run_id)
    if theirs is None or theirs.shape != predictions.shape:
        return None
    labels = splits.test.y
    result = mcnemar_exact(predictions == labels, theirs == labels)
    return PairedComparison(
        other_run.info.run_id,
        float(np.mean(theirs == labels)),
        result.only_first,
        result.only_second,
        result.p_value,
    )


def export_model(
    tracker: Tracker,
    source: RecordedRun,
    splits: Splits,
    *,
    out: Path,
    formats: tuple[str, ...],
    refit: bool = True,
    epochs: int | None = None,
    model_name: str | None = None,
    alias: str = CHAMPION_ALIAS,
    register: bool = True,
    deadline: Deadline | None = None,
    progress: ProgressFactory = no_progress,
    report: Callable[[str], None] = lambda _: None,
    test_time_shifts: int = 0,
    snapshot_cycles: int = 1,
) -> ExportResult:
    """Train the source again (refit), then deliver it; see the module doc. With
    `test_time_shifts`, the delivered model averages its image and their shifts by that many
    pixels, mirrored views too when the source trained on mirrored images
    (`tunelab.delivery.tta`); with `snapshot_cycles` > 1 the refit's schedule restarts
    that many times and the result carries the earlier cycles' ends as `snapshots`.

    Raises:
        ExportPaused: the deadline came first; the export run keeps its checkpoint.
        ExportError: training failed, or a format failed its check (nothing registered).
    """
    check_out_folder(out)
    source.data.check(splits)
    config = source.config if epochs is None else source.config.with_epochs(epochs)
    if snapshot_cycles > 1:
        config = config.with_snapshot_cycles(snapshot_cycles)
    tags = {
        TagKey.ROLE: Role.EXPORT,
        TagKey.EXPORTED_FROM_RUN_ID: source.run_id,
        TagKey.SEED: str(source.seed),
        TagKey.DATASET: splits.dataset,
        **({TagKey.STUDY: source.study} if source.study else {}),
    }
    name = f"export of {source.label}" + (" (refit on all training images)" if refit else "")
    again = _unfinished_export(tracker, source, config) if refit else None
    with (
        tempfile.TemporaryDirectory() as tmp,
        tracker.run(
            source.experiment,
            name,
            tags=tags,
            parent_run_id=source.parent_run_id,
            resume_run_id=again,
        ) as run,
    ):
        if again is None:
            run.log_config(config)
            run.log_params({"refit": refit, "formats": ",".join(formats)})
            run.log_dataset(splits.for_refit() if refit else splits)
        resume = load_checkpoint(tracker, again, Path(tmp)) if again else None
        result = _train(
            tracker,
            source,
            config,
            splits,
            run,
            refit=refit,
            resume=resume,
            deadline=deadline,
            progress=progress,
        )
        if result.paused:
            run.status_on_exit = "KILLED"
            raise ExportPaused(
                f"the deadline came after {result.epochs_trained} of {config.training.epochs} "
                "refit epochs; "
                "the same command continues it"
            )
        remove_checkpoints(tracker, run.run_id)
        serving = serving_model(result.model, config, factory_of(config))
        if test_time_shifts:
            serving = with_test_time_shifts(
                serving, test_time_shifts, mirrored=config.training.augment_flip
            )
        train_images = len(splits.train) + (len(splits.val) if refit else 0)
        card = _card_for_source(source, splits, result, refit, formats, train_images)
        snapshots = (
            snapshot_members(
                run.run_id,
                f"{source.label} refit" if refit else source.label,
                config,
                result.snapshots,
                (splits.for_refit() if refit else splits).train.x[:BATCH_NORM_IMAGES],
            )
            if result.snapshots
            else []
        )
        delivered = deliver(
            tracker,
            run,
            serving,
            splits,
            out=out,
            formats=formats,
            card=card,
            label=source.label,
            parent_run_id=source.parent_run_id,
            tested=source.run_id,
            model_name=model_name,
            alias=alias,
            register=register,
            report=report,
            config=config,
        )
        return replace(delivered, snapshots=tuple(snapshots))


def _unfinished_export(tracker: Tracker, source: RecordedRun, config: RunConfig) -> str | None:
    """An earlier refit of this source, with these epochs, that did not finish (to continue)."""
    runs = tracker.search(
        source.experiment,
        Query.of(role=Role.EXPORT).and_tags(**{TagKey.EXPORTED_FROM_RUN_ID: source.run_id}),
        newest_first=True,
    )
    for run in runs:
        if run.info.status == "FINISHED" or TagKey.ENSEMBLE_MEMBERS in run.data.tags:
            continue
        if run.data.params.get("cfg.training.epochs") == str(config.training.epochs):
            return str(run.info.run_id)  # continued from its checkpoint, if it saved one
    return None


def _train(
    tracker: Tracker,
    source: RecordedRun,
    config: RunConfig,
    splits: Splits,
    run: RunHandle,
    *,
    refit: bool,
    resume: Any,
    deadline: Deadline | None,
    progress: ProgressFactory,
) -> TrialResult:
    epochs = config.training.epochs if refit else epochs_to_retrain(tracker, source)
    title = "refit on all training images" if refit else f"retrain {source.label}"
    with progress(title, epochs) as show:
        callbacks = [EpochSinkCallback(fan_out(run.epoch_sink(), show))]
        if refit:
            result = train_and_validate(
                config,
                splits.for_refit(),
                callbacks,
                seed=source.seed,
                resume=resume,
                deadline=deadline,
                checkpoint=CheckpointWriter(tracker, run.run_id),
            )
        else:
            result = train_as_recorded(
                tracker,
                source,
                splits,
                seed=source.seed,
                callbacks=callbacks,
                replay_rounds=True,
                epochs=epochs,
            )
    run.log_training(result, title=title)
    if not result.ok and not result.paused:
        run.status_on_exit = "FAILED"
        raise ExportError(f"training the export failed: {result.failure_reason}")
    return result


def export_ensemble(
    tracker: Tracker,
    sweep: SweepRecord,
    members: list[Member],
    splits: Splits,
    *,
    out: Path,
    formats: tuple[str, ...],
    single: ExportResult | None = None,
    model_name: str | None = None,
    alias: str = CHAMPION_ALIAS,
    register: bool = True,
    report: Callable[[str], None] = lambda _: None,
    test_time_shifts: int = 0,
) -> ExportResult:
    """Deliver the averaged softmax of `members` as one model; see the module doc."""
    check_out_folder(out)
    tags = {
        TagKey.ROLE: Role.EXPORT,
        TagKey.ENSEMBLE_MEMBERS: ",".join(m.run_id for m in members),
        TagKey.DATASET: splits.dataset,
        TagKey.STUDY: sweep.study,
    }
    if single is not None:
        tags[TagKey.EXPORTED_FROM_RUN_ID] = single.run_id
    name = f"export of an ensemble of {len(members)}"
    with tracker.run(sweep.experiment, name, tags=tags, parent_run_id=sweep.parent_run_id) as run:
        model = ensemble_model(members)
        if test_time_shifts:
            mirrored = all(m.config.training.augment_flip for m in members)
            model = with_test_time_shifts(model, test_time_shifts, mirrored=mirrored)
        run.log_params({"members": len(members), "formats": ",".join(formats)})
        run.log_text(
            json.dumps([{"run_id": m.run_id, **m.config.flat()} for m in members], indent=1),
            "members.json",
        )
        card = _card_for_ensemble(members, splits, model)
        return deliver(
            tracker,
            run,
            model,
            splits,
            out=out,
            formats=formats,
            card=card,
            label=f"ensemble of {len(members)}",
            parent_run_id=sweep.parent_run_id,
            tested=None,
            model_name=model_name,
            alias=alias,
            register=register,
            report=report,
            single=single,
        )


def deliver(
    tracker: Tracker,
    run: RunHandle,
    model: Any,
    splits: Splits,
    *,
    out: Path,
    formats: tuple[str, ...],
    card: ModelCard,
    label: str,
    parent_run_id: str | None,
    tested: str | None,
    model_name: str | None,
    alias: str,
    register: bool,
    report: Callable[[str], None],
    single: ExportResult | None = None,
    config: RunConfig | None = None,
) -> ExportResult:
    """Test once, write and check every format, card and pictures; register when all pass."""
    test = evaluate_test(model, splits)
    count_test_evaluation(tracker, parent_run_id, tested, report)
    report(f"{label}: test accuracy {test.accuracy:.4f} ({test.errors} errors)")
    checks = []
    for fmt in formats:
        check = write_and_check(model, fmt, out, splits.test.x, splits.test.y, test.probabilities)
        report(
            f"{fmt}: "
            + (
                f"accuracy {check.accuracy:.4f}, largest probability difference "
                f"{check.max_probability_difference:.1e}"
                if not check.problem
                else check.problem
            )
            + ("" if check.ok else "  FAILED")
        )
        checks.append(check)
    baseline_run = tracker.find_baseline(splits.digest)
    baseline = compare_paired(tracker, baseline_run, splits, test.predictions)
    versus_single = None
    if single is not None:
        versus_single = PairedComparison(
            single.run_id,
            single.test.accuracy,
            *_discordant(test.predictions, single.test.predictions, splits),
        )
    interval = wilson_interval(test.correct, len(test.labels))
    _fill_card(card, test, interval, baseline, versus_single, checks)
    _write_pictures(out, splits, test, label)
    _log_run(run, test, interval, baseline, versus_single, checks)
    failed = [c.name for c in checks if not c.ok]
    version = previous = None
    registered_as = model_name or registered_model_name(splits.dataset)
    if not failed:
        run.log_keras_model(model, splits.test.x[:2].astype("float32"))
        if register:
            version, previous = tracker.register_model(run.run_id, registered_as, alias)
            card.registry = {"name": registered_as, "version": version, "alias": alias}
    (out / "card.json").write_text(card.as_json())
    (out / "card.md").write_text(card.as_markdown())
    run.log_folder(out, Artifact.BUNDLE_DIR)
    if failed:
        run.status_on_exit = "FAILED"
        run.set_tags({TagKey.FAILURE_REASON: f"format(s) {', '.join(failed)} disagree with Keras"})
        raise ExportError(
            f"format(s) {', '.join(failed)} failed their check against the Keras model "
            f"(tolerance {PROBABILITY_TOLERANCE:g}; see {out / 'card.md'}); nothing was registered"
        )
    if parent_run_id is not None:  # only a verified export becomes the sweep's export
        RunHandle(tracker.client, parent_run_id).set_tags({TagKey.EXPORT_RUN_ID: run.run_id})
    return ExportResult(
        run.run_id,
        out,
        label,
        test,
        checks,
        baseline,
        registered_as if register else None,
        version,
        previous,
        card,
        interval,
        versus_single,
        model,
        config,
    )


def _discordant(
    ours: npt.NDArray[np.int64], theirs: npt.NDArray[np.int64], splits: Splits
) -> tuple[int, int, float]:
    labels = splits.test.y
    result = mcnemar_exact(ours == labels, theirs == labels)
    return result.only_first, result.only_second, result.p_value


def count_test_evaluation(
    tracker: Tracker,
    parent_run_id: str | None,
    tested: str | None,
    report: Callable[[str], None],
) -> None:
    """Count one more test-set evaluation on the sweep; warn when a second config is tested."""
    if parent_run_id is None:
        return
    parent = tracker.get_run(parent_run_id)
    if parent is None:
        return
    count = int(parent.data.metrics.get(MetricName.TEST_EVALUATIONS, 0)) + 1
    configs: list[str] = json.loads(parent.data.tags.get(TagKey.TESTED_CONFIGS, "[]"))
    if tested is not None and tested not in configs:
        configs.append(tested)
    handle = RunHandle(tracker.client, parent_run_id)
    handle.log_metrics({MetricName.TEST_EVALUATIONS: count}, step=count)
    handle.set_tags({TagKey.TESTED_CONFIGS: json.dumps(configs)})
    if len(configs) > 1:
        report(
            f"warning: the test set has now scored {len(configs)} configurations of this sweep "
            f"({count} evaluations): picking the best of them by test accuracy would be tuning "
            "on the test set; choose on validation (confirm) and report the one chosen"
        )


def _log_run(
    run: RunHandle,
    test: TestEvaluation,
    interval: Interval,
    baseline: PairedComparison | None,
    versus_single: PairedComparison | None,
    checks: list[FormatCheck],
) -> None:
    metrics = {
        MetricName.TEST_ACCURACY: test.accuracy,
        MetricName.TEST_LOSS: test.loss,
        MetricName.TEST_ERRORS: test.errors,
        MetricName.TEST_ACCURACY_LOW: interval.low,
        MetricName.TEST_ACCURACY_HIGH: interval.high,
    }
    if baseline is not None:
        metrics[MetricName.TEST_ACCURACY_VS_BASELINE] = test.accuracy - baseline.accuracy
        metrics[MetricName.MCNEMAR_P_VALUE] = baseline.p_value
    if versus_single is not None:
        metrics[MetricName.MCNEMAR_P_VS_SINGLE] = versus_single.p_value
    for check in checks:
        metrics[f"format_{check.name}_accuracy"] = check.accuracy
        metrics[f"format_{check.name}_max_probability_difference"] = (
            check.max_probability_difference
        )
    run.log_metrics(metrics)
    run.log_array(test.predictions, Artifact.TEST_PREDICTIONS)
    run.log_array(test.labels, Artifact.TEST_LABELS)
    run.log_array(test.probabilities, Artifact.TEST_PROBABILITIES)


def _write_pictures(out: Path, splits: Splits, test: TestEvaluation, label: str) -> None:
    matrix = confusion_counts(test.labels, test.predictions, splits.num_classes)
    confusion_matrix(matrix, splits.class_names, title=f"{label} on the test set").savefig(
        out / "confusion_matrix.png", dpi=110
    )
    misclassified_examples(
        splits.test.x, test.labels, test.predictions, splits.class_names, title=label
    ).savefig(out / "misclassified.png", dpi=110)


def _card_for_source(
    source: RecordedRun,
    splits: Splits,
    result: TrialResult,
    refit: bool,
    formats: tuple[str, ...],
    train_images: int,
) -> ModelCard:
    confirmed = source.metrics.get(MetricName.CONFIRMED_MEAN)
    command = f"tunelab export {source.run_id} --formats {','.join(formats)}" + (
        "" if refit else " --no-refit"
    )
    if refit and result.config.training.epochs != source.config.training.epochs:
        command += f" --epochs {result.config.training.epochs}"
    return ModelCard(
        title=f"tunelab {splits.dataset} model: {source.label}",
        source={
            "run_id": source.run_id,
            "label": source.label,
            "experiment": source.experiment,
            "study": source.study,
            "engine": source.engine,
            "trial": source.trial_number,
            "best_val_accuracy": source.best_val_accuracy,
        },
        config=result.config.flat(),
        param_count=result.param_count,
        data=_data_section(splits),
        training={
            "mode": "refit on train + validation" if refit else "the trial's own split",
            "images": train_images,
            "epochs": result.epochs_trained,
            "seed": result.seed,
            "wall_seconds": result.wall_seconds,
        },
        test={},
        baseline=None,
        confirmation=None
        if confirmed is None
        else {
            "mean": confirmed,
            "std": source.metrics.get(MetricName.CONFIRMED_STD, float("nan")),
            "ci95_low": source.metrics.get(MetricName.CONFIRMED_LOW, float("nan")),
            "ci95_high": source.metrics.get(MetricName.CONFIRMED_HIGH, float("nan")),
            "seeds": int(source.metrics.get(MetricName.CONFIRMED_SEEDS, 0)),
        },
        formats=[],
        tolerance=PROBABILITY_TOLERANCE,
        versions=package_versions(),
        reproduce=command,
    )


def _card_for_ensemble(members: list[Member], splits: Splits, model: Any) -> ModelCard:
    from tunelab.text import short_value

    def summary(config: RunConfig) -> str:
        shown = {
            "factory": config.factory.rpartition(":")[2],
            "optimizer": config.training.optimizer,
            "learning_rate": config.training.learning_rate,
            "epochs": config.training.epochs,
            **dict(list(config.params.items())[:3]),
        }
        return ", ".join(f"{k}={short_value(v)}" for k, v in shown.items())

    return ModelCard(
        title=f"tunelab {splits.dataset} model: ensemble of {len(members)}",
        source={"label": f"ensemble of {len(members)}", "run_id": "", "experiment": ""},
        config={"members": [m.config.flat() for m in members]},
        param_count=int(model.count_params()),
        data=_data_section(splits),
        training={
            "mode": "members trained elsewhere (see the table)",
            "images": len(splits.train) + len(splits.val),
            "epochs": max(m.config.training.epochs for m in members),
            "seed": "per member",
            "wall_seconds": 0.0,
        },
        test={},
        baseline=None,
        confirmation=None,
        formats=[],
        tolerance=PROBABILITY_TOLERANCE,
        versions=package_versions(),
        reproduce="tunelab export EXPERIMENT --ensemble " + str(len(members)),
        members=[
            {"run_id": m.run_id, "label": m.label, "summary": summary(m.config)} for m in members
        ],
    )


def _data_section(splits: Splits) -> dict[str, Any]:
    return {
        "dataset": splits.dataset,
        "digest": splits.digest,
        "source": splits.source,
        "validation_size": len(splits.val),
        "test_images": len(splits.test),
    }


def _fill_card(
    card: ModelCard,
    test: TestEvaluation,
    interval: Interval,
    baseline: PairedComparison | None,
    versus_single: PairedComparison | None,
    checks: list[FormatCheck],
) -> None:
    card.test = {
        "accuracy": test.accuracy,
        "errors": test.errors,
        "images": len(test.labels),
        "ci95_low": interval.low,
        "ci95_high": interval.high,
        "loss": test.loss,
    }
    card.baseline = (
        None
        if baseline is None
        else {
            "run_id": baseline.run_id,
            "accuracy": baseline.accuracy,
            "difference": test.accuracy - baseline.accuracy,
            "only_model": baseline.only_model,
            "only_baseline": baseline.only_other,
            "p_value": baseline.p_value,
        }
    )
    card.versus_single = None if versus_single is None else dict(versus_single.__dict__)
    card.formats = [
        {
            "name": c.name,
            "file": c.path.name,
            "accuracy": c.accuracy,
            "max_probability_difference": c.max_probability_difference,
            "flipped_predictions": c.flipped_predictions,
            "size_bytes": c.size_bytes,
            "ok": c.ok,
            "problem": c.problem,
        }
        for c in checks
    ]

"""Export the champion as a verified bundle, record it in MLflow and crown it in the registry.

`export_model` takes a recorded trial (the sweep's confirmed champion, else its best trial, or a
run id), trains it again, by default on all training images (train + validation: the refit the
classic example does) with the trial's seed, evaluates the test set once, and writes a bundle:
every requested format (see `tunelab.delivery.formats`), loaded back and checked against the Keras model,
a model card, the confusion matrix and misclassified test images. The export is an MLflow run
(role `export`, nested under the sweep) holding the bundle and the model; unless a format fails
its check, the model is registered and the registry alias (`champion`) moves to it.

`--no-refit` retrains on the trial's own split with its seed instead: on this CPU that gives the
trial's weights bit for bit (see `tunelab reproduce`), so no trial needs to store its weights.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tunelab.training.baseline import (
    TEST_LABELS_ARTIFACT,
    TEST_PREDICTIONS_ARTIFACT,
    ProgressFactory,
    no_progress,
)
from tunelab.training.callbacks import EpochSinkCallback, fan_out
from tunelab.define.cnn import serving_model
from tunelab.define.data import Splits
from tunelab.errors import UserError
from tunelab.delivery.formats import (
    PROBABILITY_TOLERANCE,
    FormatCheck,
    check_format,
    write_format,
)
from tunelab.delivery.model_card import ModelCard
from tunelab.record.figures import confusion_counts, confusion_matrix, misclassified_examples
from tunelab.record.recorded import RecordedRun, SweepRecord, find_sweep, load_recorded_run
from tunelab.training.retrain import epochs_to_retrain, train_as_recorded
from tunelab.analysis.stats import Interval, mcnemar_exact, wilson_interval
from tunelab.record.store import (
    MetricName,
    Role,
    RunHandle,
    TagKey,
    Tracker,
    package_versions,
)
from tunelab.training.train import TestEvaluation, TrialResult, evaluate_test, train_and_validate

CHAMPION_ALIAS = "champion"
RUN_ID = re.compile(r"[0-9a-f]{32}")
BUNDLE_ARTIFACT_DIR = "bundle"


class ExportError(UserError):
    """The export could not produce a verified bundle (one line; what was recorded is kept)."""


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


@dataclass(frozen=True)
class BaselineComparison:
    run_id: str
    accuracy: float
    only_model: int
    only_baseline: int
    p_value: float


@dataclass(frozen=True)
class ExportResult:
    run_id: str
    folder: Path
    source: RecordedRun
    test: TestEvaluation
    checks: list[FormatCheck]
    baseline: BaselineComparison | None
    model_name: str | None
    version: str | None
    previous_version: str | None
    card: ModelCard


def compare_with_baseline(
    tracker: Tracker, splits: Splits, predictions: npt.NDArray[np.int64]
) -> BaselineComparison | None:
    """McNemar against the reference baseline's stored per-image test predictions, if any."""
    run = tracker.find_baseline(splits.dataset)
    if run is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = tracker.download_artifact(run.info.run_id, TEST_PREDICTIONS_ARTIFACT, Path(tmp))
        if path is None:
            return None  # a baseline recorded before predictions were stored
        theirs = np.load(path)
    if theirs.shape != predictions.shape:
        return None
    labels = splits.test.y
    result = mcnemar_exact(predictions == labels, theirs == labels)
    return BaselineComparison(
        run.info.run_id,
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
    model_name: str | None = None,
    alias: str = CHAMPION_ALIAS,
    register: bool = True,
    progress: ProgressFactory = no_progress,
    report: Callable[[str], None] = lambda _: None,
) -> ExportResult:
    """Train, test once, write and verify every format, record, register; see the module doc."""
    source.data.check(splits)
    out.mkdir(parents=True, exist_ok=True)
    tags = {
        TagKey.ROLE: Role.EXPORT,
        TagKey.EXPORTED_FROM_RUN_ID: source.run_id,
        TagKey.SEED: str(source.seed),
        TagKey.DATASET: splits.dataset,
        **({TagKey.STUDY: source.study} if source.study else {}),
    }
    name = f"export of {source.label}" + (" (refit on all training images)" if refit else "")
    with tracker.run(source.experiment, name, tags=tags, parent_run_id=source.parent_run_id) as run:
        run.log_params({f"cfg.{k}": v for k, v in source.config.as_params().items()})
        run.log_params({"refit": refit, "formats": ",".join(formats)})
        run.log_dataset(splits.for_refit() if refit else splits)
        result = _train(tracker, source, splits, run, refit=refit, progress=progress)
        serving = serving_model(result.model, source.config)
        # the serving copy predicts exactly as the trained model (tested): test it once, and its
        # probabilities are the reference every exported format must reproduce
        test = evaluate_test(serving, splits)
        report(f"test accuracy {test.accuracy:.4f} ({test.errors} errors)")
        checks = []
        for fmt in formats:
            path = write_format(serving, fmt, out)
            check = check_format(fmt, path, splits.test.x, splits.test.y, test.probabilities)
            report(
                f"{fmt}: accuracy {check.accuracy:.4f}, largest probability difference "
                f"{check.max_probability_difference:.1e}" + ("" if check.ok else "  FAILED")
            )
            checks.append(check)
        baseline = compare_with_baseline(tracker, splits, test.predictions)
        interval = wilson_interval(test.correct, len(test.labels))
        card = _card(source, splits, result, test, interval, baseline, checks, refit, formats)
        _write_pictures(out, splits, test, source.label)
        _log_run(run, test, interval, baseline, checks)
        failed = [c.name for c in checks if not c.ok]
        version = previous = None
        registered_as = model_name or registered_model_name(splits.dataset)
        if not failed:
            run.log_keras_model(serving, splits.test.x[:2, ..., None].astype("float32"))
            if register:
                version, previous = tracker.register_model(run.run_id, registered_as, alias)
                card.registry = {"name": registered_as, "version": version, "alias": alias}
        (out / "card.json").write_text(card.as_json())
        (out / "card.md").write_text(card.as_markdown())
        run.log_folder(out, BUNDLE_ARTIFACT_DIR)
        if source.parent_run_id is not None:
            RunHandle(tracker.client, source.parent_run_id).set_tags(
                {TagKey.EXPORT_RUN_ID: run.run_id}
            )
        if failed:
            run.status_on_exit = "FAILED"
            run.set_tags(
                {TagKey.FAILURE_REASON: f"format(s) {', '.join(failed)} disagree with Keras"}
            )
            raise ExportError(
                f"format(s) {', '.join(failed)} disagree with the Keras model beyond "
                f"{PROBABILITY_TOLERANCE:g} (see {out / 'card.md'}); nothing was registered"
            )
        return ExportResult(
            run.run_id,
            out,
            source,
            test,
            checks,
            baseline,
            registered_as if register else None,
            version,
            previous,
            card,
        )


def _train(
    tracker: Tracker,
    source: RecordedRun,
    splits: Splits,
    run: RunHandle,
    *,
    refit: bool,
    progress: ProgressFactory,
) -> TrialResult:
    epochs = epochs_to_retrain(tracker, source)
    title = "refit on all training images" if refit else f"retrain {source.label}"
    with progress(title, epochs) as show:
        callbacks = [EpochSinkCallback(fan_out(run.epoch_sink(), show))]
        if refit:
            result = train_and_validate(
                source.config, splits.for_refit(), callbacks, seed=source.seed, epochs=epochs
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
    if not result.ok:
        run.status_on_exit = "FAILED"
        raise ExportError(f"training the export failed: {result.failure_reason}")
    return result


def _log_run(
    run: RunHandle,
    test: TestEvaluation,
    interval: Interval,
    baseline: BaselineComparison | None,
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
    for check in checks:
        metrics[f"format_{check.name}_accuracy"] = check.accuracy
        metrics[f"format_{check.name}_max_probability_difference"] = (
            check.max_probability_difference
        )
    run.log_metrics(metrics)
    run.log_array(test.predictions, TEST_PREDICTIONS_ARTIFACT)
    run.log_array(test.labels, TEST_LABELS_ARTIFACT)


def _write_pictures(out: Path, splits: Splits, test: TestEvaluation, label: str) -> None:
    matrix = confusion_counts(test.labels, test.predictions, splits.num_classes)
    confusion_matrix(matrix, splits.class_names, title=f"{label} on the test set").savefig(
        out / "confusion_matrix.png", dpi=110
    )
    misclassified_examples(
        splits.test.x, test.labels, test.predictions, splits.class_names, title=label
    ).savefig(out / "misclassified.png", dpi=110)


def _card(
    source: RecordedRun,
    splits: Splits,
    result: TrialResult,
    test: TestEvaluation,
    interval: Interval,
    baseline: BaselineComparison | None,
    checks: list[FormatCheck],
    refit: bool,
    formats: tuple[str, ...],
) -> ModelCard:
    confirmed = source.metrics.get(MetricName.CONFIRMED_MEAN)
    train_images = len(splits.train) + (len(splits.val) if refit else 0)
    command = f"tunelab export {source.run_id} --formats {','.join(formats)}" + (
        "" if refit else " --no-refit"
    )
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
        config=source.config.as_params(),
        param_count=result.param_count,
        data={
            "dataset": splits.dataset,
            "digest": splits.digest,
            "source": splits.source,
            "validation_size": len(splits.val),
            "test_images": len(splits.test),
        },
        training={
            "mode": "refit on train + validation" if refit else "the trial's own split",
            "images": train_images,
            "epochs": result.epochs_trained,
            "seed": result.seed,
            "wall_seconds": result.wall_seconds,
        },
        test={
            "accuracy": test.accuracy,
            "errors": test.errors,
            "images": len(test.labels),
            "ci95_low": interval.low,
            "ci95_high": interval.high,
            "loss": test.loss,
        },
        baseline=None
        if baseline is None
        else {
            "run_id": baseline.run_id,
            "accuracy": baseline.accuracy,
            "difference": test.accuracy - baseline.accuracy,
            "only_model": baseline.only_model,
            "only_baseline": baseline.only_baseline,
            "p_value": baseline.p_value,
        },
        confirmation=None
        if confirmed is None
        else {
            "mean": confirmed,
            "std": source.metrics.get(MetricName.CONFIRMED_STD, float("nan")),
            "ci95_low": source.metrics.get(MetricName.CONFIRMED_LOW, float("nan")),
            "ci95_high": source.metrics.get(MetricName.CONFIRMED_HIGH, float("nan")),
            "seeds": int(source.metrics.get(MetricName.CONFIRMED_SEEDS, 0)),
        },
        formats=[
            {
                "name": c.name,
                "file": c.path.name,
                "accuracy": c.accuracy,
                "max_probability_difference": c.max_probability_difference,
                "flipped_predictions": c.flipped_predictions,
                "size_bytes": c.size_bytes,
                "ok": c.ok,
            }
            for c in checks
        ],
        tolerance=PROBABILITY_TOLERANCE,
        versions=package_versions(),
        reproduce=command,
    )

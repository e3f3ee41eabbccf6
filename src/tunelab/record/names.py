"""Every name tunelab writes into MLflow: metric keys, tag keys, roles, states, artifact paths.

They are constants here and nowhere else (tracking/README.md documents them); code that reads or
writes the record spells them through this module, so a rename cannot leave a reader behind.
"""

from __future__ import annotations

DEFAULT_TRACKING_URI = "sqlite:///tracking/mlflow.db"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
PARENT_RUN_TAG = "mlflow.parentRunId"  # what makes the UI nest a run under its parent
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # which view the MLflow UI opens an experiment in
EXPERIMENT_KIND = "custom_model_development"  # model training, not the GenAI view
CONFIG_PARAM_PREFIX = "cfg."  # a run's config as params (for the UI); config.json is the source
PARAM_VALUE_LIMIT = 6000  # MLflow's limit on a param value's length


class Artifact:
    """Artifact paths, relative to a run's artifact root."""

    MODEL = "model"
    CONFIG = "config.json"  # the run's RunConfig (factory, parameters, training, data shape)
    HISTORY = "history.csv"
    LEARNING_CURVES = "learning_curves.png"
    TEST_PREDICTIONS = "predictions/test_predictions.npy"
    TEST_LABELS = "predictions/test_labels.npy"  # so comparisons need no data download
    TEST_PROBABILITIES = "predictions/test_probabilities.npy"
    CHECKPOINT_DIR = "checkpoint"  # per-epoch checkpoints of an unfinished training
    TRAINED_MODEL = "trained/model.weights.h5"  # a kept training's weights: an ensemble member
    BUNDLE_DIR = "bundle"
    REPORT = "report/report.html"
    CONFIRMATION = "confirmation.csv"
    SUMMARY = "summary.json"  # the one-command pipeline's result
    RANK_AGREEMENT = "rank_agreement.json"  # how the sweep's rungs rank against its ends


class MetricName:
    """Metric keys. Per-epoch ones are logged with step = epoch (1-based)."""

    LOSS = "loss"
    ACCURACY = "accuracy"
    VAL_LOSS = "val_loss"
    VAL_ACCURACY = "val_accuracy"
    EPOCH_SECONDS = "epoch_seconds"
    VALIDATION_SECONDS = "validation_seconds"
    LEARNING_RATE = "learning_rate"
    IMAGES_SEEN = "images_seen"  # training images seen by the end of the step (pruning's step)
    IMAGES_PER_SECOND = "images_per_second"  # training throughput, validation excluded
    BEST_VAL_ACCURACY = "best_val_accuracy"
    BEST_EPOCH = "best_epoch"
    EPOCHS_TRAINED = "epochs_trained"
    PARAM_COUNT = "param_count"
    TRAINING_MFLOP = "training_mflop_per_image"
    WALL_SECONDS = "wall_seconds"
    TEST_ACCURACY = "test_accuracy"
    TEST_LOSS = "test_loss"
    TEST_ERRORS = "test_errors"
    TEST_ACCURACY_VS_PUBLISHED = "test_accuracy_minus_published"
    # trials
    VAL_ACCURACY_VS_BASELINE = "best_val_accuracy_minus_baseline"
    VAL_ACCURACY_VS_PUBLISHED = "best_val_accuracy_minus_published"
    PRUNED_AT_EPOCH = "pruned_at_epoch"
    RESUMED_FROM_EPOCH = "resumed_from_epoch"  # a continued training started after this epoch
    # sweeps (parent runs)
    TRIALS_COMPLETE = "trials_complete"
    TRIALS_PRUNED = "trials_pruned"
    TRIALS_FAILED = "trials_failed"
    TRIALS_PAUSED = "trials_paused"
    BEST_VALUE = "best_value"
    BEST_TRIAL = "best_trial"
    BASELINE_VAL_ACCURACY = "baseline_val_accuracy"
    SECONDS_TO_BEAT_BASELINE = "seconds_to_beat_baseline"
    EPOCHS_TO_BEAT_BASELINE = "epochs_to_beat_baseline"
    TRIAL_THAT_BEAT_BASELINE = "trial_that_beat_baseline"
    SWEEP_TRIAL_SECONDS = "sweep_trial_seconds"
    SWEEP_WALL_SECONDS = "sweep_wall_seconds"  # the sweep's launches, summed (the budget's clock)
    TRAINING_FLOPS = "training_flop_per_second"  # measured speed, for deadline estimates
    BEAT_BASELINE_EPOCH = "beat_baseline_at_epoch"
    BEAT_BASELINE_SECONDS = "beat_baseline_after_seconds"
    TEST_EVALUATIONS = "test_set_evaluations"  # how often this sweep's models read the test set
    # retrainings (reproduction, confirmation)
    RECORDED_BEST_VAL_ACCURACY = "recorded_best_val_accuracy"
    VAL_ACCURACY_VS_RECORDED = "best_val_accuracy_minus_recorded"
    LARGEST_EPOCH_DIFFERENCE = "largest_epoch_difference_vs_recorded"
    # confirmation (fresh seeds): on each confirmed trial run, and the champion's on the parent
    CONFIRMED_MEAN = "confirmed_mean_val_accuracy"
    CONFIRMED_STD = "confirmed_val_accuracy_std"
    CONFIRMED_LOW = "confirmed_val_accuracy_ci95_low"
    CONFIRMED_HIGH = "confirmed_val_accuracy_ci95_high"
    CONFIRMED_SEEDS = "confirmed_seeds"
    CHAMPION_MEAN = "champion_mean_val_accuracy"
    CHAMPION_LOW = "champion_val_accuracy_ci95_low"
    CHAMPION_HIGH = "champion_val_accuracy_ci95_high"
    # test-set evaluation with statistics (export runs)
    TEST_ACCURACY_LOW = "test_accuracy_ci95_low"
    TEST_ACCURACY_HIGH = "test_accuracy_ci95_high"
    TEST_ACCURACY_VS_BASELINE = "test_accuracy_minus_baseline"
    MCNEMAR_P_VALUE = "mcnemar_p_value_vs_baseline"
    MCNEMAR_P_VS_SINGLE = "mcnemar_p_value_vs_single_champion"
    # the one-command pipeline (on the sweep's parent run)
    STAGE_SECONDS_PREFIX = "stage_seconds_"  # + search, confirmation, final
    PIPELINE_SECONDS = "pipeline_seconds"
    PIPELINE_BUDGET = "pipeline_budget_seconds"


class TagKey:
    """Tag keys, all under the `tunelab.` prefix so they group together in the UI."""

    ROLE = "tunelab.role"
    DATASET = "tunelab.dataset"
    DATASET_DIGEST = "tunelab.dataset_digest"  # the data's full SHA-256 (dtype, shape, bytes)
    DATASET_SOURCE = "tunelab.dataset_source"  # JSON: a built-in's name, or {npz|folder: path}
    FACTORY = "tunelab.factory"  # module:function that built the run's model
    FACTORY_SHA256 = "tunelab.factory_sha256"  # SHA-256 of that function's source file
    DATA_SOURCE = "tunelab.data_source"
    GIT_COMMIT = "tunelab.git_commit"
    GIT_DIRTY = "tunelab.git_dirty"
    VERSION_PREFIX = "tunelab.version."
    REFERENCE = "tunelab.reference"
    STATUS = "tunelab.status"
    FAILURE_REASON = "tunelab.failure_reason"
    SEED = "tunelab.seed"
    ENGINE = "tunelab.engine"
    STUDY = "tunelab.study"
    EXPERIMENT_FILE = "tunelab.experiment_file"
    TRIAL_NUMBER = "tunelab.trial"
    TRIAL_STATE = "tunelab.trial_state"
    BEST_RUN_ID = "tunelab.best_run_id"
    BEST_PARAMS = "tunelab.best_params"
    BASELINE_RUN_ID = "tunelab.baseline_run_id"
    CONTINUES_TRIAL = "tunelab.continues_trial"
    RETRAINS_RUN_ID = "tunelab.retrains_run_id"
    RETRIES_TRIAL = "tunelab.retries_trial"  # a retried or continued trial: the attempt before
    SCREEN_EPOCHS = "tunelab.screen_epochs"  # a screen's complete schedule (engine.screens)
    PROMOTED_FROM = "tunelab.promoted_from_trial"  # the trial whose screen promoted this one
    RESUMED_FROM_CHECKPOINT = "tunelab.resumed_from_checkpoint"  # "true": not bit-identical
    CHAMPION_RUN_ID = "tunelab.champion_run_id"
    CHAMPION_PARAMS = "tunelab.champion_params"
    EXPORT_RUN_ID = "tunelab.export_run_id"
    EXPORTED_FROM_RUN_ID = "tunelab.exported_from_run_id"
    ENSEMBLE_MEMBERS = "tunelab.ensemble_members"  # run ids whose models an export averages
    REPLACES_VERSION = "tunelab.replaces_version"  # registered versions: the one it took over from
    LAUNCH_PREFIX = "tunelab.launch."  # + ledger + id: "start,end" of one launch (epoch seconds)
    PIPELINE_STAGE = "tunelab.pipeline.stage"  # search, confirmation, final, done
    PIPELINE_PLAN = "tunelab.pipeline.plan"  # planned epochs of the final model (JSON)
    TESTED_CONFIGS = "tunelab.tested_configs"  # configurations of the sweep seen by the test set


class Role:
    BASELINE = "baseline"
    SWEEP = "sweep"
    TRIAL = "trial"
    REPRODUCTION = "reproduction"  # the recorded seed again
    CONFIRMATION = "confirmation"  # fresh seeds, to tell a better config from a lucky one
    EXPORT = "export"  # the champion refit on all training images, test-evaluated, exported
    CANDIDATE = "candidate"  # a configuration the final stage trains when the search found none


class TrialState:
    """Values of the tunelab.trial_state tag (the same words for every engine)."""

    COMPLETE = "complete"
    PRUNED = "pruned"
    FAILED = "failed"
    PAUSED = "paused"  # stopped at a deadline, checkpointed; the next launch continues it


def config_params(params: dict[str, object]) -> dict[str, object]:
    """A config's fields as the `cfg.`-prefixed params the UI compares column by column."""
    return {f"{CONFIG_PARAM_PREFIX}{key}": value for key, value in params.items()}

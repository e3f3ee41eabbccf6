"""Experiments: a YAML file validated by `ExperimentFile` into a runnable `ExperimentSpec`.

An experiment says what to search (a search-space file), with which model factory (`model:`,
default the built-in CNN), on which data (a built-in dataset, or a user's `.npz` or image
folder), with which engine and algorithms, within which budget and seed; which known-good points
to try first (`enqueue`); at which numeric precision every model trains; and how `tunelab run`
divides one wall-clock budget between searching, confirming and training the final model
(`pipeline`). Names of engines, samplers, pruners and tuners are the keys of
`tunelab.define.algorithms`' registries, so validation and dispatch cannot disagree. Every
problem found here is one line, `file: field: problem (got value)`; what needs the data or the
factory's code (shapes, signatures) is checked before any run starts by
`tunelab.training.prepare`.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    NonNegativeInt,
    PositiveInt,
    StrictStr,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from tunelab.define.algorithms import ENGINES, PRUNERS, SAMPLERS, TUNERS
from tunelab.define.cnn import check_fits, parse_cnn
from tunelab.define.data import DATASET_INFO, DatasetName, validation_count
from tunelab.define.files import (
    DURATION_PATTERN,
    ConfigError,
    duration_seconds,
    read_model,
)
from tunelab.define.model import FactoryRef, ModelSpec
from tunelab.define.run_config import RunConfig
from tunelab.define.sources import FolderData, NpzData, UserData
from tunelab.define.space import (
    Scalar,
    SearchSpace,
    StrictModel,
    StrictScalar,
    load_search_space,
    split_values,
)
from tunelab.define.training import (
    ConfigFieldError,
    RequestedPrecision,
    fit_schedule,
    parse_training,
)
from tunelab.define.urls import check_storage_url

if TYPE_CHECKING:
    EngineName = str
    SamplerName = str
    PrunerName = str
    TunerName = str
else:  # Literal types built from the registries' keys
    EngineName = Literal[tuple(ENGINES)]
    SamplerName = Literal[tuple(SAMPLERS)]
    PrunerName = Literal[tuple(PRUNERS)]
    TunerName = Literal[tuple(TUNERS)]

OBJECTIVE_METRICS = {
    "val_accuracy": "maximize",
    "param_count": "minimize",
    "wall_seconds": "minimize",
}
ObjectiveMetric = Literal["val_accuracy", "param_count", "wall_seconds"]
EXPORT_FORMATS = ("keras", "savedmodel", "tflite", "onnx")
ExportFormat = Literal["keras", "savedmodel", "tflite", "onnx"]
STAGES = ("search", "confirmation", "final")
REPRESENTATIVE_TRIES = 50  # seeded points tried when neither the middle nor the low end builds

Duration = Annotated[
    float,
    BeforeValidator(duration_seconds),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0},
                {"type": "string", "pattern": DURATION_PATTERN},
            ],
            "description": "seconds, or a duration like 90s, 30m, 1h, 1h30m",
        }
    ),
]


class EngineSettings(StrictModel):
    """Which search library drives the trials, and its algorithms."""

    name: EngineName = Field("optuna", description="optuna or kerastuner")
    sampler: SamplerName = Field("tpe", description="Optuna sampler")
    pruner: PrunerName = Field("none", description="Optuna pruner (steps are images seen)")
    tuner: TunerName = Field("hyperband", description="KerasTuner oracle")
    startup_trials: NonNegativeInt = Field(5, description="random trials before the model")
    min_images: PositiveInt | None = Field(
        None,
        description="multi-fidelity on data size: first judge a trial after this many training "
        "images, then after reduction_factor times as many, ... up to a full epoch, then per epoch",
    )
    reduction_factor: int = Field(3, ge=2, le=10, description="eta of rungs and pruners")
    fidelity_check: bool = Field(
        False,
        description="prune at a rung only once its scores are measured to rank like the ends "
        "of the complete trials (Spearman, p < 0.05, at least 8 trials)",
    )
    screens: list[PositiveInt] = Field(
        default_factory=list,
        description="screens over complete schedules, in epochs (e.g. [1, 4]): every new "
        "configuration trains the first, shortest schedule (warm-up and decay within it); "
        "whenever a configuration is among the best 1/reduction_factor of those finished at a "
        "screen, it is trained again from scratch on the next, longer one (asynchronous "
        "successive halving). Empty: every trial trains the space's schedule",
    )

    @model_validator(mode="after")
    def _options_fit_the_engine(self) -> EngineSettings:
        traits = ENGINES[self.name]
        for key in sorted(self.model_fields_set - {"name"}):
            if key not in traits.options:
                raise ValueError(
                    f"{key}: does not apply to the {self.name} engine, which takes "
                    f"{sorted(traits.options)} (got {getattr(self, key)!r})"
                )
        if self.screens:
            if len(self.screens) < 2 or any(
                a >= b for a, b in zip(self.screens, self.screens[1:], strict=False)
            ):
                raise ValueError(
                    "screens: give at least two schedules in epochs, each longer than the one "
                    f"before, e.g. [1, 4] (got {self.screens!r})"
                )
            if self.pruner != "none":
                raise ValueError(
                    "pruner: screens already stop the weaker configurations after their short "
                    f"schedule; set pruner: none (got {self.pruner!r})"
                )
        return self


class Objective(StrictModel):
    """A metric to optimise; the direction defaults to the metric's natural one."""

    metric: ObjectiveMetric = Field(description="what to optimise")
    direction: Literal["maximize", "minimize"] | None = Field(
        None, description="default: maximize val_accuracy, minimize the others"
    )

    @property
    def goal(self) -> Literal["maximize", "minimize"]:
        default = OBJECTIVE_METRICS[self.metric]
        return self.direction or ("maximize" if default == "maximize" else "minimize")


class BudgetSettings(StrictModel):
    """When a sweep stops: trials counted, wall-clock time summed over all its launches."""

    trials: PositiveInt | None = Field(None, description="complete + pruned trials")
    timeout: Duration | None = Field(None, description="wall clock of all launches together")
    max_epochs: PositiveInt | None = Field(None, description="cap on any trial's epochs")
    max_training_mflop: float | None = Field(
        None, gt=0, description="a trial costing more per training image is pruned untrained"
    )
    max_consecutive_failures: PositiveInt = Field(5, description="stop after this many in a row")


class Shares(StrictModel):
    """How `tunelab run` divides its budget; a stage that ends early hands its rest on."""

    search: float = Field(0.55, ge=0.0, le=1.0, description="the sweep")
    confirmation: float = Field(0.25, ge=0.0, le=1.0, description="fresh-seed retrainings")
    final: float = Field(0.20, ge=0.0, le=1.0, description="refit, test, export (ensemble)")

    @model_validator(mode="after")
    def _sum_to_one(self) -> Shares:
        total = self.search + self.confirmation + self.final
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"final: the three shares must add up to 1 (got {total:.3f} in all)")
        return self

    def cumulative(self, stage: str) -> float:
        """The share of the budget spent by the end of `stage`."""
        return float(sum(getattr(self, s) for s in STAGES[: STAGES.index(stage) + 1]))


class PipelineSettings(StrictModel):
    """`tunelab run`: search -> confirmation -> final model under one budget."""

    budget: Duration | None = Field(None, description="default of `tunelab run --budget`")
    shares: Shares = Field(default_factory=Shares, description="of the budget, per stage")
    confirm_top: PositiveInt = Field(2, description="configurations confirmed")
    confirm_seeds: PositiveInt = Field(1, description="fresh seeds per configuration")
    ensemble: NonNegativeInt = Field(
        0, description="members averaged into the delivered model (0: the single champion)"
    )
    formats: list[ExportFormat] = Field(
        default_factory=lambda: _all_formats(), description="exported, each checked for parity"
    )
    snapshot_cycles: PositiveInt = Field(
        1,
        le=20,
        description="the refit's schedule restarts this many times; each earlier cycle's end "
        "joins the ensemble (1: off)",
    )
    test_time_shifts: NonNegativeInt = Field(
        0,
        le=4,
        description="delivered models average the image and its shifts by this many pixels, "
        "and the mirrored image and its shifts for models trained with augment_flip (0: off)",
    )

    @model_validator(mode="after")
    def _ensemble_size(self) -> PipelineSettings:
        if self.ensemble == 1:
            raise ValueError("ensemble: 0 for a single model, or at least 2 members (got 1)")
        if not self.formats:
            raise ValueError("formats: name at least one format (got [])")
        return self


def _all_formats() -> list[ExportFormat]:
    return ["keras", "savedmodel", "tflite", "onnx"]


class ExperimentFile(StrictModel):
    """An experiment file as written (the JSON Schema of experiments/*.yaml is made from this)."""

    name: StrictStr | None = Field(None, description="MLflow experiment and study name (file stem)")
    description: str = Field("", description="free text, logged with the sweep")
    dataset: DatasetName | NpzData | FolderData = Field(
        "mnist",
        description="mnist or fashion_mnist (fetched, verified against pinned digests), or "
        "{npz: PATH} or {folder: PATH} (your images; relative to this file)",
    )
    model: ModelSpec = Field(
        default_factory=ModelSpec, description="the model factory (default: the built-in CNN)"
    )
    validation_size: PositiveInt | float = Field(
        10_000, gt=0, description="held-out training images: a count, or a fraction below 1"
    )
    split_seed: NonNegativeInt | None = Field(None, description="None: the last images")
    train_size: PositiveInt | None = Field(None, description="fewer training images (cheap)")
    search_space: StrictStr = Field(description="search-space file, relative to this file")
    engine: EngineSettings = Field(
        default_factory=EngineSettings, description="the search library and its algorithms"
    )
    objectives: list[Objective] = Field(
        default_factory=lambda: [Objective(metric="val_accuracy")],
        description="val_accuracy first; optionally a second for a Pareto front",
    )
    budget: BudgetSettings = Field(
        default_factory=BudgetSettings, description="when a sweep stops (trials and/or time)"
    )
    seed: NonNegativeInt = Field(0, description="sampler seed; trial n trains with seed + n")
    storage: StrictStr | None = Field(None, description="Optuna storage URL")
    precision: RequestedPrecision = Field(
        "auto",
        description="numerics of every training; auto: bfloat16 only where this machine measures "
        "it faster (decided once per sweep, recorded on its parent run)",
    )
    enqueue: list[dict[str, StrictScalar]] = Field(
        default_factory=list, description="points of the space evaluated first (Optuna)"
    )
    pipeline: PipelineSettings = Field(
        default_factory=PipelineSettings, description="`tunelab run`: budget, shares, ensemble"
    )

    @field_validator("dataset", mode="before")
    @classmethod
    def _one_kind_of_data(cls, value: Any) -> Any:
        """A built-in name, or one of the two kinds of user data (one clear line if neither)."""
        if isinstance(value, dict):
            if "npz" in value:
                return NpzData.model_validate(value)
            if "folder" in value:
                return FolderData.model_validate(value)
        elif isinstance(value, str) and value in DATASET_INFO:
            return value
        raise ValueError(
            f"must be one of {list(DATASET_INFO)}, or {{npz: PATH}} or {{folder: PATH}} for "
            f"your own images (got {value!r})"
        )

    @model_validator(mode="after")
    def _check_experiment(self) -> ExperimentFile:
        if not self.objectives or len(self.objectives) > 2:
            raise ValueError(
                f"objectives: must be a list of one or two objectives (got {len(self.objectives)})"
            )
        if self.objectives[0].metric != "val_accuracy":
            raise ValueError(
                "objectives[0].metric: the first objective must be val_accuracy "
                f"(got {self.objectives[0].metric!r})"
            )
        if len({o.metric for o in self.objectives}) != len(self.objectives):
            raise ValueError(
                f"objectives: metrics repeat (got {[o.metric for o in self.objectives]!r})"
            )
        count = len(self.objectives)
        engine = self.engine
        traits = ENGINES[engine.name]
        if count not in traits.objectives:
            raise ValueError(f"objectives: the {engine.name} engine searches a single objective")
        if engine.name == "optuna":
            if engine.screens and count > 1:
                raise ValueError(
                    "engine.screens: promotion ranks configurations on val_accuracy alone; "
                    "use one objective or no screens"
                )
            if count not in PRUNERS[engine.pruner].objectives:
                raise ValueError(
                    f"engine.pruner: pruning needs a single objective; use none "
                    f"(got {engine.pruner!r})"
                )
            if count not in SAMPLERS[engine.sampler].objectives:
                fits = [n for n, a in SAMPLERS.items() if count in a.objectives]
                raise ValueError(
                    f"engine.sampler: {engine.sampler} takes "
                    f"{' or '.join(map(str, SAMPLERS[engine.sampler].objectives))} objective(s); "
                    f"with {count} use one of {fits} (got {engine.sampler!r})"
                )
        if self.enqueue and not traits.warm_start:
            raise ValueError(
                f"enqueue: the {engine.name} engine cannot evaluate given points first"
            )
        if self.budget.trials is None and self.budget.timeout is None:
            raise ValueError("budget: needs trials, timeout or both")
        if isinstance(self.validation_size, float) and self.validation_size >= 1:
            raise ValueError(
                "validation_size: a fraction must be below 1; give a whole number of images "
                f"otherwise (got {self.validation_size})"
            )
        if isinstance(self.dataset, str):  # a built-in dataset's size is known now
            total = DATASET_INFO[self.dataset].train_size
            held = validation_count(self.validation_size, total)
            if held >= total:
                raise ValueError(
                    f"validation_size: must be between 1 and {total - 1} "
                    f"(got {self.validation_size})"
                )
            if self.train_size is not None and self.train_size > total - held:
                raise ValueError(
                    f"train_size: at most {total - held} images remain after validation "
                    f"(got {self.train_size})"
                )
        if self.storage is not None:
            problem = check_storage_url(self.storage)
            if problem:
                raise ValueError(f"storage: {problem}")
        return self


@dataclass(frozen=True)
class ExperimentSpec:
    """One runnable experiment: the validated file, its search space and where it came from."""

    name: str
    dataset: str  # the data's name in records: a built-in's, or the user data's
    search_space: SearchSpace
    engine: EngineSettings
    objectives: tuple[Objective, ...]
    budget: BudgetSettings
    source: Path
    data: DatasetName | UserData = "mnist"
    factory: FactoryRef = field(default_factory=lambda: FactoryRef(ModelSpec().factory, None))
    factory_sha256: str = ""  # of the factory's source, once imported (`tunelab.training.prepare`)
    validation_size: float = 10_000
    split_seed: int | None = None
    train_size: int | None = None
    seed: int = 0
    storage: str | None = None
    description: str = ""
    precision: str = "auto"  # as requested; `with_precision` sets what a sweep decided
    enqueue: tuple[dict[str, Scalar], ...] = ()
    pipeline: PipelineSettings = field(default_factory=PipelineSettings)
    schedule_epochs: int | None = None  # a sweep's shortened schedule (`tunelab run`), if any

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def with_precision(self, precision: str) -> ExperimentSpec:
        """This experiment with its precision decided (float32 or mixed_bfloat16)."""
        return replace(self, precision=precision)

    def with_schedule(self, epochs: int | None) -> ExperimentSpec:
        """This experiment with every trial's schedule at most `epochs` long (None: as written)."""
        return replace(self, schedule_epochs=epochs)

    def with_factory_digest(self, digest: str) -> ExperimentSpec:
        """This experiment with its factory's source digest (what a sweep records)."""
        return replace(self, factory_sha256=digest)

    @property
    def data_base(self) -> Path:
        """The folder the experiment's relative paths start from."""
        return self.source.parent

    def run_config(
        self,
        chosen: Mapping[str, Scalar],
        input_shape: tuple[int, int, int],
        num_classes: int,
        *,
        screen_epochs: int | None = None,
    ) -> RunConfig:
        """What a chosen point of the space trains, on data of this shape and classes.

        The precision must be decided first (`with_precision`); a shortened schedule applies,
        and so does `screen_epochs` (the complete schedule of one of `engine.screens`).

        Raises:
            ConfigFieldError: the point cannot be built or trained (one line).
        """
        if self.precision not in ("float32", "mixed_bfloat16"):
            raise ValueError(f"decide the precision first (got {self.precision!r})")
        training, model = split_values(self.search_space.to_config_values(chosen))
        training["precision"] = self.precision
        caps = [c for c in (self.most_epochs(), screen_epochs) if c is not None]
        settings = parse_training(fit_schedule(training, min(caps) if caps else None))
        params: dict[str, Scalar] = dict(model)
        if self.factory.builtin:
            cnn = parse_cnn(params)
            check_fits(cnn, input_shape, num_classes)
            params = cnn.model_dump()
        return RunConfig(
            factory=self.factory.factory,
            factory_sha256=self.factory_sha256,
            params=params,
            training=settings,
            input_shape=input_shape,
            num_classes=num_classes,
        )

    def most_epochs(self) -> int | None:
        """The longest schedule a trial may train: the budget's cap and the sweep's schedule."""
        caps = [c for c in (self.budget.max_epochs, self.schedule_epochs) if c is not None]
        return min(caps) if caps else None

    def representative_point(
        self, input_shape: tuple[int, int, int] = (28, 28, 1), num_classes: int = 10
    ) -> dict[str, Scalar]:
        """A point that stands for the experiment's models (speed, cost): the first enqueued
        point, else the middle of the space, else the first of a few seeded points of the space
        that can be built on data of this shape (the middle of some spaces is not)."""
        decided = self.with_precision("float32")
        for point in self._candidate_points():
            try:
                decided.run_config(point, input_shape, num_classes)
            except ConfigFieldError:
                continue
            return point
        return self.search_space.middle_point()  # nothing builds: let the caller say why

    def _candidate_points(self) -> Iterator[dict[str, Scalar]]:
        if self.enqueue:
            yield dict(self.enqueue[0])
        yield self.search_space.middle_point()
        yield self.search_space.low_point()
        rng = random.Random(self.seed)
        for _ in range(REPRESENTATIVE_TRIES):
            yield self.search_space.random_point(rng)


def load_experiment(path: str | Path) -> ExperimentSpec:
    """Read and validate an experiment file and the search space it names.

    Raises:
        ConfigError: the first problem, as `file: field: problem (got value)`.
    """
    path = Path(path)
    model = read_model(path, ExperimentFile)
    space_path = (path.parent / model.search_space).resolve()
    if not space_path.is_file():
        raise ConfigError(path, "search_space", f"no such file {space_path}", model.search_space)
    factory = FactoryRef(
        model.model.factory,
        (path.parent / model.model.path).resolve() if model.model.path is not None else None,
    )
    if factory.path is not None and not factory.path.is_dir():
        raise ConfigError(path, "model.path", f"no such folder {factory.path}", model.model.path)
    space = load_search_space(space_path, factory.targets())
    _check_fits_space(path, model, space)
    return ExperimentSpec(
        name=model.name or path.stem,
        dataset=_data_name(model.dataset),
        data=model.dataset,
        factory=factory,
        search_space=space,
        engine=model.engine,
        objectives=tuple(model.objectives),
        budget=model.budget,
        source=path,
        validation_size=model.validation_size,
        split_seed=model.split_seed,
        train_size=model.train_size,
        seed=model.seed,
        storage=model.storage,
        description=model.description,
        precision=model.precision,
        enqueue=tuple(dict(point) for point in model.enqueue),
        pipeline=model.pipeline,
    )


def _check_fits_space(path: Path, model: ExperimentFile, space: SearchSpace) -> None:
    engine = model.engine
    if engine.name == "optuna" and SAMPLERS[engine.sampler].needs_finite_space:
        for parameter in space.parameters:
            if parameter.grid_values() is None:
                raise ConfigError(
                    path,
                    "engine.sampler",
                    f"{engine.sampler} needs a step for float {parameter.name}",
                    engine.sampler,
                )
    for index, point in enumerate(model.enqueue):
        problem = space.check_point(point)
        if problem is not None:
            raise ConfigError(path, f"enqueue[{index}]", problem)


def _data_name(data: DatasetName | UserData) -> str:
    """The name records give the data: a built-in's, else `name:` or the file or folder stem."""
    if isinstance(data, str):
        return data
    if data.name:
        return data.name
    where = data.npz if isinstance(data, NpzData) else data.folder
    return Path(where).stem or "data"


def experiment_json_schema() -> dict[str, Any]:
    """The JSON Schema of experiment files (written to schemas/ for editors)."""
    schema = ExperimentFile.model_json_schema()
    schema["title"] = "tunelab experiment"
    return schema

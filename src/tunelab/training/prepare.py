"""An experiment made ready to train: its data loaded, its factory imported, both checked.

`load_experiment` checks what a file says without running anything; what needs the data or the
factory's code is checked here, before any run starts (architecture rule 4), each problem as one
line: the data's own problems (`tunelab.define.sources`), a factory that cannot be imported or
called, a parameter it does not take or requires, a model that is not a Keras model, does not
output one probability per class, or compiles itself while the space also searches its
optimizer, and enqueued points that cannot be built or cost more than the budget allows.

Naming a factory runs its module's code: `prepare` imports it (from `model.path`, put first on
the import path). Nothing else in tunelab imports a user's module, and nothing read back from a
record is imported (`tunelab.training.factory.factory_of` only finds what an experiment file
imported here).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tunelab.define.data import Splits, split_dataset
from tunelab.define.experiment import ExperimentSpec
from tunelab.define.files import ConfigError
from tunelab.define.run_config import RunConfig
from tunelab.define.sources import load_dataset
from tunelab.define.space import MODEL_PREFIX, split_values
from tunelab.define.training import COMPILE_FIELDS, ConfigFieldError
from tunelab.training.cost import training_flops
from tunelab.training.factory import Factory, FactoryError, call_factory, load_factory

PROBABILITY_TOLERANCE = 1e-2


@dataclass(frozen=True)
class Prepared:
    """An experiment ready to train: the spec (its factory's digest set), the data, the factory."""

    spec: ExperimentSpec
    splits: Splits
    factory: Factory


def load_splits_of(
    spec: ExperimentSpec,
    *,
    data_file: Path | None = None,
    whole_training_set: bool = False,
    report: Callable[[str], None] = lambda _: None,
) -> Splits:
    """The experiment's data, loaded, checked and split as it says (`whole_training_set`: the
    training subset dropped, so that train + validation is every training image)."""
    dataset = load_dataset(spec.data, spec.data_base, user_path=data_file, report=report)
    return split_dataset(
        dataset,
        validation_size=spec.validation_size,
        seed=spec.split_seed,
        train_size=None if whole_training_set else spec.train_size,
    )


def load_both_splits(
    spec: ExperimentSpec,
    *,
    data_file: Path | None = None,
    report: Callable[[str], None] = lambda _: None,
) -> tuple[Splits, Splits]:
    """The search's split and the refit's (every training image), from one load of the data."""
    dataset = load_dataset(spec.data, spec.data_base, user_path=data_file, report=report)
    search = split_dataset(
        dataset,
        validation_size=spec.validation_size,
        seed=spec.split_seed,
        train_size=spec.train_size,
    )
    whole = split_dataset(dataset, validation_size=spec.validation_size, seed=spec.split_seed)
    return search, whole


def prepare(spec: ExperimentSpec, splits: Splits, *, expected_sha256: str = "") -> Prepared:
    """Import and check the factory against the data; see the module doc.

    `expected_sha256` is the factory digest a sweep recorded (a worker joining it).

    Raises:
        ConfigError, FactoryError: one line.
    """
    factory = load_factory(spec.factory, expected_sha256)
    spec = spec.with_factory_digest(factory.sha256)
    shape, classes = splits.input_shape, splits.num_classes
    if not spec.factory.builtin:
        factory.check_names(_model_names(spec))
    decided = spec.with_precision("float32")
    point = decided.representative_point(shape, classes)
    try:
        config = decided.run_config(point, shape, classes)
    except ConfigFieldError as error:
        raise ConfigError(
            spec.source, "search_space", f"no point of it can be built: {error}"
        ) from None
    if _check_model(config, factory):  # it compiles itself: tunelab's compile settings are moot
        _refuse_compile_fields(spec)
    for index, enqueued in enumerate(spec.enqueue):
        _check_enqueued(decided, index, enqueued, shape, classes)
    return Prepared(spec, splits, factory)


def _model_names(spec: ExperimentSpec) -> set[str]:
    """The factory parameters a space sets (searched or fixed)."""
    space = spec.search_space
    names = [p.field for p in space.parameters] + list(space.fixed)
    return set(split_values({name: 0 for name in names})[1])


def _check_model(config: RunConfig, factory: Factory) -> bool:
    """Build the model once: a Keras model with one probability per class. Compiled?"""
    from tunelab.training.factory import FactoryCallError

    try:
        model = call_factory(config, factory, "float32")
    except FactoryCallError as error:
        raise FactoryError(f"model.factory: calling it failed: {error}") from None
    probe = np.zeros((2, *config.input_shape), dtype="float32")
    try:
        output = np.asarray(model(probe, training=False), dtype="float64")
    except Exception as error:  # the user's model cannot run on the data's images
        raise FactoryError(
            f"model.factory: {config.factory}'s model cannot take images of shape "
            f"{config.input_shape}: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
        ) from None
    sums = output.sum(axis=-1)
    if output.min() < -PROBABILITY_TOLERANCE or np.abs(sums - 1).max() > PROBABILITY_TOLERANCE:
        raise FactoryError(
            f"model.factory: {config.factory}'s model outputs do not look like probabilities "
            f"(they sum to {sums[0]:.3g}); end it with a softmax layer"
        )
    return bool(getattr(model, "compiled", False))


def _refuse_compile_fields(spec: ExperimentSpec) -> None:
    """A factory that compiles its model keeps its optimizer and loss: the space must not set
    what tunelab would compile with."""
    space = spec.search_space
    named = [(f"parameters.{p.name}", p.field) for p in space.parameters]
    named += [(f"fixed.{name}", name) for name in space.fixed]
    for where, target in named:
        if target in COMPILE_FIELDS and not target.startswith(MODEL_PREFIX):
            raise ConfigError(
                space.source,
                where,
                f"{spec.factory.factory} returns a compiled model, which keeps its own optimizer "
                "and loss; remove this from the space, or return an uncompiled model",
                target,
            )


def _check_enqueued(
    spec: ExperimentSpec,
    index: int,
    point: dict[str, bool | int | float | str],
    shape: tuple[int, int, int],
    classes: int,
) -> None:
    try:
        config = spec.run_config(point, shape, classes)
    except ConfigFieldError as error:
        raise ConfigError(spec.source, f"enqueue[{index}]", f"cannot be built: {error}") from None
    cap = spec.budget.max_training_mflop
    if cap is None:
        return
    cost = training_flops(config) / 1e6
    if cost > cap:
        raise ConfigError(
            spec.source,
            f"enqueue[{index}]",
            f"costs {cost:.0f} MFLOP per training image, over budget.max_training_mflop",
            cap,
        )

"""The search algorithms tunelab offers, by name: what validation accepts and what engines build.

Each registry maps a name to an `Algorithm`: how to build it (the search library is imported only
then) and which experiments it fits (how many objectives, whether it needs a finite space).
Experiment validation derives its accepted names from these dictionaries and the engines build
through them, so a name cannot be accepted by one and fall through a default in the other.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class SamplerContext:
    """What a sampler is built from."""

    seed: int
    startup_trials: int
    grid: Callable[[], Mapping[str, list[Any]]] = dict


@dataclass(frozen=True)
class PrunerContext:
    """What a pruner is built from; resources are training images seen (the pruning step)."""

    startup_trials: int
    min_resource: int
    max_resource: int
    reduction_factor: int


@dataclass(frozen=True)
class TunerContext:
    """What a KerasTuner oracle is built from."""

    common: Mapping[str, Any]
    max_epochs: int
    startup_trials: int
    backstop_trials: int


@dataclass(frozen=True)
class Algorithm(Generic[T]):
    """A named algorithm: its builder and the experiments it fits."""

    build: Callable[[Any], T]
    objectives: tuple[int, ...] = (1, 2)  # numbers of objectives it handles
    needs_finite_space: bool = False
    # the sampler is reseeded at every ask (seed + trials held), so no worker or later launch
    # replays another's random draws, except where the seed fixes a meaning: Optuna's grid
    # sampler shuffles its grid with it (grid id -> point)
    reseed_on_ask: bool = True
    summary: str = ""


@contextmanager
def _experimental_ok() -> Iterator[None]:
    """Multivariate/group TPE and friends are experimental; tunelab chooses them knowingly."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


def _tpe(context: SamplerContext) -> Any:
    import optuna

    with _experimental_ok():
        return optuna.samplers.TPESampler(
            seed=context.seed,
            n_startup_trials=context.startup_trials,
            multivariate=True,
            group=True,
            warn_independent_sampling=False,
        )


def _random(context: SamplerContext) -> Any:
    import optuna

    return optuna.samplers.RandomSampler(seed=context.seed)


def _cmaes(context: SamplerContext) -> Any:
    import optuna

    with _experimental_ok():
        return optuna.samplers.CmaEsSampler(
            seed=context.seed,
            n_startup_trials=context.startup_trials,
            warn_independent_sampling=False,
        )


class MissingLibrary(RuntimeError):
    """An algorithm needs a library that is not installed (the message says which and how)."""


def _gp(context: SamplerContext) -> Any:
    import optuna

    try:
        import torch  # type: ignore[import-not-found]  # noqa: F401  (Optuna's GP needs it)
    except ImportError:
        raise MissingLibrary(
            "sampler gp needs PyTorch: pip install torch (CPU build), or use tpe"
        ) from None
    with _experimental_ok():
        return optuna.samplers.GPSampler(seed=context.seed, n_startup_trials=context.startup_trials)


def _nsga2(context: SamplerContext) -> Any:
    import optuna

    return optuna.samplers.NSGAIISampler(seed=context.seed)


def _grid(context: SamplerContext) -> Any:
    import optuna

    return optuna.samplers.GridSampler(dict(context.grid()), seed=context.seed)


SAMPLERS: dict[str, Algorithm[Any]] = {
    "tpe": Algorithm(_tpe, summary="tree-structured Parzen estimator (multivariate)"),
    "random": Algorithm(_random, summary="independent uniform draws"),
    "cmaes": Algorithm(_cmaes, objectives=(1,), summary="CMA evolution strategy"),
    "gp": Algorithm(_gp, objectives=(1,), summary="Gaussian-process Bayesian optimisation"),
    "nsga2": Algorithm(_nsga2, objectives=(2,), summary="NSGA-II, for two objectives"),
    "grid": Algorithm(
        _grid,
        objectives=(1,),
        needs_finite_space=True,
        reseed_on_ask=False,
        summary="every point",
    ),
}


def _nop(context: PrunerContext) -> Any:
    import optuna

    return optuna.pruners.NopPruner()


def _median(context: PrunerContext) -> Any:
    import optuna

    # the first report (at min_resource) is never pruned: a trial is judged from its second on,
    # which comes at least 1.5 times later (the next rung, or the next epoch)
    return optuna.pruners.MedianPruner(
        n_startup_trials=context.startup_trials,
        n_warmup_steps=int(1.5 * context.min_resource),
    )


def _successive_halving(context: PrunerContext) -> Any:
    import optuna

    return optuna.pruners.SuccessiveHalvingPruner(
        min_resource=context.min_resource, reduction_factor=context.reduction_factor
    )


def _hyperband(context: PrunerContext) -> Any:
    import optuna

    return optuna.pruners.HyperbandPruner(
        min_resource=context.min_resource,
        max_resource=max(context.max_resource, context.min_resource),
        reduction_factor=context.reduction_factor,
    )


PRUNERS: dict[str, Algorithm[Any]] = {
    "none": Algorithm(_nop, summary="every trial trains to its end"),
    "median": Algorithm(_median, objectives=(1,), summary="below the median of earlier trials"),
    "successive_halving": Algorithm(
        _successive_halving, objectives=(1,), summary="keep the top 1/eta at each rung"
    ),
    "hyperband": Algorithm(_hyperband, objectives=(1,), summary="successive halving, brackets"),
}


def _kt_random(context: TunerContext) -> Any:
    import keras_tuner as kt

    return kt.oracles.RandomSearchOracle(max_trials=context.backstop_trials, **context.common)


def _kt_bayesian(context: TunerContext) -> Any:
    import keras_tuner as kt

    return kt.oracles.BayesianOptimizationOracle(
        max_trials=context.backstop_trials,
        num_initial_points=max(2, context.startup_trials),
        **context.common,
    )


def _kt_hyperband(context: TunerContext) -> Any:
    import keras_tuner as kt

    return kt.oracles.HyperbandOracle(
        max_epochs=context.max_epochs, factor=3, hyperband_iterations=1, **context.common
    )


TUNERS: dict[str, Algorithm[Any]] = {
    "random": Algorithm(_kt_random, objectives=(1,), summary="KerasTuner random search"),
    "bayesian": Algorithm(_kt_bayesian, objectives=(1,), summary="KerasTuner GP optimisation"),
    "hyperband": Algorithm(_kt_hyperband, objectives=(1,), summary="KerasTuner Hyperband"),
}


@dataclass(frozen=True)
class EngineTraits:
    """What an engine takes from the experiment file, besides its name."""

    options: frozenset[str]
    objectives: tuple[int, ...]
    workers: bool  # several processes can share one study
    warm_start: bool  # enqueued points and --warm-start-from
    summary: str = ""
    defaults: Mapping[str, Any] = field(default_factory=dict)


ENGINES: dict[str, EngineTraits] = {
    "optuna": EngineTraits(
        options=frozenset(
            {
                "sampler",
                "pruner",
                "startup_trials",
                "min_images",
                "reduction_factor",
                "fidelity_check",
                "screens",
            }
        ),
        objectives=(1, 2),
        workers=True,
        warm_start=True,
        summary="Optuna study in SQLite or PostgreSQL",
    ),
    "kerastuner": EngineTraits(
        options=frozenset({"tuner", "startup_trials"}),
        objectives=(1,),
        workers=False,
        warm_start=False,
        summary="KerasTuner oracle in a project folder",
    ),
}

"""Translate a SearchSpace into Optuna suggestions: the only place that calls trial.suggest_*."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from tunelab.define.space import Parameter, Scalar, SearchSpace


def suggest(space: SearchSpace, trial: optuna.Trial) -> dict[str, Scalar]:
    """Ask the trial for every parameter whose condition holds, in declaration order."""
    chosen: dict[str, Scalar] = {}
    for parameter in space.parameters:
        if parameter.is_active(chosen):
            chosen[parameter.name] = _suggest_one(parameter, trial)
    return chosen


def _suggest_one(parameter: Parameter, trial: optuna.Trial) -> Scalar:
    if parameter.kind == "categorical":
        value: Any = trial.suggest_categorical(parameter.name, list(parameter.choices))
        return value  # type: ignore[no-any-return]
    assert parameter.low is not None and parameter.high is not None
    if parameter.kind == "int":
        return trial.suggest_int(
            parameter.name,
            int(parameter.low),
            int(parameter.high),
            step=int(parameter.step or 1),
            log=parameter.log,
        )
    return trial.suggest_float(
        parameter.name,
        float(parameter.low),
        float(parameter.high),
        step=None if parameter.step is None else float(parameter.step),
        log=parameter.log,
    )


def distribution(parameter: Parameter) -> BaseDistribution:
    """The Optuna distribution a parameter is suggested from (used by tests and the grid)."""
    if parameter.kind == "categorical":
        return CategoricalDistribution(list(parameter.choices))
    assert parameter.low is not None and parameter.high is not None
    if parameter.kind == "int":
        return IntDistribution(
            int(parameter.low),
            int(parameter.high),
            log=parameter.log,
            step=int(parameter.step or 1),
        )
    step = None if parameter.step is None else float(parameter.step)
    return FloatDistribution(
        float(parameter.low), float(parameter.high), log=parameter.log, step=step
    )


def grid(space: SearchSpace) -> dict[str, list[Scalar]]:
    """The search space of Optuna's GridSampler (every value of every parameter)."""
    out: dict[str, list[Scalar]] = {}
    for parameter in space.parameters:
        values = parameter.grid_values()
        assert values is not None, "validated by load_experiment"
        out[parameter.name] = list(values)
    return out

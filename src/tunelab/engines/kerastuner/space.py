"""Translate a SearchSpace into KerasTuner hyperparameters: the only place that calls hp.*.

Every parameter is declared up front, conditions as (nested) conditional scopes, and the tuner
runs with new entries disallowed, so a name the space does not declare is an error.
"""

from __future__ import annotations

from contextlib import ExitStack

import keras_tuner as kt

from tunelab.define.space import Parameter, Scalar, SearchSpace


def declare(space: SearchSpace, hp: kt.HyperParameters | None = None) -> kt.HyperParameters:
    """Declare every parameter of the space on `hp` (a new one by default) and return it."""
    hp = hp or kt.HyperParameters()
    by_name = {p.name: p for p in space.parameters}
    for parameter in space.parameters:
        with ExitStack() as scopes:
            for ancestor in _condition_chain(parameter, by_name):
                assert ancestor.condition is not None
                scopes.enter_context(
                    hp.conditional_scope(ancestor.condition.parent, list(ancestor.condition.values))
                )
            _declare_one(parameter, hp)
    return hp


def _condition_chain(parameter: Parameter, by_name: dict[str, Parameter]) -> list[Parameter]:
    """The parameter and its conditional ancestors, outermost first (scopes must nest)."""
    chain = []
    current: Parameter | None = parameter
    while current is not None and current.condition is not None:
        chain.append(current)
        current = by_name[current.condition.parent]
    return list(reversed(chain))


def _declare_one(parameter: Parameter, hp: kt.HyperParameters) -> None:
    if parameter.kind == "categorical":
        hp.Choice(parameter.name, list(parameter.choices), ordered=False)
        return
    assert parameter.low is not None and parameter.high is not None
    sampling = "log" if parameter.log else "linear"
    if parameter.kind == "int":
        # KerasTuner reads a step under log sampling as a multiplier; Optuna's log ints have none
        int_step = None if parameter.log else int(parameter.step or 1)
        hp.Int(
            parameter.name,
            int(parameter.low),
            int(parameter.high),
            step=int_step,
            sampling=sampling,
        )
    else:
        step = None if parameter.step is None else float(parameter.step)
        hp.Float(
            parameter.name,
            float(parameter.low),
            float(parameter.high),
            step=step,
            sampling=sampling,
        )


def chosen_values(space: SearchSpace, hp: kt.HyperParameters) -> dict[str, Scalar]:
    """The values of the active parameters, by name, in declaration order."""
    chosen: dict[str, Scalar] = {}
    for parameter in space.parameters:
        if parameter.is_active(chosen) and parameter.name in hp.values:
            chosen[parameter.name] = hp.values[parameter.name]
    return chosen

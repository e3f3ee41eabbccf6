"""YAML -> typed, validated objects: search spaces and experiments.

A search space is data (architecture rule 2): loaded once, validated into `SearchSpace`, then
turned into `trial.suggest_*` or `hp.*` by two small translators. Every problem is found here,
before any run starts, and reported as one line: `file: field: problem (got value)`.

Search-space file::

    parameters:
      optimizer: {type: categorical, values: [adadelta, adam, sgd]}
      filters: {type: int, low: 16, high: 64, step: 16}
      lr_adam: {field: learning_rate, type: float, low: 1e-4, high: 3e-3, log: true,
                when: {optimizer: adam}}
      lr_sgd: {field: learning_rate, type: float, low: 1e-3, high: 0.1, log: true,
               when: {optimizer: sgd}}
      momentum: {type: float, low: 0.5, high: 0.99, when: {optimizer: sgd}}
    fixed:
      epochs: 6

A parameter's name is what the search library sees; `field` (default: the name) is the
`CnnConfig` field it sets. Several parameters may set one field when their conditions exclude
each other (a learning-rate range per optimizer). `when` makes a parameter active only when
another, earlier parameter takes one of the given values.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import TypeAdapter, ValidationError

from tunelab.define.cnn import CnnConfig, CnnConfigError, parse_config
from tunelab.define.data import DATASETS
from tunelab.errors import UserError

Scalar = bool | int | float | str
ParamKind = Literal["int", "float", "categorical"]
SAMPLERS = ("tpe", "random", "cmaes", "gp", "nsga2", "grid")
PRUNERS = ("none", "median", "successive_halving", "hyperband")
ENGINES = ("optuna", "kerastuner")
OBJECTIVE_METRICS = {
    "val_accuracy": "maximize",
    "param_count": "minimize",
    "wall_seconds": "minimize",
}


class ConfigError(UserError):
    """A user's file is wrong; the message is one line: `file: field: problem (got value)`."""

    def __init__(self, source: str | Path, field: str, problem: str, value: object = None) -> None:
        self.source, self.field, self.problem, self.value = str(source), field, problem, value
        got = "" if value is None else f" (got {value!r})"
        super().__init__(f"{source}: {field}: {problem}{got}")


# --- YAML ------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads 1e-4 as a float (YAML 1.1 wants 1.0e-4 and gives a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from a file, or a ConfigError naming the file."""
    if not path.is_file():
        raise ConfigError(path, "file", "no such file")
    try:
        loaded = yaml.load(path.read_text(), Loader=_Loader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "yaml"
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(path, where, f"not valid YAML: {problem}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(path, "file", "must be a YAML mapping", type(loaded).__name__)
    return loaded


# --- search spaces ---------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    """Active only when `parent` takes one of `values`."""

    parent: str
    values: tuple[Scalar, ...]


@dataclass(frozen=True)
class Parameter:
    """One searchable parameter, engine-neutral."""

    name: str
    field: str
    kind: ParamKind
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    choices: tuple[Scalar, ...] = ()
    condition: Condition | None = None

    def is_active(self, chosen: Mapping[str, Scalar]) -> bool:
        if self.condition is None:
            return True
        return (
            self.condition.parent in chosen
            and chosen[self.condition.parent] in self.condition.values
        )

    def grid_values(self) -> tuple[Scalar, ...] | None:
        """Every value the parameter can take, if finitely many (for the grid sampler)."""
        if self.kind == "categorical":
            return self.choices
        if self.step is None and self.kind == "float":
            return None
        assert self.low is not None and self.high is not None
        step = self.step or 1
        count = math.floor((self.high - self.low) / step + 1e-9) + 1
        values = [self.low + i * step for i in range(count)]
        return tuple(int(v) for v in values) if self.kind == "int" else tuple(values)


@dataclass(frozen=True)
class SearchSpace:
    """Parameters in declaration order (parents before children) and fixed CnnConfig values."""

    parameters: tuple[Parameter, ...]
    fixed: Mapping[str, Scalar]
    source: Path

    def names(self) -> list[str]:
        return [p.name for p in self.parameters]

    def to_config_values(self, chosen: Mapping[str, Scalar]) -> dict[str, Scalar]:
        """Map chosen parameter values (by name) onto CnnConfig fields, with the fixed ones."""
        values: dict[str, Scalar] = dict(self.fixed)
        for parameter in self.parameters:
            if parameter.name in chosen:
                values[parameter.field] = chosen[parameter.name]
        return values


def load_search_space(path: str | Path) -> SearchSpace:
    """Read and validate a search-space file.

    Raises:
        ConfigError: the first problem, as `file: field: problem (got value)`.
    """
    path = Path(path)
    raw = read_yaml(path)
    _only_keys(path, "", raw, {"parameters", "fixed", "description"})
    declared = raw.get("parameters")
    if not isinstance(declared, dict) or not declared:
        raise ConfigError(path, "parameters", "must be a non-empty mapping of name: definition")
    fixed = raw.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise ConfigError(path, "fixed", "must be a mapping of CnnConfig field: value", fixed)
    for name, value in fixed.items():
        _check_field_value(path, f"fixed.{name}", str(name), value)
    try:
        parse_config(dict(fixed))
    except CnnConfigError as error:
        raise ConfigError(path, f"fixed.{error.field}", error.problem, error.value) from None
    parameters: list[Parameter] = []
    for name, spec in declared.items():
        parameters.append(_parse_parameter(path, str(name), spec, parameters))
    _check_shared_fields(path, parameters, fixed)
    return SearchSpace(tuple(parameters), dict(fixed), path)


def _parse_parameter(path: Path, name: str, spec: Any, earlier: Sequence[Parameter]) -> Parameter:
    where = f"parameters.{name}"
    if not isinstance(spec, dict):
        raise ConfigError(path, where, "must be a mapping with a type", spec)
    _only_keys(path, where, spec, {"type", "field", "low", "high", "step", "log", "values", "when"})
    target = str(spec.get("field", name))
    if target not in CnnConfig.model_fields:
        raise ConfigError(
            path, f"{where}.field" if "field" in spec else where, "not a CnnConfig field", target
        )
    kind = spec.get("type")
    if kind not in ("int", "float", "categorical"):
        raise ConfigError(path, f"{where}.type", "must be int, float or categorical", kind)
    condition = _parse_condition(path, where, spec.get("when"), earlier)
    if kind == "categorical":
        return _parse_categorical(path, where, name, target, spec, condition)
    return _parse_range(path, where, name, target, kind, spec, condition)


def _parse_categorical(
    path: Path,
    where: str,
    name: str,
    target: str,
    spec: dict[str, Any],
    condition: Condition | None,
) -> Parameter:
    for key in ("low", "high", "step", "log"):
        if key in spec:
            raise ConfigError(path, f"{where}.{key}", "categorical parameters take values only")
    values = spec.get("values")
    if not isinstance(values, list) or not values:
        raise ConfigError(path, f"{where}.values", "must be a non-empty list", values)
    for value in values:
        if not isinstance(value, (bool, int, float, str)):
            raise ConfigError(path, f"{where}.values", "choices must be scalars", value)
        _check_field_value(path, f"{where}.values", target, value)
    if len(set(map(repr, values))) != len(values):
        raise ConfigError(path, f"{where}.values", "choices repeat", values)
    return Parameter(name, target, "categorical", choices=tuple(values), condition=condition)


def _parse_range(
    path: Path,
    where: str,
    name: str,
    target: str,
    kind: ParamKind,
    spec: dict[str, Any],
    condition: Condition | None,
) -> Parameter:
    if "values" in spec:
        raise ConfigError(
            path, f"{where}.values", f"{kind} parameters take low and high, not values"
        )
    bounds: dict[str, float | int] = {}
    for key in ("low", "high", "step"):
        value = spec.get(key)
        if value is None:
            if key == "step":
                continue
            raise ConfigError(path, f"{where}.{key}", "is required")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, f"{where}.{key}", "must be a number", value)
        if kind == "int" and not isinstance(value, int):
            raise ConfigError(
                path, f"{where}.{key}", "must be an integer for an int parameter", value
            )
        bounds[key] = value
    low, high, step = bounds["low"], bounds["high"], bounds.get("step")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(path, f"{where}.log", "must be true or false", log)
    if low >= high:
        raise ConfigError(path, f"{where}.low", f"must be below high ({high})", low)
    if log and low <= 0:
        raise ConfigError(path, f"{where}.low", "must be positive when log is true", low)
    if step is not None and step <= 0:
        raise ConfigError(path, f"{where}.step", "must be positive", step)
    if log and step is not None and not (kind == "int" and step == 1):
        raise ConfigError(path, f"{where}.step", "cannot be combined with log", step)
    for key in ("low", "high"):
        _check_field_value(path, f"{where}.{key}", target, bounds[key])
    return Parameter(
        name, target, kind, low=low, high=high, step=step, log=log, condition=condition
    )


def _parse_condition(
    path: Path, where: str, when: Any, earlier: Sequence[Parameter]
) -> Condition | None:
    if when is None:
        return None
    if not isinstance(when, dict) or len(when) != 1:
        raise ConfigError(path, f"{where}.when", "must be one mapping {parameter: value(s)}", when)
    [(parent_name, wanted)] = when.items()
    by_name = {p.name: p for p in earlier}
    if parent_name not in by_name:
        raise ConfigError(path, f"{where}.when", "names no parameter declared above", parent_name)
    parent = by_name[parent_name]
    values = tuple(wanted) if isinstance(wanted, list) else (wanted,)
    possible = parent.grid_values()
    if not values or possible is None:
        raise ConfigError(
            path, f"{where}.when", "the parent must take finitely many values", parent_name
        )
    for value in values:
        if value not in possible:
            raise ConfigError(
                path,
                f"{where}.when.{parent_name}",
                f"is not a value {parent_name} can take {list(possible)}",
                value,
            )
    return Condition(str(parent_name), values)


def _check_shared_fields(
    path: Path, parameters: Sequence[Parameter], fixed: Mapping[str, Any]
) -> None:
    """Parameters may share a CnnConfig field only under mutually exclusive conditions."""
    by_field: dict[str, list[Parameter]] = {}
    for parameter in parameters:
        by_field.setdefault(parameter.field, []).append(parameter)
        if parameter.field in fixed:
            raise ConfigError(
                path,
                f"parameters.{parameter.name}",
                f"sets {parameter.field}, which fixed also sets",
            )
    for target, group in by_field.items():
        if len(group) < 2:
            continue
        conditions = [p.condition for p in group]
        parents = {c.parent if c else None for c in conditions}
        if None in parents or len(parents) != 1:
            raise ConfigError(
                path,
                f"parameters.{group[1].name}",
                f"shares field {target} with {group[0].name}: both need a `when` on one parameter",
            )
        seen: set[Scalar] = set()
        for parameter in group:
            assert parameter.condition is not None
            overlap = seen.intersection(parameter.condition.values)
            if overlap:
                raise ConfigError(
                    path,
                    f"parameters.{parameter.name}.when",
                    f"overlaps another parameter setting {target}",
                    sorted(map(str, overlap)),
                )
            seen.update(parameter.condition.values)


def _check_field_value(path: Path, where: str, target: str, value: Any) -> None:
    """The value alone must suit the field's type and bounds (combinations are checked later)."""
    if target not in CnnConfig.model_fields:
        raise ConfigError(path, where, "not a CnnConfig field", target)
    info = CnnConfig.model_fields[target]
    try:
        kind: Any = info.annotation
        if info.metadata:
            kind = Annotated.__class_getitem__((kind, *info.metadata))  # type: ignore[attr-defined]
        TypeAdapter(kind).validate_python(value, strict=True)
    except ValidationError as error:
        detail = error.errors()[0]["msg"]
        raise ConfigError(path, where, f"invalid for {target}: {detail}", value) from None


def _only_keys(path: Path, where: str, mapping: Mapping[str, Any], allowed: set[str]) -> None:
    for key in mapping:
        if key not in allowed:
            prefix = f"{where}.{key}" if where else str(key)
            raise ConfigError(path, prefix, f"unknown key; expected one of {sorted(allowed)}")


# --- experiments -----------------------------------------------------------------------


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: Literal["maximize", "minimize"]


@dataclass(frozen=True)
class Budget:
    trials: int | None = None
    timeout_seconds: float | None = None
    max_epochs: int | None = None
    max_consecutive_failures: int = 5


@dataclass(frozen=True)
class EngineSpec:
    name: str = "optuna"
    sampler: str = "tpe"
    pruner: str = "none"
    startup_trials: int = 5
    tuner: str = "hyperband"  # KerasTuner: random, bayesian, hyperband


@dataclass(frozen=True)
class ExperimentSpec:
    """One runnable experiment: what to search, with which engine, budget and seed."""

    name: str
    dataset: str
    search_space: SearchSpace
    engine: EngineSpec
    objectives: tuple[Objective, ...]
    budget: Budget
    source: Path
    validation_size: int = 10_000
    split_seed: int | None = None
    train_size: int | None = None
    seed: int = 0
    storage: str | None = None
    description: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1


EXPERIMENT_KEYS = {
    "name",
    "description",
    "dataset",
    "validation_size",
    "split_seed",
    "train_size",
    "search_space",
    "engine",
    "objectives",
    "budget",
    "seed",
    "storage",
}


def parse_duration(text: Any, source: Path, where: str) -> float:
    """'90s', '30m', '1.5h', '1h30m' or a number of seconds -> seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool) and text > 0:
        return float(text)
    match = re.fullmatch(
        r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s)?\s*", str(text)
    )
    if not match or not any(match.groups()):
        raise ConfigError(source, where, "must be a duration like 90s, 30m, 1h or 1h30m", text)
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise ConfigError(source, where, "must be positive", text)
    return total


def load_experiment(path: str | Path) -> ExperimentSpec:
    """Read and validate an experiment file and the search space it names."""
    path = Path(path)
    raw = read_yaml(path)
    _only_keys(path, "", raw, EXPERIMENT_KEYS)
    dataset = raw.get("dataset", "mnist")
    if dataset not in DATASETS:
        raise ConfigError(path, "dataset", f"must be one of {list(DATASETS)}", dataset)
    space_ref = raw.get("search_space")
    if not isinstance(space_ref, str):
        raise ConfigError(path, "search_space", "must be a path relative to this file", space_ref)
    space_path = (path.parent / space_ref).resolve()
    if not space_path.is_file():
        raise ConfigError(path, "search_space", f"no such file {space_path}", space_ref)
    space = load_search_space(space_path)
    engine = _parse_engine(path, raw.get("engine") or {})
    objectives = _parse_objectives(path, raw.get("objectives") or [{"metric": "val_accuracy"}])
    budget = _parse_budget(path, raw.get("budget") or {})
    spec = ExperimentSpec(
        name=str(raw.get("name") or path.stem),
        dataset=dataset,
        search_space=space,
        engine=engine,
        objectives=objectives,
        budget=budget,
        source=path,
        validation_size=_positive_int(path, "validation_size", raw.get("validation_size", 10_000)),
        split_seed=_optional_int(path, "split_seed", raw.get("split_seed")),
        train_size=_optional_positive_int(path, "train_size", raw.get("train_size")),
        seed=_optional_int(path, "seed", raw.get("seed")) or 0,
        storage=_optional_str(path, "storage", raw.get("storage")),
        description=str(raw.get("description") or ""),
    )
    _check_engine_fits(spec)
    return spec


def _parse_engine(path: Path, raw: Any) -> EngineSpec:
    if not isinstance(raw, dict):
        raise ConfigError(path, "engine", "must be a mapping", raw)
    _only_keys(path, "engine", raw, {"name", "sampler", "pruner", "startup_trials", "tuner"})
    name = raw.get("name", "optuna")
    if name not in ENGINES:
        raise ConfigError(path, "engine.name", f"must be one of {list(ENGINES)}", name)
    sampler = raw.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise ConfigError(path, "engine.sampler", f"must be one of {list(SAMPLERS)}", sampler)
    pruner = str(raw.get("pruner", "none")).lower()
    if pruner not in PRUNERS:
        raise ConfigError(
            path, "engine.pruner", f"must be one of {list(PRUNERS)}", raw.get("pruner")
        )
    tuner = raw.get("tuner", "hyperband")
    if tuner not in ("random", "bayesian", "hyperband"):
        raise ConfigError(path, "engine.tuner", "must be random, bayesian or hyperband", tuner)
    startup = raw.get("startup_trials", 5)
    if not isinstance(startup, int) or isinstance(startup, bool) or startup < 0:
        raise ConfigError(path, "engine.startup_trials", "must be a non-negative integer", startup)
    return EngineSpec(name, sampler, pruner, startup, tuner)


def _parse_objectives(path: Path, raw: Any) -> tuple[Objective, ...]:
    if not isinstance(raw, list) or not 1 <= len(raw) <= 2:
        raise ConfigError(path, "objectives", "must be a list of one or two objectives", raw)
    objectives = []
    for index, item in enumerate(raw):
        where = f"objectives[{index}]"
        if not isinstance(item, dict):
            raise ConfigError(path, where, "must be {metric: ..., direction: ...}", item)
        _only_keys(path, where, item, {"metric", "direction"})
        metric = item.get("metric")
        if metric not in OBJECTIVE_METRICS:
            raise ConfigError(
                path, f"{where}.metric", f"must be one of {list(OBJECTIVE_METRICS)}", metric
            )
        direction = item.get("direction", OBJECTIVE_METRICS[metric])
        if direction not in ("maximize", "minimize"):
            raise ConfigError(path, f"{where}.direction", "must be maximize or minimize", direction)
        objectives.append(Objective(metric, direction))
    if objectives[0].metric != "val_accuracy":
        raise ConfigError(
            path,
            "objectives[0].metric",
            "the first objective must be val_accuracy",
            objectives[0].metric,
        )
    if len({o.metric for o in objectives}) != len(objectives):
        raise ConfigError(path, "objectives", "metrics repeat", [o.metric for o in objectives])
    return tuple(objectives)


def _parse_budget(path: Path, raw: Any) -> Budget:
    if not isinstance(raw, dict):
        raise ConfigError(path, "budget", "must be a mapping", raw)
    _only_keys(path, "budget", raw, {"trials", "timeout", "max_epochs", "max_consecutive_failures"})
    trials = _optional_positive_int(path, "budget.trials", raw.get("trials"))
    timeout = raw.get("timeout")
    seconds = None if timeout is None else parse_duration(timeout, path, "budget.timeout")
    if trials is None and seconds is None:
        raise ConfigError(path, "budget", "needs trials, timeout or both")
    return Budget(
        trials=trials,
        timeout_seconds=seconds,
        max_epochs=_optional_positive_int(path, "budget.max_epochs", raw.get("max_epochs")),
        max_consecutive_failures=_positive_int(
            path, "budget.max_consecutive_failures", raw.get("max_consecutive_failures", 5)
        ),
    )


def _check_engine_fits(spec: ExperimentSpec) -> None:
    path, engine = spec.source, spec.engine
    if spec.multi_objective:
        if engine.pruner != "none":
            raise ConfigError(
                path, "engine.pruner", "pruning needs a single objective; use none", engine.pruner
            )
        if engine.sampler in ("cmaes", "gp", "grid"):
            raise ConfigError(
                path, "engine.sampler", "needs a single objective; use nsga2 or tpe", engine.sampler
            )
        if engine.name == "kerastuner":
            raise ConfigError(path, "objectives", "KerasTuner searches a single objective")
    elif engine.sampler == "nsga2":
        raise ConfigError(path, "engine.sampler", "nsga2 is for two objectives; add one or use tpe")
    if engine.sampler == "grid":
        for parameter in spec.search_space.parameters:
            if parameter.grid_values() is None:
                raise ConfigError(
                    path, "engine.sampler", f"grid needs a step for float {parameter.name}", "grid"
                )
    if spec.train_size is not None and spec.train_size > 60_000 - spec.validation_size:
        raise ConfigError(
            path,
            "train_size",
            f"at most {60_000 - spec.validation_size} images remain after validation",
            spec.train_size,
        )
    if not 0 < spec.validation_size < 60_000:
        raise ConfigError(
            path, "validation_size", "must be between 1 and 59999", spec.validation_size
        )


def _positive_int(path: Path, where: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(path, where, "must be a positive integer", value)
    return value


def _optional_positive_int(path: Path, where: str, value: Any) -> int | None:
    return None if value is None else _positive_int(path, where, value)


def _optional_int(path: Path, where: str, value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(path, where, "must be an integer", value)
    return value


def _optional_str(path: Path, where: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(path, where, "must be a non-empty string", value)
    return value

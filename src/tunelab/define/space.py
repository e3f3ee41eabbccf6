"""Search spaces: a YAML file validated by `SpaceFile` into an engine-neutral `SearchSpace`.

A search space is data (architecture rule 2): loaded once, validated, then turned into
`trial.suggest_*` or `hp.*` by two small translators. Every problem is found here, before any
run starts, and reported as one line: `file: field: problem (got value)`.

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

A parameter's name is what the search library sees; `field` (default: the name) is what it
sets: a training setting (`tunelab.define.training.TrainingConfig`: optimizer, learning rate,
schedule, batch size, epochs, augmentation) or a parameter of the experiment's model factory (the
built-in CNN's `CnnConfig` fields, or a user factory's keyword arguments; `model.NAME` names a
factory parameter whose name is also a training setting's). Several parameters may set one
field when their conditions exclude each other (a learning-rate range per optimizer). `when`
makes a parameter active only when another, earlier parameter takes one of the given values.
`precision` is not searched: the experiment file sets it for every trial.

A space read on its own is checked against the built-in CNN; an experiment that names another
factory checks it against that factory's parameters (`Targets`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic.fields import FieldInfo

from tunelab.define.cnn import CnnConfig, parse_cnn
from tunelab.define.files import ConfigError, read_model
from tunelab.define.training import TrainingConfig, parse_training

Scalar = bool | int | float | str
StrictScalar = StrictBool | StrictInt | StrictFloat | StrictStr
Number = StrictInt | StrictFloat
ParamKind = Literal["int", "float", "categorical"]
EXPERIMENT_SETTINGS = {"precision": "the experiment file sets precision for every trial"}
MODEL_PREFIX = "model."  # `field: model.NAME`: the factory's parameter, whatever its name


@dataclass(frozen=True)
class Targets:
    """What a space's names may set besides training settings: the factory's parameters.

    `fields` are the factory's typed parameters (the built-in CNN's), checked here; None means
    a user factory, whose keyword arguments are checked against its signature once imported.
    """

    label: str
    fields: Mapping[str, FieldInfo] | None

    def target(self, name: str) -> tuple[str, str] | None:
        """("training" | "model", field name) that `name` sets, or None if it sets nothing."""
        if name.startswith(MODEL_PREFIX):
            return "model", name.removeprefix(MODEL_PREFIX)
        if name in TrainingConfig.model_fields or name in EXPERIMENT_SETTINGS:
            return "training", name
        if self.fields is None or name in self.fields:
            return "model", name
        return None

    def info(self, name: str) -> FieldInfo | None:
        """The typed field `name` sets, if it has one."""
        found = self.target(name)
        if found is None:
            return None
        kind, field = found
        if kind == "training":
            return TrainingConfig.model_fields.get(field)
        return None if self.fields is None else self.fields.get(field)


BUILTIN = Targets("the built-in CNN", CnnConfig.model_fields)


def split_values(values: Mapping[str, Scalar]) -> tuple[dict[str, Scalar], dict[str, Scalar]]:
    """(training settings, factory parameters) of a space's values by field."""
    training: dict[str, Scalar] = {}
    model: dict[str, Scalar] = {}
    for name, value in values.items():
        if name.startswith(MODEL_PREFIX):
            model[name.removeprefix(MODEL_PREFIX)] = value
        elif name in TrainingConfig.model_fields:
            training[name] = value
        else:
            model[name] = value
    return training, model


class StrictModel(BaseModel):
    """A file section: unknown keys are errors that list the keys it takes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            allowed = sorted(
                (info.alias or name) for name, info in cls.model_fields.items() if not info.exclude
            )
            for key in data:
                if key not in allowed:
                    raise ValueError(f"{key}: unknown key; expected one of {allowed}")
        return data


class ParameterEntry(StrictModel):
    """One `parameters:` entry as written in the file."""

    type: ParamKind = Field(description="int, float or categorical")
    field: StrictStr | None = Field(
        None,
        description="the training setting or model parameter it sets (default: the name; "
        "model.NAME: the factory's parameter)",
    )
    low: Number | None = Field(None, description="lowest value (int and float)")
    high: Number | None = Field(None, description="highest value (int and float)")
    step: Number | None = Field(None, gt=0, description="grid step (not with log, but int step 1)")
    log: StrictBool = Field(False, description="sample on a log scale (low must be positive)")
    values: list[StrictScalar] | None = Field(None, description="choices (categorical)")
    when: dict[str, StrictScalar | list[StrictScalar]] | None = Field(
        None, description="{parameter: value or [values]}: active only then"
    )

    @model_validator(mode="after")
    def _check_kind(self) -> ParameterEntry:
        if self.type == "categorical":
            for key in ("low", "high", "step"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key}: categorical parameters take values only")
            if self.log:
                raise ValueError("log: categorical parameters take values only")
            if not self.values:
                raise ValueError(f"values: must be a non-empty list (got {self.values!r})")
            if len(set(map(repr, self.values))) != len(self.values):
                raise ValueError(f"values: choices repeat (got {self.values!r})")
            return self
        if self.values is not None:
            raise ValueError(f"values: {self.type} parameters take low and high, not values")
        for key in ("low", "high"):
            value = getattr(self, key)
            if value is None:
                raise ValueError(f"{key}: is required")
        for key in ("low", "high", "step"):
            value = getattr(self, key)
            if self.type == "int" and value is not None and not isinstance(value, int):
                raise ValueError(f"{key}: must be an integer for an int parameter (got {value!r})")
        assert self.low is not None and self.high is not None
        if self.low >= self.high:
            raise ValueError(f"low: must be below high ({self.high}) (got {self.low!r})")
        if self.log and self.low <= 0:
            raise ValueError(f"low: must be positive when log is true (got {self.low!r})")
        if self.log and self.step is not None and not (self.type == "int" and self.step == 1):
            raise ValueError(f"step: cannot be combined with log (got {self.step!r})")
        return self


class SpaceFile(StrictModel):
    """A search-space file: parameters to search and values to fix (training or model)."""

    description: str = Field("", description="free text")
    parameters: dict[str, ParameterEntry] = Field(
        description="name: definition; a name is a training setting or a model parameter "
        "unless `field` says which"
    )
    fixed: dict[str, StrictScalar] = Field(
        default_factory=dict,
        description="training setting or model parameter: value, the same for every trial",
    )

    @model_validator(mode="after")
    def _check_space(self, info: ValidationInfo) -> SpaceFile:
        targets = _targets(info)
        if not self.parameters:
            raise ValueError("parameters: must be a non-empty mapping of name: definition")
        for name, value in self.fixed.items():
            _check_field_value(f"fixed.{name}", name, value, targets)
        _check_fixed(self.fixed, targets)
        earlier: list[Parameter] = []
        for name, entry in self.parameters.items():
            earlier.append(_parameter(name, entry, earlier, targets))
        _check_shared_fields(earlier, self.fixed)
        return self

    def to_space(self, source: Path, targets: Targets) -> SearchSpace:
        parameters: list[Parameter] = []
        for name, entry in self.parameters.items():
            parameters.append(_parameter(name, entry, parameters, targets))
        return SearchSpace(tuple(parameters), dict(self.fixed), source)


def _targets(info: ValidationInfo) -> Targets:
    context = info.context or {}
    found = context.get("targets", BUILTIN)
    assert isinstance(found, Targets)
    return found


def _check_fixed(fixed: Mapping[str, Scalar], targets: Targets) -> None:
    """The fixed values together must make a valid training (and built-in CNN)."""
    training, model = split_values(fixed)
    checks = [parse_training] + ([parse_cnn] if targets.fields is CnnConfig.model_fields else [])
    for check, values in zip(checks, (training, model), strict=False):
        try:
            check(dict(values))
        except ValueError as error:
            field = getattr(error, "field", "")
            raise ValueError(
                f"fixed.{field}: {getattr(error, 'problem', error)} "
                f"(got {getattr(error, 'value', None)!r})"
            ) from None


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

    def middle(self) -> Scalar:
        """The middle value (categorical: the middle choice), on the grid if it has a step."""
        if self.kind == "categorical":
            return self.choices[len(self.choices) // 2]
        assert self.low is not None and self.high is not None
        low, high = float(self.low), float(self.high)
        middle = math.sqrt(low * high) if self.log else (low + high) / 2
        if self.step is not None:
            middle = low + round((middle - low) / self.step) * self.step
        return round(middle) if self.kind == "int" else middle

    def draw(self, rng: random.Random) -> Scalar:
        """A random value of this parameter (on its grid, if it has a step)."""
        if self.kind == "categorical":
            return rng.choice(self.choices)
        assert self.low is not None and self.high is not None
        low, high = float(self.low), float(self.high)
        value = (
            math.exp(rng.uniform(math.log(low), math.log(high)))
            if self.log
            else rng.uniform(low, high)
        )
        if self.step is not None:
            value = low + math.floor((value - low) / self.step) * self.step
        return round(value) if self.kind == "int" else value

    def admits(self, value: object) -> bool:
        """Whether `value` is one this parameter can take (enqueued points, warm starts)."""
        if self.kind == "categorical":
            return any(value == c and type(value) is type(c) for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int" and not isinstance(value, int):
            return False
        assert self.low is not None and self.high is not None
        if not self.low <= value <= self.high:
            return False
        if self.step is not None:
            offset = (value - self.low) / self.step
            return abs(offset - round(offset)) < 1e-9
        return True


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

    def middle_point(self) -> dict[str, Scalar]:
        """The middle of every active parameter's range (log ranges: the geometric middle;
        categorical: the middle choice), in declaration order so conditions resolve."""
        return self._point(lambda p: p.middle())

    def low_point(self) -> dict[str, Scalar]:
        """Every active parameter at its low end (categorical: the first choice)."""
        return self._point(lambda p: p.choices[0] if p.kind == "categorical" else p.low or 0)

    def random_point(self, rng: random.Random) -> dict[str, Scalar]:
        """A point drawn from `rng`: uniform (log-uniform) in ranges, on their grids."""
        return self._point(lambda p: p.draw(rng))

    def _point(self, value: Callable[[Parameter], Scalar]) -> dict[str, Scalar]:
        chosen: dict[str, Scalar] = {}
        for parameter in self.parameters:
            if parameter.is_active(chosen):
                chosen[parameter.name] = value(parameter)
        return chosen

    def check_point(self, point: Mapping[str, object]) -> str | None:
        """Why `point` (name: value) is not a point of this space, or None if it is one.

        Every active parameter must be given, with a value it can take; inactive and unknown
        names are refused, so a point means exactly one configuration.
        """
        known = {p.name: p for p in self.parameters}
        for name in point:
            if name not in known:
                return f"{name} is not a parameter of {self.source.name} (it has {list(known)})"
        chosen: dict[str, Scalar] = {}
        for parameter in self.parameters:
            active = parameter.is_active(chosen)
            if parameter.name not in point:
                if active:
                    return f"{parameter.name} is active here and needs a value"
                continue
            value = point[parameter.name]
            if not active:
                return f"{parameter.name} is inactive here (see its `when`)"
            if not parameter.admits(value):
                return f"{parameter.name}={value!r} is outside its range or choices"
            chosen[parameter.name] = value  # type: ignore[assignment]
        return None


def load_search_space(path: str | Path, targets: Targets = BUILTIN) -> SearchSpace:
    """Read and validate a search-space file against a factory's parameters.

    Raises:
        ConfigError: the first problem, as `file: field: problem (got value)`.
    """
    path = Path(path)
    model = read_model(path, SpaceFile, context={"targets": targets})
    return model.to_space(path, targets)


def _parameter(
    name: str, entry: ParameterEntry, earlier: Sequence[Parameter], targets: Targets
) -> Parameter:
    where = f"parameters.{name}"
    target = entry.field or name
    if target in EXPERIMENT_SETTINGS:
        raise ValueError(f"{where}: is not searched: {EXPERIMENT_SETTINGS[target]}")
    if targets.target(target) is None:
        field_where = f"{where}.field" if entry.field else where
        raise ValueError(
            f"{field_where}: not a training setting nor a parameter of {targets.label} "
            f"(got {target!r})"
        )
    condition = _condition(where, entry.when, earlier)
    if entry.type == "categorical":
        assert entry.values is not None
        for value in entry.values:
            _check_field_value(f"{where}.values", target, value, targets)
        return Parameter(
            name, target, "categorical", choices=tuple(entry.values), condition=condition
        )
    for key in ("low", "high"):
        _check_field_value(f"{where}.{key}", target, getattr(entry, key), targets)
    return Parameter(
        name,
        target,
        entry.type,
        low=entry.low,
        high=entry.high,
        step=entry.step,
        log=entry.log,
        condition=condition,
    )


def _condition(
    where: str, when: Mapping[str, Any] | None, earlier: Sequence[Parameter]
) -> Condition | None:
    if when is None:
        return None
    if len(when) != 1:
        raise ValueError(
            f"{where}.when: must be one mapping {{parameter: value(s)}} (got {when!r})"
        )
    [(parent_name, wanted)] = when.items()
    by_name = {p.name: p for p in earlier}
    if parent_name not in by_name:
        raise ValueError(f"{where}.when: names no parameter declared above (got {parent_name!r})")
    parent = by_name[parent_name]
    values = tuple(wanted) if isinstance(wanted, list) else (wanted,)
    possible = parent.grid_values()
    if not values or possible is None:
        raise ValueError(
            f"{where}.when: the parent must take finitely many values (got {parent_name!r})"
        )
    for value in values:
        if value not in possible:
            raise ValueError(
                f"{where}.when.{parent_name}: is not a value {parent_name} can take "
                f"{list(possible)} (got {value!r})"
            )
    return Condition(str(parent_name), values)


def _check_shared_fields(parameters: Sequence[Parameter], fixed: Mapping[str, Any]) -> None:
    """Parameters may share a CnnConfig field only under mutually exclusive conditions."""
    by_field: dict[str, list[Parameter]] = {}
    for parameter in parameters:
        by_field.setdefault(parameter.field, []).append(parameter)
        if parameter.field in fixed:
            raise ValueError(
                f"parameters.{parameter.name}: sets {parameter.field}, which fixed also sets"
            )
    for target, group in by_field.items():
        if len(group) < 2:
            continue
        parents = {p.condition.parent if p.condition else None for p in group}
        if None in parents or len(parents) != 1:
            raise ValueError(
                f"parameters.{group[1].name}: shares field {target} with {group[0].name}: both "
                "need a `when` on one parameter"
            )
        seen: set[Scalar] = set()
        for parameter in group:
            assert parameter.condition is not None
            overlap = seen.intersection(parameter.condition.values)
            if overlap:
                raise ValueError(
                    f"parameters.{parameter.name}.when: overlaps another parameter setting "
                    f"{target} (got {sorted(map(str, overlap))!r})"
                )
            seen.update(parameter.condition.values)


def _check_field_value(where: str, target: str, value: Any, targets: Targets) -> None:
    """The value alone must suit the field's type and bounds (combinations are checked later)."""
    if target in EXPERIMENT_SETTINGS:
        raise ValueError(f"{where}: is not searched: {EXPERIMENT_SETTINGS[target]}")
    if targets.target(target) is None:
        raise ValueError(
            f"{where}: not a training setting nor a parameter of {targets.label} (got {target!r})"
        )
    info = targets.info(target)
    if info is None:
        return  # a user factory's parameter: its signature is checked once it is imported
    try:
        kind: Any = info.annotation
        if info.metadata:
            kind = Annotated.__class_getitem__((kind, *info.metadata))  # type: ignore[attr-defined]
        TypeAdapter(kind).validate_python(value, strict=True)
    except ValidationError as error:
        detail = error.errors()[0]["msg"]
        raise ValueError(f"{where}: invalid for {target}: {detail} (got {value!r})") from None


def field_schema(target: str) -> dict[str, Any]:
    """The JSON Schema of one training setting's or built-in CNN field's values."""
    model = TrainingConfig if target in TrainingConfig.model_fields else CnnConfig
    return model.model_json_schema()["properties"][target]  # type: ignore[no-any-return]


__all__ = [
    "Condition",
    "ConfigError",
    "ParamKind",
    "Parameter",
    "Scalar",
    "SearchSpace",
    "SpaceFile",
    "load_search_space",
]

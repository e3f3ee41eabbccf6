"""The reference of every key an experiment or search-space file takes, written from the models.

`reference_markdown()` renders Markdown tables (key, type, default, meaning) from the pydantic
models themselves, `ExperimentFile` (and its sections) and `SpaceFile` / `ParameterEntry`, plus
the CnnConfig fields a search space may set. The README embeds this text between two markers;
a test compares it with a fresh rendering, so the README cannot drift from the code.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from tunelab.define.cnn import CnnConfig
from tunelab.define.experiment import (
    BudgetSettings,
    EngineSettings,
    ExperimentFile,
    Objective,
    PipelineSettings,
    Shares,
)
from tunelab.define.files import duration_seconds
from tunelab.define.space import EXPERIMENT_SETTINGS, ParameterEntry, SpaceFile
from tunelab.define.training import TrainingConfig

BEGIN, END = "<!-- reference:begin -->", "<!-- reference:end -->"


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        base, *metadata = get_args(annotation)
        if any(getattr(m, "func", None) is duration_seconds for m in metadata):
            return "duration (`90s`, `30m`, `1h30m`) or seconds"
        return _type_name(base)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        parts = [_type_name(a) for a in get_args(annotation) if a is not type(None)]
        return " \\| ".join(dict.fromkeys(parts))
    if origin in (list, tuple):
        return f"list of {_type_name(get_args(annotation)[0])}"
    if origin is dict:
        return "mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    name = getattr(annotation, "__name__", str(annotation))
    return {
        "StrictStr": "text",
        "str": "text",
        "float": "number",
        "int": "integer",
        "bool": "true/false",
    }.get(name, name)


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            return "see below"
        if isinstance(value, list) and value and isinstance(value[0], BaseModel):
            return ", ".join(f"`{v.model_dump(exclude_none=True)}`" for v in value)
        return f"`{value}`" if value not in ([], {}) else "none"
    value = info.default
    return "none" if value is None else f"`{value}`"


def _rows(model: type[BaseModel], prefix: str = "") -> list[str]:
    rows = []
    for name, info in model.model_fields.items():
        if info.exclude:
            continue
        description = (info.description or "").replace("|", "\\|")
        rows.append(
            f"| `{prefix}{name}` | {_type_name(info.annotation)} | {_default(info)} | "
            f"{description} |"
        )
    return rows


def _table(title: str, rows: list[str]) -> list[str]:
    return [
        f"**{title}**",
        "",
        "| key | type | default | meaning |",
        "|---|---|---|---|",
        *rows,
        "",
    ]


def _field_rows(model: type[BaseModel]) -> list[str]:
    return [
        f"| `{name}` | {_type_name(info.annotation)} | {_default(info)} | "
        f"{(info.description or '').replace('|', chr(92) + '|')} |"
        for name, info in model.model_fields.items()
        if name not in EXPERIMENT_SETTINGS
    ]


def reference_markdown() -> str:
    """The whole reference, as the README embeds it."""
    lines = _table("Experiment file (`experiments/*.yaml`)", _rows(ExperimentFile))
    sections: list[tuple[str, type[BaseModel]]] = [
        ("engine.", EngineSettings),
        ("objectives[].", Objective),
        ("budget.", BudgetSettings),
        ("pipeline.", PipelineSettings),
        ("pipeline.shares.", Shares),
    ]
    for prefix, model in sections:
        lines += _table(f"`{prefix.rstrip('.')}`", _rows(model, prefix))
    lines += _table("Search-space file (`search_spaces/*.yaml`)", _rows(SpaceFile))
    lines += _table("One parameter (`parameters.NAME`)", _rows(ParameterEntry))
    lines += _table(
        "Training settings a parameter (or `fixed:`) may set, for any factory "
        "(defaults = the classic baseline's)",
        _field_rows(TrainingConfig),
    )
    lines += _table(
        "Built-in CNN fields a parameter (or `fixed:`) may set (defaults = the classic baseline); "
        "a user factory's parameters are its keyword arguments",
        _field_rows(CnnConfig),
    )
    return "\n".join(lines).rstrip() + "\n"


def embedded(text: str) -> str:
    """The reference currently embedded between the markers of a README's text."""
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n") + "\n"


def write_into(readme: Path) -> None:
    """Replace the reference between the README's markers with a fresh rendering."""
    text = readme.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{reference_markdown()}{END}{tail}")

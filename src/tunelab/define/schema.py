"""JSON Schemas of the files a user writes, generated from the config models, for editors.

`schemas/experiment.schema.json` and `schemas/search_space.schema.json` are written from
`ExperimentFile` and `SpaceFile` (`make schema`; a test keeps the committed copies current), so an
editor with a YAML language server validates and completes the files
(`# yaml-language-server: $schema=../schemas/experiment.schema.json` on the first line).

The search-space schema is enriched with each training setting's and built-in CNN field's own
constraints (other names are a user factory's parameters, checked when it is imported): a parameter
named after a field (or naming it in `field:`) may only take that field's values, so an editor
flags `optimizer: {values: [lion]}` or `learning_rate: {high: 1e5}` as it is typed. Rules that
JSON Schema cannot express (low below high, a `when:` naming an earlier parameter, fields that
share a value only under exclusive conditions, a geometry that fits the image, the referenced
file existing) are `tunelab validate`'s to check.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunelab.define.cnn import CnnConfig
from tunelab.define.experiment import ExperimentFile
from tunelab.define.space import EXPERIMENT_SETTINGS, SpaceFile, field_schema
from tunelab.define.training import TrainingConfig

SCHEMA_DIR = Path("schemas")
DIALECT = "https://json-schema.org/draft/2020-12/schema"


def experiment_schema() -> dict[str, Any]:
    schema = ExperimentFile.model_json_schema()
    schema.update({"$schema": DIALECT, "title": "tunelab experiment"})
    # a multi-objective study cannot prune: said to the editor as well as to `tunelab validate`
    schema["allOf"] = [
        {
            "if": {"properties": {"objectives": {"minItems": 2}}, "required": ["objectives"]},
            "then": {"properties": {"engine": {"properties": {"pruner": {"const": "none"}}}}},
        },
        {
            "anyOf": [
                {"properties": {"budget": {"required": ["trials"]}}},
                {"properties": {"budget": {"required": ["timeout"]}}},
            ]
        },
        {"required": ["budget"]},
        {  # the default validation split leaves 50,000 training images
            "if": {"not": {"required": ["validation_size"]}},
            "then": {"properties": {"train_size": {"maximum": 50_000}}},
        },
    ]
    return schema


def _field_rules(field: str) -> dict[str, Any]:
    """What a parameter setting `field` may hold: its choices, or its bounds."""
    values = field_schema(field)
    value = {k: v for k, v in values.items() if k not in ("default", "title", "description")}
    return {
        "allOf": [
            {
                "if": {"properties": {"type": {"const": "categorical"}}},
                "then": {"properties": {"values": {"items": value, "minItems": 1}}},
            },
            {
                "if": {"properties": {"type": {"enum": ["int", "float"]}}},
                "then": {"properties": {"low": value, "high": value}},
            },
            {
                "if": {"properties": {"log": {"const": True}}, "required": ["log"]},
                "then": {"properties": {"low": {"exclusiveMinimum": 0}}},
            },
            {
                "if": {"properties": {"type": {"const": "int"}}},
                "then": {"properties": {"low": {"type": "integer"}, "high": {"type": "integer"}}},
            },
        ]
    }


def search_space_schema() -> dict[str, Any]:
    schema = SpaceFile.model_json_schema()
    schema.update({"$schema": DIALECT, "title": "tunelab search space"})
    entry = {"$ref": "#/$defs/ParameterEntry"}
    fields = [
        f
        for f in [*TrainingConfig.model_fields, *CnnConfig.model_fields]
        if f not in EXPERIMENT_SETTINGS
    ]
    named = {
        field: {"allOf": [entry, {"not": {"required": ["field"]}}, _field_rules(field)]}
        for field in fields
    }
    by_field = [
        {
            "if": {"properties": {"field": {"const": field}}, "required": ["field"]},
            "then": _field_rules(field),
        }
        for field in fields
    ]
    other = {"allOf": [entry, *by_field]}
    parameters = schema["properties"]["parameters"]
    # a parameter named like a training setting or a built-in CNN field sets it, with its rules;
    # any other name is a user factory's parameter (checked against its signature on loading)
    parameters.update(
        {"type": "object", "minProperties": 1, "properties": named, "additionalProperties": other}
    )
    fixed = schema["properties"]["fixed"]
    fixed["properties"] = {
        f: {k: v for k, v in field_schema(f).items() if k not in ("default", "title")}
        for f in fields
    }
    return schema


def write_schemas(folder: Path = SCHEMA_DIR) -> list[Path]:
    """Write both schemas as JSON files under `folder`; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in (
        ("experiment", experiment_schema()),
        ("search_space", search_space_schema()),
    ):
        path = folder / f"{name}.schema.json"
        path.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
        written.append(path)
    return written

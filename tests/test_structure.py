"""The structure promises: layers import downward only, the record layer loads no TensorFlow,
validation and dispatch share one registry, and the editors' JSON Schemas match the files."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from conftest import RecordedSweep
from tunelab.define import algorithms
from tunelab.define.files import _Loader
from tunelab.define.schema import experiment_schema, search_space_schema
from tunelab.engines.base import ENGINES

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "src" / "tunelab"
INVALID = Path(__file__).parent / "invalid_specs"
# the rules a JSON Schema cannot state (cross-key or cross-file); `tunelab validate` checks them
BEYOND_JSON_SCHEMA = {
    "experiment_bad_space_inside.yaml",  # the error is in the referenced file
    "experiment_missing_space.yaml",  # a file that does not exist
    "experiment_screens_kerastuner.yaml",  # an option of one engine given to another
    "experiment_screens_not_longer.yaml",  # comparing the items of one list
    "experiment_screens_with_pruner.yaml",  # two keys that exclude each other
    "space_condition_unknown_parent.yaml",  # `when:` must name an earlier key
    "space_condition_unknown_value.yaml",  # ... and one of that key's values
    "space_fixed_impossible.yaml",  # geometry: the image shrinks to nothing
    "space_low_above_high.yaml",  # comparing two values of one entry
    "space_overlapping_shared_field.yaml",  # conditions of two entries exclusive
    "space_unknown_field.yaml",  # any other name may be a user factory's parameter
}
# a module may import only from its own layer or below; these sit under every layer
LAYERS = {
    "define": 1,
    "record": 2,
    "training": 3,
    "engines": 4,
    "analysis": 5,
    "delivery": 6,
    "pipeline": 7,
    "plan": 7,
    "api": 8,
    "cli": 9,
    "__main__": 10,
}
SAMPLER_CLASSES = {
    "tpe": "TPESampler",
    "random": "RandomSampler",
    "cmaes": "CmaEsSampler",
    "gp": "GPSampler",
    "nsga2": "NSGAIISampler",
    "grid": "GridSampler",
}
UTILITIES = {"errors", "redact", "text", "quiet", "services", "console", "interrupts", "__init__"}


def load(path: Path) -> object:
    return yaml.load(path.read_text(), Loader=_Loader)


@pytest.mark.parametrize("name", ["experiment", "search_space"])
def test_the_committed_schemas_are_the_generated_ones(name: str) -> None:
    generated = experiment_schema() if name == "experiment" else search_space_schema()
    committed = json.loads((ROOT / "schemas" / f"{name}.schema.json").read_text())
    assert committed == json.loads(json.dumps(generated)), "run `make schema` and commit"


@pytest.mark.slow
def test_the_schemas_accept_every_shipped_file() -> None:
    for path in sorted((ROOT / "experiments").glob("*.yaml")):
        jsonschema.validate(load(path), experiment_schema())
    for path in sorted((ROOT / "search_spaces").glob("*.yaml")):
        jsonschema.validate(load(path), search_space_schema())


@pytest.mark.parametrize("path", sorted(INVALID.glob("*.yaml")), ids=lambda p: p.name)
def test_the_schemas_reject_the_broken_files_they_can_describe(path: Path) -> None:
    schema = experiment_schema() if path.name.startswith("experiment_") else search_space_schema()
    try:
        content = load(path)
    except yaml.YAMLError:
        return  # not YAML at all: no editor accepts it either
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(content))
    assert bool(errors) is (path.name not in BEYOND_JSON_SCHEMA), [e.message for e in errors]


def test_validation_names_are_the_registries_and_every_one_builds() -> None:
    from tunelab.define.algorithms import PrunerContext, SamplerContext, TunerContext
    from tunelab.define.experiment import EngineSettings

    assert set(ENGINES) == set(algorithms.ENGINES)
    schema = EngineSettings.model_json_schema()["properties"]
    assert set(schema["sampler"]["enum"]) == set(algorithms.SAMPLERS)
    assert set(schema["pruner"]["enum"]) == set(algorithms.PRUNERS)
    assert set(schema["tuner"]["enum"]) == set(algorithms.TUNERS)
    sampler_context = SamplerContext(seed=1, startup_trials=2, grid=lambda: {"x": [1, 2]})
    for name, algorithm in algorithms.SAMPLERS.items():
        try:
            built = algorithm.build(sampler_context)
        except algorithms.MissingLibrary as missing:
            assert name == "gp" and "PyTorch" in str(missing)  # said in one line, not a crash
            continue
        assert type(built).__name__ == SAMPLER_CLASSES[name], name
    pruner_context = PrunerContext(2, 1000, 30_000, 3)
    built_pruners = {
        name: type(algorithm.build(pruner_context)).__name__
        for name, algorithm in algorithms.PRUNERS.items()
    }
    assert built_pruners == {  # each name builds its own algorithm, not just any of Optuna's
        "none": "NopPruner",
        "median": "MedianPruner",
        "successive_halving": "SuccessiveHalvingPruner",
        "hyperband": "HyperbandPruner",
    }
    import keras_tuner as kt

    common = {"objective": kt.Objective("val_accuracy", "max"), "seed": 0}
    oracles = {
        name: type(algorithm.build(TunerContext(common, 4, 2, 10))).__name__
        for name, algorithm in algorithms.TUNERS.items()
    }
    assert oracles == {
        "random": "RandomSearchOracle",
        "bayesian": "BayesianOptimizationOracle",
        "hyperband": "HyperbandOracle",
    }
    from tunelab.engines.base import engine

    assert [engine(name).name for name in ENGINES] == list(ENGINES)


@pytest.mark.slow
def test_compare_and_report_import_neither_tensorflow_nor_keras(
    recorded_sweep: RecordedSweep, tmp_path: Path
) -> None:
    script = (
        "import sys\n"
        "from tunelab.cli import main\n"
        f"main(['compare', 'recorded', '--tracking-uri', {recorded_sweep.tracking_uri!r}])\n"
        f"main(['report', 'recorded', '--no-log', '--out', {str(tmp_path / 'r.html')!r},"
        f" '--tracking-uri', {recorded_sweep.tracking_uri!r}])\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))\n"
        "print('HEAVY', heavy)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True
    )
    assert "HEAVY []" in done.stdout, done.stdout[-500:]
    assert (tmp_path / "r.html").stat().st_size > 10_000


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tunelab"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("tunelab"))
    return found


def layer(module: str) -> int:
    part = module.split(".")[1] if "." in module else ""
    return 0 if part in UTILITIES or not part else LAYERS[part]


def test_modules_import_only_from_their_layer_or_below() -> None:
    upward = []
    for path in sorted(SOURCE.rglob("*.py")):
        name = "tunelab." + ".".join(path.relative_to(SOURCE).with_suffix("").parts)
        for imported in imports_of(path):
            if layer(imported) > layer(name):
                upward.append(f"{name} -> {imported}")
    assert upward == []

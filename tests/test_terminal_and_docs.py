"""What a newcomer sees: a quiet terminal, tables that fit, a README that tells the truth."""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import RecordedSweep
from tunelab.define.data import Splits
from tunelab.define.reference import embedded, reference_markdown

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
STARTUP_NOISE = (
    "absl::InitializeLog",
    "oneDNN custom operations",
    "cuda",
    "cuInit",
    "cpu_feature_guard",
    "rebuild TensorFlow",
)


def test_the_readme_key_reference_is_the_config_models() -> None:
    assert embedded(README.read_text()) == reference_markdown(), "run `make schema`"


@pytest.mark.slow
def test_the_readme_api_example_runs(
    tmp_path: Path, tiny_splits: Splits, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = README.read_text().split("<!-- api:begin -->")[1].split("<!-- api:end -->")[0]
    code = text.split("```python")[1].split("```")[0]
    for folder in ("experiments", "search_spaces"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    space = tmp_path / "search_spaces" / "mnist_quick.yaml"  # the example's code, smaller CNNs
    smaller = {"filters": "[8]", "batch_size": "[128]"}
    lines = space.read_text().splitlines()
    for name, values in smaller.items():
        [index] = [i for i, line in enumerate(lines) if line.startswith(f"  {name}:")]
        lines[index] = f"  {name}: {{type: categorical, values: {values}}}"
    space.write_text("\n".join(lines) + "\n")
    from tunelab.engines import launch
    from tunelab.record import recorded

    def fixture_data(*args: Any, **kwargs: Any) -> Splits:
        return tiny_splits  # the real MNIST is not in the tests' offline world

    monkeypatch.setattr(launch, "load_splits_of", fixture_data)
    monkeypatch.setattr(recorded, "load_splits", fixture_data)
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["result"].best is not None
    assert len(namespace["trials"]) == 2 and "val_accuracy" in namespace["trials"].columns
    assert namespace["bundle"].test.accuracy > 0.5
    assert (Path(namespace["bundle"].folder) / "model.onnx").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("entry", ["module", "script"])
def test_no_tensorflow_start_up_line_reaches_the_terminal(
    entry: str, tmp_path: Path, tiny_npz: Path
) -> None:
    (tmp_path / "space.yaml").write_text("parameters:\n  filters: {type: int, low: 4, high: 8}\n")
    (tmp_path / "e.yaml").write_text(
        f"search_space: space.yaml\nbudget: {{trials: 1}}\ndataset: {{npz: {tiny_npz}}}\n"
        "validation_size: 500\n"
    )
    command = (
        [sys.executable, "-m", "tunelab"]
        if entry == "module"
        else [str(Path(sys.executable).parent / "tunelab")]
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}

    def tunelab(*arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command, *arguments], cwd=tmp_path, env=env, capture_output=True, text=True
        )

    def noise(stderr: str) -> list[str]:
        return [line for line in stderr.splitlines() if any(n in line for n in STARTUP_NOISE)]

    # validate builds the model: TensorFlow is loaded, and its start-up lines are kept out
    quiet = tunelab("validate", "e.yaml")
    assert quiet.returncode == 0 and quiet.stdout.startswith("ok e.yaml"), quiet.stderr
    assert not noise(quiet.stderr), quiet.stderr
    if entry != "module":
        return  # the lines exist whichever way tunelab starts: shown once, below
    loud = tunelab("--verbose", "validate", "e.yaml")
    assert "oneDNN custom operations" in loud.stderr  # they exist; the quiet run hid them
    # a command refused in one line answers before it would load TensorFlow
    (tmp_path / "missing.yaml").write_text("search_space: space.yaml\nbudget: {trials: 1}\n")
    refused = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "tunelab", "tune", "missing.yaml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    errors = [line for line in refused.stderr.splitlines() if not line.startswith("import time")]
    assert refused.returncode == 2 and errors[-1].startswith("error: no verified mnist data")
    assert refused.stderr.count("error:") == 1
    imported = {line.rsplit("|", 1)[-1].strip() for line in refused.stderr.splitlines()}
    assert "mlflow" in imported and not {"tensorflow", "keras"} & imported


def test_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tunelab", "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.startswith("tunelab ")


def test_compare_fits_a_100_column_terminal_without_empty_columns(
    recorded_sweep: RecordedSweep,
) -> None:
    from tunelab.analysis.compare import comparison_table, render
    from tunelab.record.recorded import find_sweep
    from tunelab.record.store import Tracker

    tracker = Tracker(recorded_sweep.tracking_uri)
    table = comparison_table(tracker, find_sweep(tracker, "recorded"), top=3)
    text = render(table, "table", width=100)
    lines = text.rstrip("\n").splitlines()
    assert max(len(line) for line in lines) <= 100
    header = lines[0]
    shown = [c for c in table.columns if c.split()[0] in header]
    for column in shown:  # every column shown has at least one value
        assert any(str(v).strip() not in ("", "None", "nan") for v in table[column]), column
    assert "test 95% CI" not in header or table["test 95% CI"].astype(bool).any()
    assert all(recorded_sweep.best_run_id in text for _ in [0])  # run ids stay whole
    header_cells = next(csv.reader(io.StringIO(render(table, "csv"))))
    assert header_cells == list(table.columns)  # every column kept, quoted where it has a comma


def test_every_test_the_guarantee_table_names_exists() -> None:
    """The README's "What is guaranteed" table names the tests that show each promise: a
    renamed or deleted test must not leave a row pointing at nothing."""
    import re

    table = README.read_text().split("## What is guaranteed")[1].split("\n## ")[0]
    named = set(re.findall(r"\b(test_[a-z0-9_]+)\b", table))
    assert len(named) >= 10
    defined = {
        name
        for path in (ROOT / "tests").glob("test_*.py")
        for name in re.findall(r"^def (test_[a-z0-9_]+)\(", path.read_text(), re.MULTILINE)
    }
    files = {path.stem for path in (ROOT / "tests").glob("test_*.py")}
    assert named - defined - files == set()

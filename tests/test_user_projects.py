"""Your model, your data: a user's own factory module and own images (an RGB .npz with float
pixels, a folder of grey PNGs), made here from the MNIST fixture, through validate, both engines,
run, compare, export, reproduce; and every broken variant refused in one line."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fork_server
import numpy as np
import pytest
from PIL import Image

import tunelab.api as tl
from tunelab.define.data import Splits
from tunelab.define.model import source_digest
from tunelab.errors import UserError
from tunelab.record.names import Role, TagKey
from tunelab.record.query import Query
from tunelab.record.recorded import load_recorded_run
from tunelab.record.store import Tracker

MODELS = '''
import keras


def small(units: int = 32, dropout: float = 0.1, *, input_shape, num_classes):
    """A user's plain function: a conv and a dense layer, uncompiled."""
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(units, activation="relu")(x)
    x = keras.layers.Dropout(dropout)(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax")(x))


def compiled(units: int = 32, *, input_shape, num_classes):
    """The same model, compiled with its own optimizer and loss."""
    model = small(units, input_shape=input_shape, num_classes=num_classes)
    model.compile(keras.optimizers.SGD(0.05), "sparse_categorical_crossentropy")
    return model


def needs_depth(depth, units: int = 32, *, input_shape, num_classes):
    return small(input_shape=input_shape, num_classes=num_classes)


def not_a_model(units: int = 32, *, input_shape, num_classes):
    return "a string"


def five_outputs(units: int = 32, *, input_shape, num_classes):
    return small(units, input_shape=input_shape, num_classes=5)


def logits(units: int = 32, *, input_shape, num_classes):
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Flatten()(inputs)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))


def no_shape(units: int = 32):
    return None
'''
SPACE = """
parameters:
  units: {type: categorical, values: [16, 32]}
  learning_rate: {type: float, low: 1e-3, high: 1e-2, log: true}
fixed: {optimizer: adam, epochs: 2, batch_size: 32, dropout: 0.1}
"""
EXPERIMENT = """
name: userproj
dataset: {npz: data.npz}
model: {factory: "mymodels:small", path: models}
validation_size: 0.25
search_space: space.yaml
engine: {name: optuna, sampler: random, pruner: none}
budget: {trials: 2}
seed: 0
pipeline:
  shares: {search: 0.4, confirmation: 0.2, final: 0.4}
  confirm_top: 1
  ensemble: 2
  formats: [keras, savedmodel, tflite, onnx]
"""
ONLY_UNITS = """fixed: {epochs: 2, batch_size: 32}
parameters:
  units: {type: categorical, values: [16, 32]}
"""
CLASSES = 4


def rgb_arrays(splits: Splits) -> dict[str, np.ndarray]:
    """Four digit classes of the fixture at 14x14, tinted per class into RGB, floats in [0, 1]."""
    out = {}
    for name, split, count in (("train", splits.train, 600), ("test", splits.test, 200)):
        keep = np.flatnonzero(split.y < CLASSES)[:count]
        grey = split.x[keep, ..., 0].astype(np.float32) / 255.0
        small = grey.reshape(len(keep), 14, 2, 14, 2).mean(axis=(2, 4))
        tint = np.stack([np.ones(len(keep)), 0.5 + 0.1 * split.y[keep], np.full(len(keep), 0.8)])
        out[f"x_{name}"] = (small[..., None] * tint.T[:, None, None, :]).astype(np.float32)
        out[f"y_{name}"] = split.y[keep].astype(np.int64)
    return out


def write_grey_folder(folder: Path, splits: Splits, per_class: tuple[int, int] = (40, 12)) -> None:
    """Digits 0, 1, 2 of the fixture as grey PNG files under train/<name>/ and test/<name>/."""
    for split_name, split, count in (
        ("train", splits.train, per_class[0]),
        ("test", splits.test, per_class[1]),
    ):
        for label, name in enumerate(("zero", "one", "two")):
            target = folder / split_name / name
            target.mkdir(parents=True, exist_ok=True)
            for index in np.flatnonzero(split.y == label)[:count]:
                Image.fromarray(split.x[index, ..., 0], mode="L").save(target / f"{index}.png")


def project(folder: Path, splits: Splits, experiment: str = EXPERIMENT) -> Path:
    """A user project: its factory module, its data, its space and experiment files."""
    (folder / "models").mkdir(parents=True, exist_ok=True)
    (folder / "models" / "mymodels.py").write_text(MODELS)
    np.savez(folder / "data.npz", **rgb_arrays(splits))
    write_grey_folder(folder / "digits", splits)
    (folder / "space.yaml").write_text(textwrap.dedent(SPACE))
    (folder / "userproj.yaml").write_text(textwrap.dedent(experiment))
    return folder / "userproj.yaml"


def stores(folder: Path) -> dict[str, str]:
    return {
        "tracking_uri": f"sqlite:///{folder / 'mlflow.db'}",
        "storage": f"sqlite:///{folder / 'optuna.db'}",
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    "engine",
    ["{name: optuna, sampler: random, pruner: none}", "{name: kerastuner, tuner: random}"],
)
def test_a_user_factory_tunes_on_a_user_rgb_npz_with_either_engine(
    engine: str, tmp_path: Path, tiny_splits: Splits
) -> None:
    path = project(
        tmp_path,
        tiny_splits,
        EXPERIMENT.replace("{name: optuna, sampler: random, pruner: none}", engine),
    )
    result = tl.tune(path, **stores(tmp_path))
    assert result.best is not None and result.best.value is not None
    assert result.best.value > 1 / CLASSES  # it learns something in two epochs
    tracker = Tracker(stores(tmp_path)["tracking_uri"])
    run = tracker.get_run(result.best.run_id)
    module = tmp_path / "models" / "mymodels.py"
    assert run.data.tags[TagKey.FACTORY] == "mymodels:small"
    assert run.data.tags[TagKey.FACTORY_SHA256] == source_digest(module)
    config = load_recorded_run(tracker, result.best.run_id).config
    assert config.input_shape == (14, 14, 3) and config.num_classes == CLASSES
    assert set(config.params) == {"units", "dropout"}  # the factory's own, nothing of tunelab's
    parent = tracker.get_run(result.parent_run_id).data
    assert parent.tags[TagKey.DATASET] == "data" and len(parent.tags[TagKey.DATASET_DIGEST]) == 64
    assert "floats [0, 1]" in parent.params["data_pixel_range"]


@pytest.mark.slow
def test_a_user_folder_runs_end_to_end_with_its_own_baseline_and_exports_verified_formats(
    tmp_path: Path, tiny_splits: Splits
) -> None:
    path = project(
        tmp_path,
        tiny_splits,
        EXPERIMENT.replace("{npz: data.npz}", "{folder: digits}").replace("0.25", "0.2"),
    )
    out = tmp_path / "bundle"
    result = tl.run(path, budget="10m", out=out, **stores(tmp_path))
    assert result.single is not None and result.ensemble is not None
    for delivered in (result.single, result.ensemble):
        assert 1 / 3 < delivered.test_accuracy <= 1.0
        for name in ("model.keras", "model.tflite", "model.onnx", "card.md"):
            assert (Path(delivered.bundle) / name).exists(), name
    tracker = Tracker(stores(tmp_path)["tracking_uri"])
    [baseline] = tracker.search_all(Query.of(role=Role.BASELINE))
    assert baseline.data.tags[TagKey.DATASET] == "digits"
    baseline_config = load_recorded_run(tracker, baseline.info.run_id).config
    assert baseline_config.input_shape == (28, 28, 1) and baseline_config.num_classes == 3
    assert baseline_config.cnn().filters == 32  # the seed CNN, adapted to three classes
    assert result.baseline_test_accuracy is not None  # measured, never MNIST's 99.25 %
    assert not any("99.25" in line for line in result.lines())
    table = tl.compare(path, tracking_uri=stores(tmp_path)["tracking_uri"])
    assert "baseline (classic CNN)" in set(table["model"])
    checks = [
        c
        for c in tl.export(
            path,
            formats=("keras", "onnx"),
            out=tmp_path / "again",
            **{"tracking_uri": stores(tmp_path)["tracking_uri"]},
        ).checks
    ]
    assert [c.name for c in checks] == ["keras", "onnx"] and all(c.ok for c in checks)


@pytest.mark.slow
def test_a_trial_of_a_user_factory_is_rebuilt_only_through_its_experiment_file(
    tmp_path: Path, tiny_splits: Splits
) -> None:
    path = project(tmp_path, tiny_splits)
    result = tl.tune(path, trials=1, **stores(tmp_path))
    assert result.best is not None
    script = f"""
import tunelab.api as tl
try:
    tl.reproduce({result.best.run_id!r}, tracking_uri={stores(tmp_path)["tracking_uri"]!r})
except Exception as error:
    print(type(error).__name__, error)
again = tl.reproduce({result.best.run_id!r}, experiment={str(path)!r},
                     tracking_uri={stores(tmp_path)["tracking_uri"]!r})
print("reproduced", again.best_val_accuracy is not None)
"""
    done = fork_server.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    lines = done.stdout.splitlines()
    assert lines[0].startswith("FactoryError") and "name the experiment file" in lines[0], done
    assert lines[-1] == "reproduced True", done.stderr[-2000:]


@pytest.mark.slow
def test_resuming_a_sweep_on_other_data_or_another_factory_source_is_refused(
    tmp_path: Path, tiny_splits: Splits
) -> None:
    path = project(tmp_path, tiny_splits)
    tl.tune(path, trials=1, **stores(tmp_path))
    module = tmp_path / "models" / "mymodels.py"
    module.write_text(module.read_text() + "\n# edited on another host\n")
    with pytest.raises(UserError, match="not the code this sweep trained with") as refused:
        tl.tune(path, trials=2, **stores(tmp_path))
    assert "\n" not in str(refused.value)
    module.write_text(MODELS)
    arrays = dict(np.load(tmp_path / "data.npz"))
    arrays["x_train"] = arrays["x_train"][::-1].copy()
    np.savez(tmp_path / "data.npz", **arrays)
    with pytest.raises(UserError, match="the data differs from this sweep's"):
        tl.tune(path, trials=2, **stores(tmp_path))


@pytest.mark.slow
def test_a_factory_that_compiles_its_model_keeps_its_optimizer(
    tmp_path: Path, tiny_splits: Splits
) -> None:
    experiment = EXPERIMENT.replace("mymodels:small", "mymodels:compiled")
    path = project(tmp_path, tiny_splits, experiment)
    (tmp_path / "space.yaml").write_text(ONLY_UNITS)
    result = tl.tune(path, trials=1, **stores(tmp_path))
    assert result.best is not None and result.best.value is not None
    (tmp_path / "space.yaml").write_text(
        ONLY_UNITS + "  learning_rate: {type: float, low: 1e-3, high: 1e-2, log: true}\n"
    )
    with pytest.raises(UserError, match="returns a compiled model, which keeps its own"):
        tl.validate([path])


def _npz(**changes: Any) -> Callable[[Path, dict[str, np.ndarray]], None]:
    def change(folder: Path, arrays: dict[str, np.ndarray]) -> None:
        for key, value in changes.items():
            if value is None:
                arrays.pop(key)
            else:
                arrays[key] = value(arrays[key]) if callable(value) else value
        np.savez(folder / "data.npz", **arrays)

    return change


BROKEN_NPZ = {
    "a missing array": (_npz(y_test=None), "missing array 'y_test'"),
    "labels that are not integers": (
        _npz(y_train=lambda y: y + 0.5),
        "labels that are not whole numbers",
    ),
    "labels that skip a class": (_npz(y_train=lambda y: y * 2), "never has label(s)"),
    "one-hot labels": (_npz(y_train=lambda y: np.eye(CLASSES)[y]), "not one-hot rows"),
    "counts that differ": (_npz(y_train=lambda y: y[:-3]), "images but y_train has"),
    "train and test shapes that differ": (
        _npz(x_test=lambda x: x[:, :12, :12]),
        "train images are 14x14x3 but test images are 12x12x3",
    ),
    "arrays that are not images": (
        _npz(x_train=lambda x: x.reshape(len(x), -1)),
        "images must be (N, H, W) or (N, H, W, C)",
    ),
    "NaN pixels": (_npz(x_train=lambda x: np.where(x > 0.9, np.nan, x)), "NaN"),
    "float pixels out of both ranges": (
        _npz(x_train=lambda x: x * 400.0 - 10.0),
        "outside both [0, 1] and [0, 255]",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN_NPZ))
def test_a_broken_npz_is_refused_in_one_line(
    case: str, tmp_path: Path, tiny_splits: Splits
) -> None:
    path = project(tmp_path, tiny_splits)
    change, expected = BROKEN_NPZ[case]
    change(tmp_path, dict(np.load(tmp_path / "data.npz")))
    with pytest.raises(UserError) as refused:
        tl.validate([path])
    assert expected in str(refused.value) and "\n" not in str(refused.value)


def _remove_one_class_folder(folder: Path) -> None:
    for item in (folder / "test" / "two").iterdir():
        item.unlink()
    (folder / "test" / "two").rmdir()


def _empty_class(folder: Path) -> None:
    for item in (folder / "train" / "two").iterdir():
        item.unlink()


def _bad_image(folder: Path) -> None:
    (folder / "train" / "one" / "broken.png").write_bytes(b"not a png at all")


def _other_size(folder: Path) -> None:
    Image.new("L", (20, 20)).save(folder / "train" / "one" / "big.png")


def _other_channels(folder: Path) -> None:
    Image.new("RGBA", (28, 28)).save(folder / "train" / "one" / "rgba.png")


BROKEN_FOLDER = {
    "train and test classes that differ": (_remove_one_class_folder, "different classes"),
    "an empty class folder": (_empty_class, "an empty class folder"),
    "an image that cannot be decoded": (_bad_image, "cannot be decoded as an image"),
    "images of different sizes": (_other_size, "differ in size"),
    "images of different channels": (_other_channels, "differ in channels"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_FOLDER))
def test_a_broken_folder_is_refused_in_one_line(
    case: str, tmp_path: Path, tiny_splits: Splits
) -> None:
    path = project(tmp_path, tiny_splits, EXPERIMENT.replace("{npz: data.npz}", "{folder: digits}"))
    change, expected = BROKEN_FOLDER[case]
    change(tmp_path / "digits")
    with pytest.raises(UserError) as refused:
        tl.validate([path])
    assert expected in str(refused.value) and "\n" not in str(refused.value)


def test_an_image_size_resizes_and_converts_a_mixed_folder(
    tmp_path: Path, tiny_splits: Splits
) -> None:
    path = project(
        tmp_path,
        tiny_splits,
        EXPERIMENT.replace("{npz: data.npz}", "{folder: digits, image_size: [16, 16]}"),
    )
    _other_size(tmp_path / "digits")
    _other_channels(tmp_path / "digits")
    [line] = tl.validate([path])
    assert "16x16x3" in line and "3 classes" in line


BROKEN_FACTORY = {
    "a module that is not there": ("nothere:small", "no module named 'nothere'"),
    "a function that is not there": ("mymodels:nope", "has no 'nope'"),
    "a required parameter nobody gives": ("mymodels:needs_depth", "requires 'depth'"),
    "no Keras model": ("mymodels:not_a_model", "not a Keras model"),
    "outputs for other classes": ("mymodels:five_outputs", "outputs 5 values per image"),
    "outputs that are not probabilities": ("mymodels:logits", "end it with a softmax"),
    "no input_shape or num_classes": ("mymodels:no_shape", "must take input_shape"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_FACTORY))
def test_a_broken_factory_is_refused_in_one_line(
    case: str, tmp_path: Path, tiny_splits: Splits
) -> None:
    factory, expected = BROKEN_FACTORY[case]
    path = project(tmp_path, tiny_splits, EXPERIMENT.replace("mymodels:small", factory))
    (tmp_path / "space.yaml").write_text(ONLY_UNITS)
    with pytest.raises(UserError) as refused:
        tl.validate([path])
    assert expected in str(refused.value) and "\n" not in str(refused.value)


def test_a_parameter_the_factory_does_not_take_is_refused(
    tmp_path: Path, tiny_splits: Splits
) -> None:
    path = project(tmp_path, tiny_splits)
    (tmp_path / "space.yaml").write_text(
        textwrap.dedent(SPACE).replace("dropout: 0.1", "dropout: 0.1, bogus: 3")
    )
    with pytest.raises(UserError, match="does not accept 'bogus'"):
        tl.validate([path])


@pytest.mark.slow
def test_the_command_line_refuses_in_one_line_exit_2_and_creates_nothing(
    tmp_path: Path, tiny_splits: Splits
) -> None:
    path = project(tmp_path, tiny_splits, EXPERIMENT.replace("path: models", "path: gone"))
    done = subprocess.run(
        [sys.executable, "-m", "tunelab", "tune", str(path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 2
    [line] = [x for x in done.stderr.splitlines() if x.strip()]
    assert line.startswith("error:") and "model.path: no such folder" in line
    assert not (tmp_path / "tracking").exists() and not (tmp_path / "mlflow.db").exists()
    assert not list(tmp_path.glob("**/*.db"))


def test_the_shipped_example_validates(tmp_path: Path) -> None:
    """examples/digits: its data script, factory and experiment (what `make example` runs)."""
    root = Path(__file__).resolve().parents[1] / "examples" / "digits"
    sys.path.insert(0, str(root))
    try:
        from make_digits import write_folder
    finally:
        sys.path.remove(str(root))
    copy = tmp_path / "digits"
    copy.mkdir()
    for name in ("digits_model.py", "experiment.yaml", "space.yaml"):
        (copy / name).write_text((root / name).read_text())
    train, test = write_folder(copy / "data")
    assert (train, test) == (1438, 359)
    [line] = tl.validate([copy / "experiment.yaml"])
    assert "8x8x1" in line and "10 classes" in line and "digits_model:build" in line


@pytest.mark.slow
def test_output_to_a_log_file_has_whole_lines_and_no_terminal_decorations(
    tmp_path: Path, tiny_splits: Splits
) -> None:
    """What CI or a cluster's log collector sees: one line per message, no bars, timestamps or
    source locations, and a closing line whose totals add up."""
    import re

    path = project(tmp_path, tiny_splits)
    with open(tmp_path / "tune.log", "w") as log:
        done = fork_server.run(
            [sys.executable, "-m", "tunelab", "tune", str(path), "--timeout", "10m"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
    text = (tmp_path / "tune.log").read_text()
    assert done.returncode == 0, text[-2000:]
    assert "progress.py" not in text and "\x1b[" not in text and "━" not in text
    [closing] = [line for line in text.splitlines() if "this launch" in line]
    this_launch, on_clock, in_all = map(
        int,
        re.search(
            r"(\d+) s this launch \((\d+) s of it .*, (\d+) s there in all", closing
        ).groups(),
    )
    assert on_clock <= this_launch and on_clock <= in_all
    assert closing.endswith("in MLflow experiment 'userproj'.")  # not broken onto two lines

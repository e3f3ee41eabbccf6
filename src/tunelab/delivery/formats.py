"""Exported model formats, each written, loaded back and run on the test set.

A bundle holds the champion (or an ensemble, as one model) as `model.keras`, a TensorFlow SavedModel
(`saved_model/`), a TensorFlow Lite flat buffer (`model.tflite`) and an ONNX graph (`model.onnx`).
Each is written from the serving model (no augmentation layers), loaded back by its own runtime
(Keras, `tf.saved_model.load`, the TFLite interpreter, ONNX Runtime) and predicts the test images;
its accuracy and its largest class-probability difference from the Keras model are recorded.

Tolerance: `PROBABILITY_TOLERANCE` = 1e-4. The formats compute the same float32 network with
different kernels (oneDNN, XNNPACK, MLAS) that sum in different orders; for this network size that
moved a softmax output by at most 1.3e-6 (TFLite) and 7.7e-7 (ONNX) on the 10,000 test images (the
README's export row). 1e-4 is two orders of magnitude above that, yet a conversion bug (a wrong
layout, a dropped layer or rescaling) changes outputs wholesale. A predicted class may flip only
where the Keras model's top two probabilities are within twice the tolerance; any other flip fails
the export too.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tunelab.define.experiment import EXPORT_FORMATS
from tunelab.text import first_line

FORMATS = EXPORT_FORMATS
PROBABILITY_TOLERANCE = 1e-4
FILE_NAMES = {
    "keras": "model.keras",
    "savedmodel": "saved_model",
    "tflite": "model.tflite",
    "onnx": "model.onnx",
}
BATCH = 500

Predict = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]


class FormatError(ValueError):
    """An unknown format name."""


def parse_formats(text: str) -> tuple[str, ...]:
    """`keras,onnx` -> ("keras", "onnx"); refuses names it does not know, in one line."""
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [name for name in names if name not in FORMATS]
    if unknown or not names:
        raise FormatError(
            f"unknown format(s) {', '.join(unknown) or '(none given)'}: choose from "
            f"{', '.join(FORMATS)}"
        )
    return names


@dataclass(frozen=True)
class FormatCheck:
    """One exported format, loaded back and compared with the Keras model on the test set."""

    name: str
    path: Path
    accuracy: float
    max_probability_difference: float
    flipped_predictions: int
    unexplained_flips: int
    size_bytes: int
    problem: str = ""  # the writer or the runtime failed: why (the check then fails)

    @property
    def ok(self) -> bool:
        return (
            not self.problem
            and self.max_probability_difference <= PROBABILITY_TOLERANCE
            and self.unexplained_flips == 0
        )

    @classmethod
    def broken(cls, name: str, path: Path, problem: str) -> FormatCheck:
        """A format that could not be written or run: failed, with the reason."""
        nan = float("nan")
        return cls(
            name, path, nan, float("inf"), 0, 0, _size(path) if path.exists() else 0, problem
        )


@contextmanager
def quiet_runtimes() -> Iterator[None]:
    """Silence the runtimes' deprecation chatter (tf.lite's LiteRT notice, tf2onnx's np.object,
    Keras' note that an inference model has no optimizer state to load): not the user's concern."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
        warnings.filterwarnings("ignore", message=".*Skipping variable loading for optimizer.*")
        yield


def write_format(model: Any, name: str, folder: Path) -> Path:
    """Write `model` in format `name` under `folder`; returns the file or directory."""
    with quiet_runtimes():
        return _write_format(model, name, folder)


def _write_format(model: Any, name: str, folder: Path) -> Path:
    path = folder / FILE_NAMES[name]
    if name == "keras":
        model.save(path)
    elif name == "savedmodel":
        model.export(str(path), format="tf_saved_model", verbose=False)
    elif name == "tflite":
        import tensorflow as tf

        with tempfile.TemporaryDirectory() as tmp:
            model.export(tmp, format="tf_saved_model", verbose=False)
            path.write_bytes(tf.lite.TFLiteConverter.from_saved_model(tmp).convert())
    elif name == "onnx":
        model.export(str(path), format="onnx", verbose=False)
    else:
        raise FormatError(f"unknown format {name}")
    return path


def load_predictor(name: str, path: Path) -> Predict:
    """A function images -> probabilities that runs the exported file in its own runtime."""
    if name == "keras":
        import keras

        model = keras.saving.load_model(path)
        return lambda x: np.asarray(model.predict(x, verbose=0, batch_size=BATCH))
    if name == "savedmodel":
        import tensorflow as tf

        loaded = tf.saved_model.load(str(path))
        return lambda x: np.asarray(loaded.serve(x))
    if name == "tflite":
        return _tflite_predictor(path)
    if name == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name
        return lambda x: np.asarray(session.run(None, {input_name: x})[0])
    raise FormatError(f"unknown format {name}")


def _tflite_predictor(path: Path) -> Predict:
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_path=str(path))
    state = {"batch": -1}

    def predict(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        source = interpreter.get_input_details()[0]
        if state["batch"] != len(x):
            interpreter.resize_tensor_input(source["index"], list(x.shape))
            interpreter.allocate_tensors()
            state["batch"] = len(x)
        interpreter.set_tensor(source["index"], x)
        interpreter.invoke()
        output = interpreter.get_output_details()[0]
        return np.array(interpreter.get_tensor(output["index"]))

    return predict


def predict_in_batches(predict: Predict, images: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """Raw 0..255 pixels (N, H, W, C) -> probabilities, BATCH images at a time."""
    x = images.astype(np.float32)
    return np.concatenate([predict(x[i : i + BATCH]) for i in range(0, len(x), BATCH)])


def write_and_check(
    model: Any,
    name: str,
    folder: Path,
    images: npt.NDArray[np.uint8],
    labels: npt.NDArray[np.integer],
    reference: npt.NDArray[np.float32],
) -> FormatCheck:
    """Write one format, load it back in its own runtime and compare; never raises for a
    writer or runtime that fails (the check fails with the reason instead)."""
    path = folder / FILE_NAMES[name]
    try:
        path = write_format(model, name, folder)
    except Exception as error:  # a converter's failure is the format's failure, not a crash
        return FormatCheck.broken(name, path, f"writing failed: {_one_line(error)}")
    try:
        return check_format(name, path, images, labels, reference)
    except Exception as error:
        hint = LOAD_HINTS.get(name, "")
        return FormatCheck.broken(name, path, f"loading it back failed: {_one_line(error)}{hint}")


# what a user's model can do about a format that does not load back
LOAD_HINTS = {
    "keras": " (a custom layer must be registered with "
    "@keras.saving.register_keras_serializable() in the factory's module, and tunelab never "
    "loads Lambda layers' code)",
}


def _one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {first_line(error)[:200]}"


def check_format(
    name: str,
    path: Path,
    images: npt.NDArray[np.uint8],
    labels: npt.NDArray[np.integer],
    reference: npt.NDArray[np.float32],
) -> FormatCheck:
    """Load the exported file back, predict the test set, compare with `reference`."""
    with quiet_runtimes():
        probabilities = predict_in_batches(load_predictor(name, path), images)
    predicted = probabilities.argmax(axis=1)
    expected = reference.argmax(axis=1)
    ordered = np.sort(reference, axis=1)
    margin = ordered[:, -1] - ordered[:, -2]
    flipped = predicted != expected
    return FormatCheck(
        name=name,
        path=path,
        accuracy=float(np.mean(predicted == labels)),
        max_probability_difference=float(np.abs(probabilities - reference).max()),
        flipped_predictions=int(flipped.sum()),
        unexplained_flips=int(np.sum(flipped & (margin > 2 * PROBABILITY_TOLERANCE))),
        size_bytes=_size(path),
    )


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size

"""Model factories: the experiment's function imported, called with a run's parameters, checked.

A factory is any function `f(**params, input_shape, num_classes) -> keras.Model` (the built-in
CNN is `tunelab.training.cnn.build_cnn`). `build_model(config)` calls it with the dtype policy
of the run's precision set for the duration of the call (a factory knows nothing of precision,
and nothing leaks into the next model built in the process), makes sure the probabilities come
out in float32, and compiles the model with the run's training settings unless the factory
compiled it itself (then its optimizer and loss are kept; tunelab adds its accuracy metric).

What the factory returns is checked: a Keras model, one output of `num_classes` probabilities.
Importing a factory runs its module's code; the module comes from the experiment's `model.path`
(put first on the import path) or the installed packages, never from a record. A worker whose
copy of the factory's source differs from the one the sweep recorded refuses to start.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.define.model import FactoryRef, source_digest
from tunelab.define.run_config import RunConfig
from tunelab.errors import UserError
from tunelab.text import first_line

SHAPE_ARGUMENTS = ("input_shape", "num_classes")


class FactoryError(UserError):
    """The factory cannot be imported, called or used (one line that says what to fix)."""


@dataclass(frozen=True)
class Factory:
    """An imported factory, its source file's digest and the keyword arguments it takes."""

    ref: FactoryRef
    function: Callable[..., Any]
    source: Path
    sha256: str
    accepts: frozenset[str]
    required: frozenset[str]
    takes_any: bool  # it has **kwargs

    def check_names(self, given: set[str]) -> None:
        """Refuse parameters it does not take and required ones that nothing gives."""
        if not self.takes_any:
            unknown = sorted(given - self.accepts)
            if unknown:
                raise FactoryError(
                    f"model.factory: {self.ref.function}() does not accept {unknown[0]!r} (a "
                    f"parameter or fixed value of the search space); it takes "
                    f"{sorted(self.accepts) or 'only input_shape and num_classes'}"
                )
        missing = sorted(self.required - given)
        if missing:
            raise FactoryError(
                f"model.factory: {self.ref.function}() requires {missing[0]!r}, which neither a "
                "parameter nor `fixed:` of the search space gives"
            )


def load_factory(ref: FactoryRef, expected_sha256: str = "") -> Factory:
    """Import the factory `ref` names; refuse (one line) what cannot be used.

    `expected_sha256` is the digest a sweep recorded: a different source is refused.
    """
    function = _import(ref.factory, str(ref.path) if ref.path else "")
    source = Path(inspect.getsourcefile(function) or sys.modules[ref.module].__file__ or "")
    digest = source_digest(source) if source.is_file() else ""
    if expected_sha256 and digest and digest != expected_sha256:
        raise FactoryError(
            f"model.factory: {ref.factory} in {source} is not the code this sweep trained with "
            f"(source SHA-256 {digest[:12]}, the sweep recorded {expected_sha256[:12]}); use the "
            "same version of the factory on every worker"
        )
    accepts, required, takes_any = _signature(ref, function)
    return Factory(ref, function, source, digest, accepts, required, takes_any)


def _import(factory: str, path: str) -> Callable[..., Any]:
    """The factory function, its module imported from `path` first (an already imported module
    of the same name from elsewhere, another experiment's, is imported again from `path`)."""
    module_name, _, name = factory.partition(":")
    if path:
        if path in sys.path:
            sys.path.remove(path)
        sys.path.insert(0, path)
        _forget_if_elsewhere(module_name, Path(path))
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        where = f"model.path {path}" if path else "the installed packages (set model.path)"
        raise FactoryError(
            f"model.factory: no module named {error.name or module_name!r} in {where}"
        ) from None
    except Exception as error:  # the user's module failed while importing
        raise FactoryError(
            f"model.factory: importing {module_name} failed: {type(error).__name__}: "
            f"{first_line(error)}"
        ) from None
    function = getattr(module, name, None)
    if function is None:
        public = sorted(n for n in vars(module) if callable(vars(module)[n]) and n[0] != "_")
        raise FactoryError(
            f"model.factory: module {module_name} has no {name!r} (it has {public[:8]})"
        )
    if not callable(function):
        raise FactoryError(f"model.factory: {factory} is not a function")
    return function  # type: ignore[no-any-return]


def _forget_if_elsewhere(module_name: str, folder: Path) -> None:
    """Drop a module (and its package) imported from outside `folder`, so that importing it
    again finds the copy in `folder`."""
    top = module_name.partition(".")[0]
    loaded = sys.modules.get(top)
    origin = getattr(loaded, "__file__", None)
    if loaded is None or (origin is not None and Path(origin).resolve().is_relative_to(folder)):
        return
    for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
        del sys.modules[name]
    importlib.invalidate_caches()


def _signature(
    ref: FactoryRef, function: Callable[..., Any]
) -> tuple[frozenset[str], frozenset[str], bool]:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return frozenset(), frozenset(), True
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    named = {p.name: p for p in parameters if p.kind in kinds}
    takes_any = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in parameters)
    for argument in SHAPE_ARGUMENTS:
        if argument not in named and not takes_any:
            raise FactoryError(
                f"model.factory: {ref.function}() must take {argument} (and "
                f"{' and '.join(a for a in SHAPE_ARGUMENTS if a != argument)}) as keyword "
                "arguments: tunelab passes the data's image shape and class count"
            )
    accepts = frozenset(named) - set(SHAPE_ARGUMENTS)
    required = frozenset(n for n, p in named.items() if p.default is inspect.Parameter.empty) - set(
        SHAPE_ARGUMENTS
    )
    return accepts, required, takes_any


def factory_of(config: RunConfig) -> Factory:
    """The factory a recorded run config names: the built-in CNN, or a user factory that an
    experiment file imported in this process (`tunelab.training.prepare`); a record alone never
    makes tunelab import code (architecture rule 10)."""
    ref = FactoryRef(config.factory, None)
    if not ref.builtin and ref.module not in sys.modules:
        raise FactoryError(
            f"this run's model was built by {config.factory}, which tunelab imports only from "
            "an experiment file: name the experiment file that trained it (EXPERIMENT.yaml)"
        )
    return load_factory(ref)


@contextmanager
def dtype_policy(precision: str) -> Iterator[None]:
    """Layers created inside compute in `precision` (float32 or mixed_bfloat16); restored after."""
    import keras

    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)


def call_factory(config: RunConfig, factory: Factory, precision: str) -> Any:
    """The factory's model for `config` in `precision`, checked, uncompiled as it returned it."""
    import keras

    with dtype_policy(precision):
        try:
            model = factory.function(
                **config.params,
                input_shape=tuple(config.input_shape),
                num_classes=config.num_classes,
            )
        except FactoryError:
            raise
        except Exception as error:  # the user's code: a failed trial, or a refused validate
            raise FactoryCallError(
                f"{config.factory} raised {type(error).__name__}: {first_line(error)[:300]}"
            ) from error
    if not isinstance(model, keras.Model):
        raise FactoryError(
            f"model.factory: {config.factory} returned {type(model).__name__}, not a Keras "
            "model (return keras.Model(...) or keras.Sequential([...]))"
        )
    outputs = model.outputs if hasattr(model, "outputs") and model.outputs else None
    shape = tuple(outputs[0].shape) if outputs and len(outputs) == 1 else None
    if outputs is not None and len(outputs) != 1:
        raise FactoryError(
            f"model.factory: {config.factory} returned a model with {len(outputs)} outputs; "
            "it must have one: the class probabilities"
        )
    if shape is not None and shape[-1] != config.num_classes:
        raise FactoryError(
            f"model.factory: {config.factory}'s model outputs {shape[-1]} values per image but "
            f"the data has {config.num_classes} classes (use num_classes for the last layer)"
        )
    if outputs is not None and str(outputs[0].dtype) != "float32":
        # probabilities stay float32 under mixed precision (the softmax and the loss need it)
        cast = keras.layers.Activation("linear", dtype="float32", name="probabilities_float32")
        model = keras.Model(model.inputs, cast(model.outputs[0]), name=model.name)
    return model


class FactoryCallError(UserError):
    """The factory itself raised: in a trial the trial fails with this reason."""


def build_model(
    config: RunConfig, steps_per_epoch: int | None, factory: Factory | None = None
) -> Any:
    """The compiled model of a run: the factory's, in the run's precision (see the module doc)."""
    from tunelab.training.model import accuracy_metric, compile_model

    model = call_factory(config, factory or factory_of(config), config.training.precision)
    if getattr(model, "compiled", False):
        model.compile(optimizer=model.optimizer, loss=model.loss, metrics=[accuracy_metric()])
    else:
        compile_model(model, config.training, steps_per_epoch)
    return model


def compiles_itself(config: RunConfig, factory: Factory) -> bool:
    """Whether the factory returns a compiled model (then its optimizer and loss are kept)."""
    return bool(getattr(call_factory(config, factory, "float32"), "compiled", False))


def serving_model(model: Any, config: RunConfig, factory: Factory | None = None) -> Any:
    """The trained model in float32, for export and serving: the factory's model built again in
    float32 with the trained weights (a bfloat16-trained model's variables are float32), and
    without tunelab's training state (its loss class), so that the exported `.keras` file
    loads in a Python that never imports tunelab."""
    plain = call_factory(config, factory or factory_of(config), "float32")
    plain.set_weights(model.get_weights())
    return plain

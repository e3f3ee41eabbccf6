"""Which function builds the models: the experiment's `model:` key, and where its code lives.

`model: {factory: "package.module:function", path: DIR}` names a model factory: a function that
takes the sampled and fixed parameters as keyword arguments plus `input_shape` and `num_classes`
and returns a Keras model (`tunelab.training.factory` calls it). `path` (relative to the
experiment file) is put first on the import path of every process that trains, so a worker on
another host imports the factory from its own copy of the project. Without `model:`, the
built-in CNN is the factory. Naming a factory runs its module's code: only an experiment file
can name one (architecture rule 10); nothing read back from a record is ever imported.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, StrictStr

from tunelab.define.run_config import BUILTIN_FACTORY
from tunelab.define.space import BUILTIN, StrictModel, Targets

FACTORY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"


class ModelSpec(StrictModel):
    """The experiment file's `model:` section."""

    factory: StrictStr = Field(
        BUILTIN_FACTORY,
        pattern=FACTORY_PATTERN,
        description="package.module:function that builds a model (default: the built-in CNN)",
    )
    path: StrictStr | None = Field(
        None, description="folder put on the import path (relative to the experiment file)"
    )


@dataclass(frozen=True)
class FactoryRef:
    """A factory named by an experiment: its import path and the folder its code is found in."""

    factory: str
    path: Path | None  # absolute; None: the installed packages

    @property
    def builtin(self) -> bool:
        return self.factory == BUILTIN_FACTORY

    @property
    def module(self) -> str:
        return self.factory.partition(":")[0]

    @property
    def function(self) -> str:
        return self.factory.partition(":")[2]

    def targets(self) -> Targets:
        """What a search space may set besides training: the built-in CNN's typed fields, or
        (checked once the factory is imported) a user factory's keyword arguments."""
        return BUILTIN if self.builtin else Targets(f"factory {self.factory}", None)


def source_digest(path: Path) -> str:
    """SHA-256 of a factory's source file: workers and records compare it."""
    return hashlib.sha256(path.read_bytes()).hexdigest()

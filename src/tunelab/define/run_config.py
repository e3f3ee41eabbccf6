"""What one run trains, as its record keeps it: `RunConfig` = factory + parameters + training.

A run (trial, baseline, confirmation, refit) is rebuilt from this alone plus the data: the
factory's import path and the SHA-256 of its source file when it trained, the parameters the
factory was called with, how it was trained (`TrainingConfig`) and the data's image shape and
class count. It is written as `config.json` on the run and read back with `RunConfig.read`,
which also reads the records of tunelab versions that kept one flat CNN config. Nothing here is
imported or executed: the factory named in a record is only compared with the one the
experiment file names (architecture rule 10).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tunelab.define.cnn import DEFAULT_CLASSES, DEFAULT_SHAPE, CnnConfig, parse_cnn
from tunelab.define.training import TrainingConfig

BUILTIN_FACTORY = "tunelab.training.cnn:build_cnn"
Scalar = bool | int | float | str


class RunConfig(BaseModel):
    """Everything needed to rebuild and retrain one model (given its data)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    factory: str = Field(BUILTIN_FACTORY, description="module:function that builds the model")
    factory_sha256: str = Field("", description="SHA-256 of the factory's source file")
    params: dict[str, Scalar] = Field(default_factory=dict, description="the factory's arguments")
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    input_shape: tuple[int, int, int] = DEFAULT_SHAPE
    num_classes: int = Field(DEFAULT_CLASSES, ge=2)

    @property
    def builtin(self) -> bool:
        return self.factory == BUILTIN_FACTORY

    def cnn(self) -> CnnConfig:
        """The built-in CNN's architecture (only for the built-in factory)."""
        return parse_cnn(dict(self.params))

    def with_training(self, training: TrainingConfig) -> RunConfig:
        return self.model_copy(update={"training": training})

    def with_epochs(self, epochs: int) -> RunConfig:
        """Trained for `epochs` (see `TrainingConfig.with_epochs`)."""
        return self.with_training(self.training.with_epochs(epochs))

    def with_snapshot_cycles(self, cycles: int) -> RunConfig:
        """Its schedule run `cycles` times in a row, at most once per epoch (snapshot members);
        unchanged for a constant rate, which has nothing to restart."""
        if self.training.lr_schedule == "constant":
            return self
        update = {"snapshot_cycles": min(cycles, self.training.epochs)}
        return self.with_training(self.training.model_copy(update=update))

    def with_precision(self, precision: str) -> RunConfig:
        return self.with_training(self.training.model_copy(update={"precision": precision}))

    def flat(self) -> dict[str, Any]:
        """Every setting as one flat mapping (MLflow params: the UI compares them by column)."""
        return {
            "factory": self.factory,
            **{f"model.{k}": v for k, v in self.params.items()},
            **{f"training.{k}": v for k, v in self.training.model_dump().items()},
            "input_shape": "x".join(map(str, self.input_shape)),
            "num_classes": self.num_classes,
        }

    def model_key(self) -> str:
        """Identifies the model (not how it trains): cost and speed caches use it."""
        return json.dumps(
            [self.factory, self.params, self.input_shape, self.num_classes], sort_keys=True
        )

    @classmethod
    def read(cls, text: str) -> RunConfig:
        """A recorded config.json: this layout, or the flat CNN config of earlier versions."""
        data = json.loads(text)
        if "training" in data or "factory" in data:
            return cls.model_validate(data)
        return cls.from_flat_cnn(data)

    @classmethod
    def from_flat_cnn(cls, values: dict[str, Any]) -> RunConfig:
        """An earlier version's one flat config (architecture, training and shape together)."""
        training = {k: v for k, v in values.items() if k in TrainingConfig.model_fields}
        params = {k: v for k, v in values.items() if k in CnnConfig.model_fields}
        side = int(values.get("image_size", DEFAULT_SHAPE[0]))
        return cls(
            params=parse_cnn(params).model_dump(),
            training=TrainingConfig.model_validate(training),
            input_shape=(side, side, 1),
            num_classes=int(values.get("num_classes", DEFAULT_CLASSES)),
        )


def cnn_run_config(
    cnn: CnnConfig | None = None,
    training: TrainingConfig | None = None,
    input_shape: tuple[int, int, int] = DEFAULT_SHAPE,
    num_classes: int = DEFAULT_CLASSES,
) -> RunConfig:
    """A run of the built-in CNN (default: the classic baseline, trained as it was)."""
    return RunConfig(
        params=(cnn or CnnConfig()).model_dump(),
        training=training or TrainingConfig(),
        input_shape=input_shape,
        num_classes=num_classes,
    )

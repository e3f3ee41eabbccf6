"""An ensemble as one model: the averaged softmax of K trained members, one input, one output.

Averaging the class probabilities of several independently trained networks is what wins on
MNIST (see docs/results.md); delivered as one Keras model it is exported, loaded back and checked
in every format exactly like a single model. Each member is its float32 serving copy, nested
under its own name (`member_0`, ...), so the members' identical layer names do not collide.

Members come from runs that kept their trained weights: the champion's refit and confirmation
retrainings and trials (`trained/model.weights.h5`), each rebuilt by its factory from the run's
recorded config, so no configuration is trained again just to join the ensemble.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras

from tunelab.define.run_config import RunConfig
from tunelab.errors import UserError
from tunelab.record.names import Artifact
from tunelab.record.recorded import recorded_config
from tunelab.record.store import Tracker
from tunelab.training.factory import call_factory, factory_of, serving_model


@dataclass(frozen=True)
class Member:
    """One member: the run that trained it, its config and its float32 model."""

    run_id: str
    label: str
    config: RunConfig
    model: Any


def ensemble_model(members: list[Member]) -> Any:
    """One Keras model averaging the members' probabilities (float32, raw 0..255 pixels in)."""
    if len(members) < 2:
        raise UserError(f"an ensemble needs at least 2 members (got {len(members)})")
    first = members[0].config
    inputs = keras.Input(shape=tuple(first.input_shape), name="image")
    outputs = []
    for index, member in enumerate(members):
        plain = serving_model(member.model, member.config)
        nested = keras.Model(plain.input, plain.output, name=f"member_{index}")
        outputs.append(nested(inputs))
    averaged = keras.layers.Average(name="probabilities")(outputs)
    return keras.Model(inputs, averaged, name="tunelab_ensemble")


def snapshot_members(
    run_id: str, label: str, config: RunConfig, snapshots: list[list[Any]], images: Any
) -> list[Member]:
    """The snapshots one training kept (`tunelab.training.snapshots`), newest first, each its
    own float32 model with batch-norm statistics recomputed for its weights from `images`."""
    from tunelab.training.batch_norm import recompute_batch_norm

    members = []
    count = len(snapshots) + 1
    for cycle, weights in reversed(list(enumerate(snapshots, start=1))):
        model = call_factory(config, factory_of(config), "float32")
        model.set_weights(weights)
        recompute_batch_norm(model, images)
        members.append(
            Member(
                run_id, f"{label} snapshot {cycle}/{count}", config.with_precision("float32"), model
            )
        )
    return members


def member_from_run(tracker: Tracker, run_id: str, label: str) -> Member:
    """The model a training kept (`trained/model.weights.h5`), rebuilt from its recorded config
    by its factory in float32."""
    run = tracker.get_run(run_id)
    if run is None:
        raise UserError(f"ensemble member run {run_id} not found in {tracker.shown_uri}")
    config = recorded_config(tracker, run)
    with tempfile.TemporaryDirectory() as tmp:
        path = tracker.download_artifact(run_id, Artifact.TRAINED_MODEL, Path(tmp))
        if path is None or config is None:
            raise UserError(
                f"run {run_id} kept no trained model to join an ensemble (confirm with "
                "`tunelab run`, or `tunelab confirm --keep-models`)"
            )
        model = call_factory(config, factory_of(config), "float32")
        model.load_weights(path)
    return Member(run_id, label, config.with_precision("float32"), model)

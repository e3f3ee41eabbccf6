"""What an export promises when something goes wrong, and what an ensemble export delivers.

- a format that disagrees with the Keras model, or whose writer fails, fails the export in one
  line: nothing is registered, the sweep is not pointed at it, the run is FAILED, the card says why;
- an ensemble is one model (one input, one output) that passes the same parity check in all four
  formats, is tested once, and is compared with the single champion on the same images;
- a second configuration tested on one sweep is counted and warned about;
- a checkpoint that does not read back whole is skipped for the one before it.
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import flat_config
from tunelab.define.data import Splits
from tunelab.delivery import formats
from tunelab.delivery.ensemble import Member, ensemble_model
from tunelab.delivery.export import (
    ExportError,
    ExportResult,
    count_test_evaluation,
    deliver,
    export_ensemble,
)
from tunelab.delivery.formats import FORMATS, PROBABILITY_TOLERANCE
from tunelab.delivery.model_card import ModelCard
from tunelab.record.names import Artifact, MetricName, Role, TagKey
from tunelab.record.query import Query
from tunelab.record.recorded import SweepRecord
from tunelab.record.store import Tracker
from tunelab.training.checkpoints import CheckpointWriter, load_checkpoint
from tunelab.training.train import train_and_validate

TINY = {"filters": 4, "dense_units": 8, "epochs": 1, "batch_size": 128, "optimizer": "adam"}


def trained_member(splits: Splits, seed: int, learning_rate: float) -> Member:
    """A one-epoch model of the fixture (a few seconds), as a confirmation would keep it."""
    config = flat_config(**{**TINY, "learning_rate": learning_rate})
    result = train_and_validate(config, splits, seed=seed)
    assert result.ok and result.model is not None
    return Member(f"{seed:032x}", f"seed {seed}", config, result.model)


@pytest.fixture(scope="module")
def members(tiny_splits: Splits) -> list[Member]:
    return [trained_member(tiny_splits, seed, rate) for seed, rate in ((1, 3e-3), (2, 1e-3))]


def sweep_parent(tracker: Tracker) -> SweepRecord:
    with tracker.run("exports", "sweep", tags={TagKey.ROLE: Role.SWEEP}) as parent:
        pass
    return SweepRecord("exports", "exports", parent.run_id, "optuna", {}, {}, {})


def tiny_card(member: Member, splits: Splits) -> ModelCard:
    """A card with every section the template reads (export fills test and formats)."""
    return ModelCard(
        title=f"tiny {member.label}",
        source={"label": member.label, "run_id": member.run_id, "experiment": "exports"},
        config=member.config.flat(),
        param_count=int(member.model.count_params()),
        data={"dataset": splits.dataset, "digest": splits.digest, "source": splits.source},
        training={
            "mode": "one epoch",
            "images": len(splits.train),
            "epochs": 1,
            "seed": 1,
            "wall_seconds": 1.0,
        },
        test={},
        baseline=None,
        confirmation=None,
        formats=[],
        tolerance=PROBABILITY_TOLERANCE,
        versions={},
        reproduce="(test)",
    )


def deliver_one(
    tracker: Tracker, sweep: SweepRecord, member: Member, splits: Splits, out: Path, **kw: Any
) -> ExportResult:
    from tunelab.training.factory import serving_model

    out.mkdir(parents=True)  # as export() makes it
    tags = {TagKey.ROLE: Role.EXPORT}
    with tracker.run("exports", "export", tags=tags, parent_run_id=sweep.parent_run_id) as run:
        return deliver(
            tracker,
            run,
            serving_model(member.model, member.config),
            splits,
            out=out,
            card=tiny_card(member, splits),
            label=member.label,
            parent_run_id=sweep.parent_run_id,
            tested=member.run_id,
            model_name="tiny",
            alias="champion",
            register=True,
            report=kw.pop("report", lambda _: None),
            **kw,
        )


@pytest.mark.slow
@pytest.mark.parametrize("broken", ["disagrees", "writer_fails"])
def test_a_failing_format_fails_the_export_in_one_line_and_registers_nothing(
    broken: str,
    members: list[Member],
    tiny_splits: Splits,
    tracking_uri: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_load, real_write = formats.load_predictor, formats.write_format

    def noisy_load(name: str, path: Path) -> Any:
        predict = real_load(name, path)
        if name != "onnx":
            return predict
        return lambda x: predict(x) + np.float32(10 * PROBABILITY_TOLERANCE)

    def failing_write(model: Any, name: str, folder: Path) -> Path:
        if name == "onnx":
            raise RuntimeError("converter crashed\nwith a second line nobody should see")
        return real_write(model, name, folder)

    if broken == "disagrees":
        monkeypatch.setattr(formats, "load_predictor", noisy_load)
    else:
        monkeypatch.setattr(formats, "write_format", failing_write)
    tracker = Tracker(tracking_uri)
    sweep = sweep_parent(tracker)
    out = tmp_path / "bundle"
    with pytest.raises(ExportError) as raised:
        deliver_one(tracker, sweep, members[0], tiny_splits, out, formats=("keras", "onnx"))
    message = str(raised.value)
    assert "\n" not in message
    assert "onnx" in message and "keras" not in message and "nothing was registered" in message
    assert not tracker.client.search_registered_models()
    parent = tracker.client.get_run(sweep.parent_run_id)
    assert TagKey.EXPORT_RUN_ID not in parent.data.tags
    [export] = tracker.search("exports", Query.of(role=Role.EXPORT))
    assert export.info.status == "FAILED"
    assert "onnx" in export.data.tags[TagKey.FAILURE_REASON]
    card = (out / "card.md").read_text()
    assert "onnx" in card and (out / "model.keras").exists()
    if broken == "writer_fails":
        assert "converter crashed" in card and "second line" not in card


@pytest.mark.slow
def test_an_ensemble_is_one_model_passing_parity_in_every_format_compared_with_the_single(
    members: list[Member], tiny_splits: Splits, tracking_uri: str, tmp_path: Path
) -> None:
    tracker = Tracker(tracking_uri)
    sweep = sweep_parent(tracker)
    lines: list[str] = []
    single = deliver_one(
        tracker, sweep, members[0], tiny_splits, tmp_path / "single", formats=("keras",)
    )
    result = export_ensemble(
        tracker,
        sweep,
        members,
        tiny_splits,
        out=tmp_path / "ensemble",
        formats=FORMATS,
        single=single,
        model_name="tiny",
        report=lines.append,
    )
    model = result.model
    assert len(model.inputs) == 1 and len(model.outputs) == 1
    assert tuple(model.outputs[0].shape) == (None, 10)
    assert [c.name for c in result.checks] == list(FORMATS)
    for check in result.checks:
        assert check.ok, check
        assert check.max_probability_difference <= PROBABILITY_TOLERANCE
    # the ensemble is the members' averaged softmax
    images = tiny_splits.test.x[:64].astype(np.float32)
    from tunelab.training.factory import serving_model

    averaged = np.mean(
        [serving_model(m.model, m.config).predict(images, verbose=0) for m in members], axis=0
    )
    np.testing.assert_allclose(model.predict(images, verbose=0), averaged, atol=1e-5)
    assert np.allclose(ensemble_model(members).predict(images, verbose=0), averaged, atol=1e-5)
    # paired with the single champion on the same test images
    versus = result.versus_single
    assert versus is not None and versus.run_id == single.run_id
    only_ensemble = int(
        np.sum(
            (result.test.predictions == tiny_splits.test.y)
            & (single.test.predictions != tiny_splits.test.y)
        )
    )
    assert (versus.only_model, versus.only_other) == (
        only_ensemble,
        int(
            np.sum(
                (result.test.predictions != tiny_splits.test.y)
                & (single.test.predictions == tiny_splits.test.y)
            )
        ),
    )
    assert 0 < versus.p_value <= 1
    run = tracker.client.get_run(result.run_id)
    assert run.data.metrics[MetricName.TEST_ACCURACY] == pytest.approx(result.test.accuracy)
    assert run.data.tags[TagKey.ENSEMBLE_MEMBERS] == ",".join(m.run_id for m in members)
    assert result.version == "2" and result.previous_version == "1"  # the alias moved to it
    parent = tracker.client.get_run(sweep.parent_run_id)
    assert parent.data.tags[TagKey.EXPORT_RUN_ID] == result.run_id
    assert parent.data.metrics[MetricName.TEST_EVALUATIONS] == 2  # single, ensemble: once each
    assert not any("warning" in line for line in lines)  # the ensemble is not a second config


def test_testing_a_second_configuration_of_a_sweep_is_counted_and_warned_about(
    tracking_uri: str,
) -> None:
    tracker = Tracker(tracking_uri)
    sweep = sweep_parent(tracker)
    said: list[str] = []
    count_test_evaluation(tracker, sweep.parent_run_id, "a" * 32, said.append)
    count_test_evaluation(tracker, sweep.parent_run_id, "a" * 32, said.append)  # same config
    assert said == []
    count_test_evaluation(tracker, sweep.parent_run_id, "b" * 32, said.append)
    assert len(said) == 1 and "2 configurations" in said[0] and "3 evaluations" in said[0]
    parent = tracker.client.get_run(sweep.parent_run_id)
    assert parent.data.metrics[MetricName.TEST_EVALUATIONS] == 3


def test_a_checkpoint_that_does_not_read_back_whole_is_skipped_for_the_one_before(
    members: list[Member], tracking_uri: str, tmp_path: Path
) -> None:
    tracker = Tracker(tracking_uri)
    with tracker.run("checkpoints", "training", tags={TagKey.ROLE: Role.TRIAL}) as run:
        writer = CheckpointWriter(tracker, run.run_id)
        writer.save(members[0].model, 3, {"val_accuracy": [0.1, 0.2, 0.3]}, 12.5)
        (whole_zip,) = tracker.list_artifacts(run.run_id, Artifact.CHECKPOINT_DIR)
        local = tracker.download_artifact(run.run_id, whole_zip, tmp_path / "dl")
        assert local is not None
        data = local.read_bytes()
        # a killed writer's newer zips: cut short, and one without its state file
        (tmp_path / "cut").mkdir()
        cut = tmp_path / "cut" / "step_00005.zip"
        cut.write_bytes(data[: len(data) // 2])
        (tmp_path / "nostate").mkdir()
        nostate = tmp_path / "nostate" / "step_00004.zip"
        with zipfile.ZipFile(local) as source, zipfile.ZipFile(nostate, "w") as target:
            target.writestr("model.weights.h5", source.read("model.weights.h5"))
        for bad in (cut, nostate):
            tracker.client.log_artifact(run.run_id, str(bad), Artifact.CHECKPOINT_DIR)
        checkpoint = load_checkpoint(tracker, run.run_id, tmp_path / "unpacked")
        assert checkpoint is not None
        assert (checkpoint.step, checkpoint.seconds) == (3, 12.5)
        assert checkpoint.history == {"val_accuracy": [0.1, 0.2, 0.3]}
        from tunelab.training.factory import build_model

        restored = build_model(members[0].config, steps_per_epoch=10)
        with warnings.catch_warnings():  # nothing skipped, nothing for the user to wonder about
            warnings.simplefilter("error")
            checkpoint.restore(restored)  # the weights and the optimizer state, into a new build
        for mine, theirs in zip(
            restored.get_weights(), members[0].model.get_weights(), strict=True
        ):
            np.testing.assert_array_equal(mine, theirs)
        assert int(restored.optimizer.iterations) == int(members[0].model.optimizer.iterations)

"""Export of a tiny champion: every format loads back and agrees, the registry alias moves."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from conftest import RecordedSweep
from tunelab.define.data import Splits
from tunelab.delivery.export import CHAMPION_ALIAS, export_model, resolve_source
from tunelab.delivery.formats import FORMATS, PROBABILITY_TOLERANCE, load_predictor, parse_formats
from tunelab.record.names import PARENT_RUN_TAG, MetricName, Role, TagKey
from tunelab.record.recorded import RunNotFound
from tunelab.record.store import Tracker

LOAD_WITHOUT_TUNELAB = """
import sys
import keras
import numpy as np
model = keras.saving.load_model(sys.argv[1])
print(model.predict(np.zeros((2, 28, 28, 1), "float32"), verbose=0).shape[1])
print(any(name.startswith("tunelab") for name in sys.modules))
"""


@pytest.mark.slow
def test_export_writes_every_format_that_reproduces_the_keras_model_and_registers_it(
    recorded_sweep: RecordedSweep, tiny_splits: Splits, tmp_path: Path
) -> None:
    tracker = Tracker(recorded_sweep.tracking_uri)
    source, sweep = resolve_source(tracker, "recorded")
    assert sweep is not None and source.run_id in {
        sweep.tags.get(TagKey.CHAMPION_RUN_ID),
        recorded_sweep.best_run_id,
    }
    # trained with tunelab's own loss and schedule classes, which the export must not carry
    training = source.config.training.model_copy(
        update={"label_smoothing": 0.1, "lr_schedule": "cosine"}
    )
    source = replace(source, config=source.config.model_copy(update={"training": training}))
    first = export_model(
        tracker, source, tiny_splits, out=tmp_path / "refit", formats=FORMATS, model_name="tiny"
    )
    assert [c.name for c in first.checks] == list(FORMATS)
    for check in first.checks:
        assert check.ok and check.max_probability_difference <= PROBABILITY_TOLERANCE
        assert check.accuracy == pytest.approx(first.test.accuracy, abs=1 / 1000)
        assert check.path.exists()
    # the files stand on their own: load one back and predict real test images
    predict = load_predictor("onnx", tmp_path / "refit" / "model.onnx")
    classes = predict(tiny_splits.test.x[:200].astype(np.float32)).argmax(axis=1)
    assert np.mean(classes == tiny_splits.test.y[:200]) > 0.5
    # and the .keras file loads in a Python that never imports tunelab (no training state)
    fresh = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_TUNELAB, str(tmp_path / "refit" / "model.keras")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert fresh.returncode == 0 and fresh.stdout.split() == ["10", "False"], fresh.stderr[-2000:]
    card = json.loads((tmp_path / "refit" / "card.json").read_text())
    assert card["training"]["images"] == 3000  # refit on train + validation
    assert card["test"]["ci95_low"] < card["test"]["accuracy"] < card["test"]["ci95_high"]
    assert card["baseline"]["run_id"] == recorded_sweep.baseline_run_id
    assert 0 < card["baseline"]["p_value"] <= 1
    assert card["data"]["digest"] == tiny_splits.digest
    assert "tunelab export" in card["reproduce"]
    assert "## Formats" in (tmp_path / "refit" / "card.md").read_text()
    for picture in ("confusion_matrix.png", "misclassified.png"):
        assert (tmp_path / "refit" / picture).stat().st_size > 1000
    run = tracker.client.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[TagKey.ROLE] == Role.EXPORT
    assert run.data.tags[PARENT_RUN_TAG] == recorded_sweep.parent_run_id
    assert run.data.metrics[MetricName.TEST_ACCURACY] == pytest.approx(first.test.accuracy)
    assert MetricName.MCNEMAR_P_VALUE in run.data.metrics
    bundle = {a.path for a in tracker.client.list_artifacts(first.run_id, "bundle")}
    assert "bundle/card.md" in bundle and "bundle/model.onnx" in bundle
    assert str(tracker.client.get_model_version_by_alias("tiny", CHAMPION_ALIAS).version) == "1"

    # a second export (the trial's own weights this time) takes the alias over
    second = export_model(
        tracker,
        source,
        tiny_splits,
        out=tmp_path / "own",
        formats=("keras",),
        refit=False,
        model_name="tiny",
    )
    assert (second.version, second.previous_version) == ("2", "1")
    assert str(tracker.client.get_model_version_by_alias("tiny", CHAMPION_ALIAS).version) == "2"
    assert json.loads((tmp_path / "own" / "card.json").read_text())["training"]["images"] == 2500


@pytest.mark.slow
def test_registered_champion_loads_through_mlflow_and_predicts(
    recorded_sweep: RecordedSweep, tiny_splits: Splits, tmp_path: Path
) -> None:
    import mlflow.pyfunc

    tracker = Tracker(recorded_sweep.tracking_uri)
    source, _ = resolve_source(tracker, recorded_sweep.best_run_id)
    export_model(
        tracker, source, tiny_splits, out=tmp_path / "b", formats=("keras",), model_name="served"
    )
    mlflow.set_tracking_uri(recorded_sweep.tracking_uri)
    try:
        model = mlflow.pyfunc.load_model(f"models:/served@{CHAMPION_ALIAS}")
        output = np.asarray(model.predict(tiny_splits.test.x[:50].astype(np.float32)))
    finally:
        mlflow.set_tracking_uri("")
    assert output.shape == (50, 10)
    assert np.mean(output.argmax(axis=1) == tiny_splits.test.y[:50]) > 0.5


def test_missing_run_experiment_or_format_is_refused_in_one_line(
    recorded_sweep: RecordedSweep,
) -> None:
    tracker = Tracker(recorded_sweep.tracking_uri)
    with pytest.raises(RunNotFound, match=r"run .0{32}. not found"):
        resolve_source(tracker, "0" * 32)
    with pytest.raises(RunNotFound, match="experiment 'absent' not found"):
        resolve_source(tracker, "absent")
    with pytest.raises(ValueError, match=r"unknown format.*pmml: choose from keras"):
        parse_formats("keras,pmml")
    assert parse_formats("onnx, keras,onnx") == ("onnx", "keras")

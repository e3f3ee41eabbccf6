"""The registered champion serves with `mlflow models serve` and answers with the right classes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest import RecordedSweep, free_port, wait_until_serving
from tunelab.define.data import Splits
from tunelab.delivery.export import CHAMPION_ALIAS, export_model, resolve_source
from tunelab.record.store import Tracker


@pytest.mark.slow
def test_registered_champion_serves_and_answers_with_the_right_classes(
    recorded_sweep: RecordedSweep, tiny_splits: Splits, tmp_path: Path
) -> None:
    tracker = Tracker(recorded_sweep.tracking_uri)
    source, _ = resolve_source(tracker, recorded_sweep.best_run_id)
    exported = export_model(
        tracker, source, tiny_splits, out=tmp_path / "b", formats=("keras",), model_name="serve"
    )
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "serve",
            "-m",
            f"models:/serve@{CHAMPION_ALIAS}",
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env={
            **os.environ,
            "MLFLOW_TRACKING_URI": recorded_sweep.tracking_uri,
            # the server starts `uvicorn` by name: the environment's scripts must be on PATH
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        wait_until_serving(f"http://127.0.0.1:{port}/ping", server)
        images = tiny_splits.test.x[:64].astype(np.float32)  # raw 0..255 pixels
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": images.tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    probabilities = np.asarray(answer["predictions"], dtype=np.float32)
    assert probabilities.shape == (64, 10)
    served = probabilities.argmax(axis=1)
    local = exported.test.predictions[:64]
    assert (served == local).all()  # exactly the classes the exported model predicts here
    assert np.mean(served == tiny_splits.test.y[:64]) > 0.5

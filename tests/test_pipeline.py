"""`tunelab run`: search, confirmation and final model under one budget; resumable anywhere."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import fork_server
import optuna
import pytest

from tunelab.define.data import Splits
from tunelab.define.experiment import load_experiment
from tunelab.pipeline import PipelineResult, run_pipeline
from tunelab.record.names import Artifact, MetricName, Role, TagKey, TrialState
from tunelab.record.query import Query
from tunelab.record.recorded import load_recorded_run
from tunelab.record.store import Tracker

SPACE = """
parameters:
  learning_rate: {type: categorical, values: [0.004, 0.002, 0.001]}
fixed: {optimizer: adam, filters: 8, dense_units: 16, epochs: 2, batch_size: 128,
        lr_schedule: cosine, warmup_epochs: 0.5}
"""
EXPERIMENT = """
name: onego
search_space: space.yaml
engine: {name: optuna, sampler: grid, pruner: none}
budget: {trials: 3}
precision: PRECISION
seed: 1
pipeline:
  budget: 20m
  shares: {search: 0.4, confirmation: 0.3, final: 0.3}
  confirm_top: 2
  confirm_seeds: 1
  ensemble: 3
  formats: [keras, onnx]
"""
RUNNER = """
import sys
from pathlib import Path
from tunelab.define.data import load_npz_splits
from tunelab.define.experiment import load_experiment
from tunelab.pipeline import run_pipeline
import time
from tunelab.training.callbacks import StepClock
begin = StepClock.on_epoch_begin
def slow_begin(self, epoch, logs=None):  # a pause (no CPU) between epochs, after a checkpoint:
    time.sleep(1.5)                      # room for the test to see it and kill this process
    begin(self, epoch, logs)
StepClock.on_epoch_begin = slow_begin
splits = load_npz_splits(Path(sys.argv[2]), validation_size=500)
run_pipeline(load_experiment(sys.argv[1]), tracking_uri=sys.argv[3], storage_url=sys.argv[4],
             baseline=False, splits=splits, full_splits=splits, show_progress=False,
             out=Path("exports"))
"""


def write(folder: Path, precision: str = "float32") -> Path:
    """The experiment in float32 (bfloat16 is emulated, 6.5x slower, on machines without it);
    the end-to-end test trains in mixed_bfloat16, so one pipeline exports a bfloat16 model."""
    (folder / "space.yaml").write_text(textwrap.dedent(SPACE))
    (folder / "onego.yaml").write_text(textwrap.dedent(EXPERIMENT).replace("PRECISION", precision))
    return folder / "onego.yaml"


def stores(folder: Path) -> tuple[str, str]:
    return f"sqlite:///{folder / 'mlflow.db'}", f"sqlite:///{folder / 'optuna.db'}"


def go(folder: Path, splits: Splits, name: str = "onego", **kwargs: Any) -> PipelineResult:
    uri, storage = stores(folder)
    return run_pipeline(
        load_experiment(folder / f"{name}.yaml"),
        tracking_uri=uri,
        storage_url=storage,
        splits=splits,
        full_splits=splits,
        show_progress=False,
        out=folder / "exports",
        **kwargs,
    )


def check_record(folder: Path) -> None:
    """Every trial recorded once, nothing lost, nothing left RUNNING, one export of each kind."""
    uri, storage = stores(folder)
    tracker = Tracker(uri)
    runs = tracker.search("onego", Query())
    assert all(r.info.status != "RUNNING" for r in runs)
    study = optuna.load_study(study_name="onego", storage=storage)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(t.params["learning_rate"] for t in done) == [0.001, 0.002, 0.004]  # the grid
    trials = [r for r in runs if r.data.tags.get(TagKey.ROLE) == Role.TRIAL]
    finished = Counter(
        r.data.tags[TagKey.TRIAL_NUMBER]
        for r in trials
        if r.data.tags.get(TagKey.TRIAL_STATE) == TrialState.COMPLETE
    )
    assert sorted(finished.values()) == [1, 1, 1]  # none duplicated, none lost
    confirmations = [
        r
        for r in runs
        if r.data.tags.get(TagKey.ROLE) == Role.CONFIRMATION and r.info.status == "FINISHED"
    ]
    keys = Counter(
        (r.data.tags[TagKey.RETRAINS_RUN_ID], r.data.tags[TagKey.SEED]) for r in confirmations
    )
    assert len(keys) == 2 and set(keys.values()) == {1}
    exports = [
        r
        for r in runs
        if r.data.tags.get(TagKey.ROLE) == Role.EXPORT and r.info.status == "FINISHED"
    ]
    assert sorted(TagKey.ENSEMBLE_MEMBERS in r.data.tags for r in exports) == [False, True]


@pytest.mark.slow
def test_run_searches_confirms_and_delivers_then_trains_nothing_the_second_time(
    tmp_path: Path, tiny_splits: Splits, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tunelab.training.baseline import baseline_config, run_baseline

    write(tmp_path, precision="mixed_bfloat16")
    uri, _ = stores(tmp_path)
    tracker = Tracker(uri)
    baseline = run_baseline(
        tiny_splits, tracker, cfg=baseline_config(tiny_splits, 1), log_model=False
    )
    tracker.client.set_tag(baseline.run_id, TagKey.REFERENCE, "true")
    result = go(tmp_path, tiny_splits)
    assert result.champion and result.confirmed_mean is not None
    assert result.single is not None and result.ensemble is not None
    for item in (result.single, result.ensemble):
        assert item.ci95_low <= item.test_accuracy <= item.ci95_high
        assert item.p_vs_baseline is not None  # McNemar on the same test images
        assert Path(item.bundle, "card.md").is_file() and Path(item.bundle, "model.onnx").is_file()
    assert result.ensemble.p_vs_single is not None
    # trained in mixed_bfloat16 as the experiment says; exported, and checked, in float32
    assert load_recorded_run(tracker, result.single.run_id).config.training.precision == (
        "mixed_bfloat16"
    )
    assert result.ensemble.registered and result.ensemble.registered == "tunelab-mnist v1"
    assert set(result.stage_seconds) == {"search", "confirmation", "final"}
    assert sum(result.stage_seconds.values()) == pytest.approx(result.spent_seconds, rel=0.1)
    assert result.spent_seconds < result.budget_seconds
    lines = "\n".join(result.lines())
    assert "McNemar p" in lines and "wall time:" in lines and "ensemble of 3" in lines
    check_record(tmp_path)
    parent = tracker.client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags[TagKey.PIPELINE_STAGE] == "done"
    assert parent.data.metrics[MetricName.TEST_EVALUATIONS] == 2  # single and ensemble, once each
    assert parent.data.metrics[MetricName.TEST_ACCURACY] == result.ensemble.test_accuracy
    summary = json.loads(
        Path(
            tracker.client.download_artifacts(result.parent_run_id, Artifact.SUMMARY, str(tmp_path))
        ).read_text()
    )
    assert summary["ensemble"]["test_accuracy"] == result.ensemble.test_accuracy

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished pipeline must train nothing")

    from tunelab.training import train

    # every training of every stage builds its model here first (train_and_validate)
    monkeypatch.setattr(train, "build_model", no_training)
    again = go(tmp_path, tiny_splits)
    assert again.ensemble == result.ensemble and "nothing was trained" in "\n".join(again.lines())


def wait_until(condition: Any, process: subprocess.Popen[bytes], limit: float = 180) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        assert process.poll() is None, "the pipeline ended before it could be killed"
        try:
            if condition():
                return
        except Exception:
            pass  # the store is being created
        time.sleep(0.3)
    raise AssertionError("the stage to kill never started")


def training_run_of(uri: str, role: str) -> bool:
    """A RUNNING run of `role` that has stored the checkpoint of an epoch."""
    tracker = Tracker(uri)
    for run in tracker.search("onego", Query.of(role=role, status="RUNNING")):
        if tracker.list_artifacts(run.info.run_id, "checkpoint"):
            return True
    return False


@pytest.mark.slow
def test_run_killed_in_every_stage_resumes_each_time_and_completes(
    tmp_path: Path, tiny_npz: Path, tiny_splits: Splits
) -> None:
    """SIGKILL in the search, then in the confirmation of the relaunch, then in the final refit of
    the next: each launch continues where the last one died, and the record ends whole."""
    experiment = write(tmp_path)
    uri, storage = stores(tmp_path)
    for role in (Role.TRIAL, Role.CONFIRMATION, Role.EXPORT):
        process = fork_server.popen(
            [sys.executable, "-c", RUNNER, str(experiment), str(tiny_npz), uri, storage],
            cwd=tmp_path,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until(lambda stage=role: training_run_of(uri, stage), process)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
    result = go(tmp_path, tiny_splits, baseline=False)
    assert result.single is not None and result.ensemble is not None
    check_record(tmp_path)
    refits = [
        r
        for r in Tracker(uri).search("onego", Query.of(role=Role.EXPORT))
        if TagKey.ENSEMBLE_MEMBERS not in r.data.tags
    ]
    assert len(refits) == 1  # the killed refit was continued in its own run, not begun again
    steps = {step for step, _ in Tracker(uri).metric_steps(refits[0].info.run_id, "loss")}
    assert steps == {1, 2, 3, 4}  # the killed launch's epochs and the rest, in one record


@pytest.mark.slow
def test_a_refit_that_runs_late_delivers_the_kept_models_instead_of_nothing(
    tmp_path: Path, tiny_splits: Splits, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tunelab.pipeline

    write(tmp_path)
    # a plan far too long for the final share (as when the machine slows down mid-refit)
    monkeypatch.setattr(tunelab.pipeline.plan, "final_epochs", lambda *args: 1000)
    result = go(tmp_path, tiny_splits, baseline=False, budget=60.0)
    assert result.single is None and result.ensemble is not None
    assert result.ensemble.label.startswith("ensemble of") and result.ensemble.registered
    assert 0.0 < result.ensemble.test_accuracy <= 1.0
    assert any("kept model" in note and "refit epochs" in note for note in result.notes)
    assert result.spent_seconds < result.budget_seconds + 10.0  # the deadline held
    uri, _ = stores(tmp_path)
    tracker = Tracker(uri)
    [refit] = [
        r
        for r in tracker.search("onego", Query.of(role=Role.EXPORT))
        if TagKey.ENSEMBLE_MEMBERS not in r.data.tags
    ]
    assert refit.info.status == "KILLED"  # paused with its checkpoint, not delivered half-decayed
    [parent] = tracker.search("onego", Query.of(role=Role.SWEEP))
    assert parent.data.tags[TagKey.EXPORT_RUN_ID] != refit.info.run_id
    assert parent.data.metrics[MetricName.TEST_ACCURACY] == result.ensemble.test_accuracy


OPEN_ENDED = """
name: shares
search_space: space.yaml
engine: {name: optuna, sampler: random, pruner: none}
budget: {trials: 200}
precision: float32
seed: 4
pipeline:
  shares: {search: 0.4, confirmation: 0.2, final: 0.4}
  confirm_top: 3
  confirm_seeds: 3
  formats: [keras]
"""
STEP_SECONDS = 6.0  # the most a deadline may be overrun: one training step and its record


@pytest.mark.slow
def test_every_stage_ends_within_its_share_of_the_budget(
    tmp_path: Path, tiny_splits: Splits
) -> None:
    """Stages that would each take longer than the whole budget (200 trials; 9 retrainings; a
    refit planned from the time left) end by their cumulative share, read from the runs' own
    start and end times, and the search filled most of its share before handing on."""
    (tmp_path / "space.yaml").write_text(
        textwrap.dedent(SPACE).replace(
            "{type: categorical, values: [0.004, 0.002, 0.001]}",
            "{type: float, low: 0.0005, high: 0.005, log: true}",
        )
    )
    (tmp_path / "shares.yaml").write_text(textwrap.dedent(OPEN_ENDED))
    uri, _ = stores(tmp_path)
    budget = 50.0
    started = time.time()
    result = go(tmp_path, tiny_splits, "shares", budget=budget, baseline=False)
    ended = time.time()
    assert result.single is not None
    tracker = Tracker(uri)

    def last_end(role: str) -> float:
        runs = tracker.search("shares", Query.of(role=role))
        assert runs, f"no {role} run"
        assert all(r.info.end_time for r in runs), f"a {role} run was left open"
        return float(max(r.info.end_time for r in runs)) / 1000 - started

    trials = tracker.search("shares", Query.of(role=Role.TRIAL))
    assert len(trials) < 200  # the search was stopped by its share, not by its trial budget
    searched = last_end(Role.TRIAL)
    assert 0.5 * 0.4 * budget < searched <= 0.4 * budget + STEP_SECONDS
    assert last_end(Role.CONFIRMATION) <= 0.6 * budget + STEP_SECONDS
    assert last_end(Role.EXPORT) <= budget + STEP_SECONDS
    assert ended - started <= budget + STEP_SECONDS

"""A budget buys a result on any machine: precision by measurement, schedules that fit, never
nothing delivered, too-small budgets refused up front."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from rich.console import Console

import tunelab.training.precision as precision
from conftest import flat_config
from tunelab.define.data import Splits
from tunelab.define.experiment import load_experiment
from tunelab.engines.launch import run_sweep
from tunelab.errors import UserError
from tunelab.pipeline import final, plan, run_pipeline
from tunelab.record.names import Artifact, MetricName, Role, TagKey, TrialState
from tunelab.record.query import Query
from tunelab.record.recorded import RecordedRun, load_recorded_run
from tunelab.record.store import Tracker

MEASURE = precision.images_per_second  # the real measurement (conftest fixes speeds otherwise)

SPACE = """
parameters:
  learning_rate: {type: categorical, values: [0.004, 0.002, 0.001]}
fixed: {optimizer: adam, filters: 8, dense_units: 16, epochs: 4, batch_size: 128,
        lr_schedule: cosine, warmup_epochs: 0.5}
"""
EXPERIMENT = """
name: anywhere
search_space: space.yaml
engine: {name: optuna, sampler: grid, pruner: none}
budget: {trials: 3}
seed: 2
pipeline:
  shares: {search: 0.5, confirmation: 0.2, final: 0.3}
  confirm_top: 1
  formats: [keras]
"""


def experiment(folder: Path, extra: str = "") -> Path:
    (folder / "space.yaml").write_text(textwrap.dedent(SPACE))
    (folder / "anywhere.yaml").write_text(textwrap.dedent(EXPERIMENT) + extra)
    return folder / "anywhere.yaml"


def speeds(monkeypatch: pytest.MonkeyPatch, float32: float, bfloat16: float) -> None:
    measured = {precision.FLOAT32: float32, precision.BFLOAT16: bfloat16}
    monkeypatch.setattr(precision, "images_per_second", lambda _b, p, *_a: measured[p])


def stores(folder: Path) -> tuple[str, str]:
    return f"sqlite:///{folder / 'mlflow.db'}", f"sqlite:///{folder / 'optuna.db'}"


def sweep(folder: Path, splits: Splits, trials: int, lines: io.StringIO) -> Any:
    uri, storage = stores(folder)
    return run_sweep(
        load_experiment(folder / "anywhere.yaml"),
        trials=trials,
        splits=splits,
        tracking_uri=uri,
        storage_url=storage,
        show_progress=False,
        console=Console(file=lines, width=400),
    )


def delivered(
    path: Path,
    splits: Splits,
    budget: float,
    *,
    baseline: bool = False,
    console: Console | None = None,
) -> Any:
    """`tunelab run` of the experiment at `path` on `splits`, quiet, its stores and exports
    beside the experiment file."""
    uri, storage = stores(path.parent)
    return run_pipeline(
        load_experiment(path),
        budget=budget,
        tracking_uri=uri,
        storage_url=storage,
        baseline=baseline,
        splits=splits,
        full_splits=splits,
        show_progress=False,
        console=console or Console(quiet=True),
        out=path.parent / "exports",
    )


@pytest.mark.slow
@pytest.mark.parametrize("faster", [precision.FLOAT32, precision.BFLOAT16])
def test_auto_precision_trains_in_what_this_machine_measures_faster_and_workers_follow_it(
    faster: str, tmp_path: Path, tiny_splits: Splits, monkeypatch: pytest.MonkeyPatch
) -> None:
    experiment(tmp_path)
    slower = precision.BFLOAT16 if faster == precision.FLOAT32 else precision.FLOAT32
    measured = {faster: 3000.0, slower: 1000.0}
    speeds(monkeypatch, measured[precision.FLOAT32], measured[precision.BFLOAT16])
    lines = io.StringIO()
    first = sweep(tmp_path, tiny_splits, 1, lines)
    tracker = Tracker(stores(tmp_path)[0])
    parent = tracker.get_run(first.parent_run_id).data
    assert parent.params["precision"] == faster
    assert parent.params["precision_requested"] == "auto"
    assert parent.metrics["images_per_second_float32"] == measured[precision.FLOAT32]
    assert parent.metrics["images_per_second_bfloat16"] == measured[precision.BFLOAT16]
    assert f"precision auto: {faster}" in lines.getvalue()
    # a worker on a machine that measures the other way says so and follows the record
    speeds(monkeypatch, measured[precision.BFLOAT16], measured[precision.FLOAT32])
    monkeypatch.setattr(precision, "machine_key", lambda: "another host")
    lines = io.StringIO()
    second = sweep(tmp_path, tiny_splits, 2, lines)
    assert f"following the sweep's recorded precision {faster}" in lines.getvalue()
    trained = [
        load_recorded_run(tracker, r.run_id).config.training.precision for r in second.records
    ]
    assert trained == [faster, faster]


@pytest.mark.slow
def test_explicit_bfloat16_on_a_machine_where_it_is_slower_runs_and_says_how_much_slower(
    tmp_path: Path, tiny_splits: Splits, monkeypatch: pytest.MonkeyPatch
) -> None:
    experiment(tmp_path, "precision: mixed_bfloat16\n")
    speeds(monkeypatch, 408.0, 63.0)
    lines = io.StringIO()
    result = sweep(tmp_path, tiny_splits, 1, lines)
    [said] = [line for line in lines.getvalue().splitlines() if "slower" in line]
    assert "mixed_bfloat16" in said and "6.5x slower than float32" in said
    tracker = Tracker(stores(tmp_path)[0])
    config = load_recorded_run(tracker, result.best.run_id).config
    assert config.training.precision == "mixed_bfloat16"


def test_a_speed_cached_while_the_machine_was_busy_is_measured_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Measured under load, bfloat16 was barely faster and float32 won; on the quiet machine the
    re-measured float32 is 1.8x its cached figure, so the cached bfloat16 is stale too: both are
    measured again and bfloat16 wins. With the cache in step, the slower one is not re-timed."""
    now = {precision.FLOAT32: 693.0, precision.BFLOAT16: 727.0}  # both halved by another job
    timed: list[str] = []

    def measure(_build: Any, chosen: str, *_args: Any) -> float:
        timed.append(chosen)
        return now[chosen]

    monkeypatch.setattr(precision, "images_per_second", measure)
    probe = precision.SpeedProbe(lambda p: None, "m", (28, 28, 1), 10, 128, tmp_path)
    assert probe.choose(precision.AUTO).precision == precision.FLOAT32  # 727 / 693 < MARGIN
    now.update({precision.FLOAT32: 1256.0, precision.BFLOAT16: 1447.0})  # the machine is quiet
    timed.clear()
    choice = probe.choose(precision.AUTO)
    assert choice.precision == precision.BFLOAT16 and choice.speeds.bfloat16 == 1447.0
    assert timed == [precision.FLOAT32, precision.BFLOAT16]
    timed.clear()
    assert probe.choose(precision.AUTO).precision == precision.BFLOAT16
    assert timed == [precision.BFLOAT16]  # in step with the cache: the slower one is kept


@pytest.mark.slow
def test_a_measurement_times_real_steps_once_per_machine_model_and_precision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tunelab.define.run_config import RunConfig
    from tunelab.engines.numerics import speed_probe

    monkeypatch.setattr(precision, "images_per_second", MEASURE)
    built: list[str] = []
    cfg = RunConfig.from_flat_cnn({"filters": 4, "dense_units": 8, "batch_size": 32})
    probe = speed_probe(cfg)
    counting = precision.SpeedProbe(
        lambda p: built.append(p) or probe.build(p),
        probe.model_key,
        probe.input_shape,
        probe.num_classes,
        probe.batch_size,
        tmp_path,
    )
    first = counting.speed(precision.FLOAT32)
    again = counting.speed(precision.FLOAT32)
    assert first > 0 and again == first and built == [precision.FLOAT32]
    assert precision.SpeedCache(tmp_path).path.is_file()
    fresh = counting.speed(precision.FLOAT32, fresh=True)  # measured again when asked to
    assert fresh > 0 and built == [precision.FLOAT32, precision.FLOAT32]


@pytest.mark.slow
def test_a_budget_shorter_than_one_full_schedule_delivers_a_shortened_complete_schedule(
    tmp_path: Path, tiny_splits: Splits, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tunelab.pipeline.plan

    experiment(tmp_path)
    # about 35 s an epoch as estimated: the 4-epoch schedule (140 s) does not fit the search's
    # 0.85 x 120 s, two epochs do
    speeds(monkeypatch, 88.0, 40.0)
    monkeypatch.setattr(tunelab.pipeline.plan, "MAX_FINAL_EPOCHS", 2)
    path = tmp_path / "anywhere.yaml"
    path.write_text(path.read_text().replace("  confirm_top: 1", "  confirm_top: 1\n  ensemble: 2"))
    uri, _ = stores(tmp_path)
    result = delivered(path, tiny_splits, 240)
    tracker = Tracker(uri)
    parent = tracker.get_run(result.parent_run_id).data
    assert parent.params["schedule_epochs"] == "2"
    trials = tracker.search("anywhere", Query.of(role=Role.TRIAL))
    complete = [r for r in trials if r.data.tags[TagKey.TRIAL_STATE] == TrialState.COMPLETE]
    assert complete, "the search completed trials"
    for run in complete:
        config = load_recorded_run(tracker, run.info.run_id).config
        assert run.data.params["schedule_epochs"] == "2"
        assert config.training.epochs == 2
        assert config.training.warmup_epochs == pytest.approx(0.25)
    assert result.single is not None
    assert Path(result.single.bundle, "model.keras").is_file()
    exported = load_recorded_run(tracker, result.single.run_id).config
    assert exported.training.epochs == 2 and exported.training.lr_schedule == "cosine"
    # the shortened trials are screening models: not averaged with the refit
    assert result.ensemble is None
    assert any(note.startswith("ensemble: not built") for note in result.notes)


def test_a_budget_shorter_than_one_epoch_is_refused_before_anything_is_recorded(
    tmp_path: Path, tiny_splits: Splits, monkeypatch: pytest.MonkeyPatch
) -> None:
    experiment(tmp_path)
    speeds(monkeypatch, 5.0, 2.0)  # an epoch of 3,000 images: about 11 minutes
    uri, _ = stores(tmp_path)
    with pytest.raises(UserError) as refused:
        delivered(tmp_path / "anywhere.yaml", tiny_splits, 300, baseline=True)
    message = str(refused.value)
    assert "\n" not in message and "needs at least" in message and "5 training images/s" in message
    assert Tracker(uri).search_all(Query()) == []  # no baseline, no sweep, nothing


@pytest.mark.slow
def test_a_paused_search_trial_is_never_the_reason_nothing_is_delivered(
    tmp_path: Path, tiny_splits: Splits, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tunelab.engines.runner as optuna_engine
    import tunelab.pipeline.plan
    from tunelab.training.deadline import Deadline

    class AfterOneStep(Deadline):
        """Room for the trial's first step, then none: the search's trial is paused."""

        def __init__(self) -> None:
            super().__init__(0.0)
            self.asked = 0

        def remaining(self) -> float:
            self.asked += 1
            return 1e6 if self.asked == 1 else 0.0

    train = optuna_engine.train_and_validate

    def paused_training(*args: Any, **kwargs: Any) -> Any:
        return train(*args, **{**kwargs, "deadline": AfterOneStep()})

    monkeypatch.setattr(optuna_engine, "train_and_validate", paused_training)
    monkeypatch.setattr(tunelab.pipeline.plan, "MAX_FINAL_EPOCHS", 1)
    experiment(tmp_path)
    uri, _ = stores(tmp_path)
    result = delivered(tmp_path / "anywhere.yaml", tiny_splits, 1200)
    tracker = Tracker(uri)
    trials = tracker.search("anywhere", Query.of(role=Role.TRIAL))
    assert [r.data.tags[TagKey.TRIAL_STATE] for r in trials] == [TrialState.PAUSED]
    assert result.single is not None and Path(result.single.bundle, "model.keras").is_file()
    assert any("paused" in note for note in result.notes)
    exported = tracker.get_run(result.single.run_id).data.tags
    assert exported[TagKey.EXPORTED_FROM_RUN_ID] == trials[0].info.run_id
    assert tracker.has_artifact(result.single.run_id, Artifact.BUNDLE_DIR)


class _Announced(Exception):
    """Raised where the baseline would start training: what was said before is the test."""


def announced(folder: Path, splits: Splits, monkeypatch: pytest.MonkeyPatch) -> str:
    """What `tunelab run` says before anything trains, at the speeds `speeds` set."""
    import tunelab.training.baseline

    def no_training(*_args: Any, **_kwargs: Any) -> None:
        raise _Announced

    monkeypatch.setattr(tunelab.training.baseline, "run_baseline", no_training)
    folder.mkdir()
    monkeypatch.setenv("TUNELAB_DATA_DIR", str(folder / "cache"))  # nothing measured before
    experiment(folder)
    lines = io.StringIO()
    with pytest.raises(_Announced):
        path = folder / "anywhere.yaml"
        delivered(path, splits, 48 * 3600, baseline=True, console=Console(file=lines, width=400))
    return lines.getvalue()


@pytest.mark.slow
def test_the_announced_durations_come_from_the_speed_measured_here(
    tmp_path: Path, tiny_splits: Splits, monkeypatch: pytest.MonkeyPatch
) -> None:
    import re

    said = {}
    for float32 in (4.0, 8.0):  # the machine measured twice as fast: every estimate halves
        speeds(monkeypatch, float32, 1.0)
        said[float32] = announced(tmp_path / f"at-{float32:.0f}", tiny_splits, monkeypatch)

    def figures(text: str) -> tuple[float, float]:
        epoch = re.search(r"epochs of about (\d+) s each on this machine", text)
        baseline = re.search(r"about (\d+) minutes here at the measured (\d+) images/s", text)
        assert epoch and baseline, text
        assert baseline.group(2) in ("4", "8")
        return float(epoch.group(1)), float(baseline.group(1))

    slow, fast = figures(said[4.0]), figures(said[8.0])
    assert slow[0] / fast[0] == pytest.approx(2.0, rel=0.02)
    assert slow[1] / fast[1] == pytest.approx(2.0, rel=0.02)


@pytest.mark.slow
@pytest.mark.parametrize("ensemble", [2, 0], ids=["models kept", "none kept"])
def test_a_final_share_too_short_for_the_champions_schedule_delivers_the_kept_models(
    ensemble: int, tmp_path: Path, tiny_splits: Splits, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refit shorter than the schedule the champion trained ends its decay early and tests
    far below the models already trained: those are delivered and no refit is trained; only
    where the experiment kept none is the shorter refit trained."""
    import tunelab.pipeline.plan

    monkeypatch.setattr(tunelab.pipeline.plan, "MAX_FINAL_EPOCHS", 1)  # the share holds 1 of 4
    experiment(tmp_path)
    path = tmp_path / "anywhere.yaml"
    path.write_text(
        path.read_text().replace("  confirm_top: 1", f"  confirm_top: 1\n  ensemble: {ensemble}")
    )
    uri, _ = stores(tmp_path)
    result = delivered(path, tiny_splits, 1200)
    refits = [
        r
        for r in Tracker(uri).search("anywhere", Query.of(role=Role.EXPORT))
        if "refit" in r.info.run_name
    ]
    shorter = any("fewer than the 4 the champion trained" in note for note in result.notes)
    if ensemble:
        assert not refits and shorter
        assert result.single is None and result.ensemble is not None
        assert Path(result.ensemble.bundle, "model.keras").is_file()
    else:
        assert len(refits) == 1 and not shorter and result.single is not None
        assert load_recorded_run(Tracker(uri), refits[0].info.run_id).config.training.epochs == 1


@pytest.mark.parametrize("epoch_seconds", [40.0, 49.0, 75.0])
def test_the_refit_planned_from_a_measured_throughput_fills_its_share_and_ends_inside_it(
    epoch_seconds: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hour's final share (about 30 minutes) planned from the champion's measured training
    throughput (the recipe's epoch on AVX-512 in bfloat16, in float32, and slower): the refit
    ends inside the share at that throughput with its per-epoch checkpoint, and leaves less than
    five minutes of it unused (the issue's bound for the hour)."""
    monkeypatch.setattr(plan, "MAX_FINAL_EPOCHS", 60)  # the product's cap, not the suite's
    images, share = 60_000, 1_800.0
    champion = cast(
        RecordedRun,
        SimpleNamespace(metrics={MetricName.IMAGES_PER_SECOND: images / epoch_seconds}),
    )
    per_image = final.refit_seconds_per_image(champion, estimate=1.0)
    epochs = plan.final_epochs(share, images, per_image, 15)
    training = epochs * (epoch_seconds + plan.REFIT_EPOCH_SECONDS)
    assert training <= share
    assert share - training < 300, f"{epochs} epochs of {epoch_seconds} s leave {share - training}"


def test_models_of_a_search_shortened_a_little_join_the_ensemble_and_screening_models_do_not() -> (
    None
):
    """The hour's search shortened to fit its share (13 of 15 epochs) keeps models of the
    refit's class, worth averaging; screens and two-epoch schedules keep screening models."""
    assert plan.kept_models_join_the_ensemble(None, 15)
    assert plan.kept_models_join_the_ensemble(13, 15)
    assert not plan.kept_models_join_the_ensemble(4, 15)  # the cold start's longest screen
    assert not plan.kept_models_join_the_ensemble(2, 4)


@pytest.mark.parametrize("cycles", [1, 2, 3])
def test_after_a_screened_search_the_refit_fills_the_whole_schedule_and_averages_its_own_cycles(
    cycles: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Screens train 1- and 4-epoch schedules of a 15-epoch space. Their models stay out of the
    ensemble, but the refit's own cycle ends (`snapshot_cycles`) are averaged, and the refit
    may run up to ten times the whole schedule, not ten times the screen the champion won."""
    from dataclasses import replace

    spec = load_experiment(Path(__file__).resolve().parents[1] / "experiments" / "mnist_cold.yaml")
    assert spec.engine.screens == [1, 4]
    pipeline = spec.pipeline.model_copy(update={"ensemble": 3, "snapshot_cycles": cycles})
    state = cast(
        Any,
        SimpleNamespace(
            spec=replace(spec, pipeline=pipeline),
            splits=SimpleNamespace(input_shape=(28, 28, 1), num_classes=10),
        ),
    )
    assert not final.kept_models_join(state)
    assert final.ensemble_size(state) == {1: 0, 2: 2, 3: 3}[cycles]
    assert final.full_schedule_epochs(state) == 15
    # the champion won a 4-epoch screen; an hour's final share at the recipe's speed (1,600
    # images/s) holds more than ten of those, and the refit is planned that long
    monkeypatch.setattr(plan, "MAX_FINAL_EPOCHS", 60)  # the product's cap, not the suite's
    state.full_splits = SimpleNamespace(train=range(50_000), val=range(10_000))
    state.numerics = SimpleNamespace(seconds_per_image=lambda config: 1 / 1_600)
    champion = cast(
        RecordedRun,
        SimpleNamespace(
            config=flat_config(epochs=4), metrics={MetricName.IMAGES_PER_SECOND: 1_600.0}
        ),
    )
    epochs, _ = final.refit_epochs(state, champion, 1_800.0)
    assert epochs > 10 * 4


def test_the_time_kept_for_the_export_covers_every_shifted_view_of_the_test_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With test-time shifts the delivered models look at each test image 1 + 4 times, in the
    test and in every format's check: the final stage keeps that much more time after the refit
    (the refit is planned shorter), or the export would run past the deadline."""
    from tunelab.delivery.tta import SHIFTS

    monkeypatch.setattr(final, "ensemble_size", lambda state: 3)
    champion = cast(RecordedRun, SimpleNamespace(config=flat_config(epochs=15)))

    def reserve(shifts: int, champion: RecordedRun = champion) -> float:
        state = SimpleNamespace(
            spec=SimpleNamespace(pipeline=SimpleNamespace(test_time_shifts=shifts)),
            numerics=SimpleNamespace(flop_rate=1e9),
            full_splits=SimpleNamespace(test=range(10_000)),
        )
        return final._reserve(cast(Any, state), champion, formats=4)

    passes = plan.export_seconds(champion.config, 4, 3, 1e9, 10_000) - plan.export_seconds(
        champion.config, 4, 3, 1e9, 0
    )
    assert passes > 0
    assert reserve(1) - reserve(0) == pytest.approx(len(SHIFTS) * passes)
    # a champion trained on mirrored images is also shown the mirrored image and its shifts
    mirrored = cast(RecordedRun, SimpleNamespace(config=flat_config(epochs=15, augment_flip=True)))
    assert reserve(1, mirrored) - reserve(0, mirrored) == pytest.approx(
        (2 * (1 + len(SHIFTS)) - 1) * passes
    )

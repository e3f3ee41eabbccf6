"""Whatever a user types is refused in one line: exit code 2, no traceback, nothing written.

Files (experiments, search spaces, data), flags, run ids, storage and tracking URLs, through
the real entry point (`tunelab.cli.main`), in a fresh folder that must stay empty: no study, no
run, no store is created for input that is refused before work starts.
"""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest

from tunelab.cli import main

SPACE = """
parameters:
  learning_rate: {type: float, low: 0.001, high: 0.01, log: true}
fixed: {optimizer: adam, epochs: 1}
"""
GOOD = """
name: hostile
search_space: space.yaml
budget: {trials: 1}
"""
EXPERIMENTS = {
    "engine_list": "engine: []",
    "objectives_empty": "objectives: []",
    "objective_metric_list": "objectives: [{metric: [val_accuracy]}]",
    "negative_seed": "seed: -1",
    "negative_split_seed": "split_seed: -4",
    "storage_postgres_dialect": "storage: postgres://u:secret@h/db",
    "storage_mysql": "storage: mysql://u:secret@h/db",
    "storage_relative_sqlite": "storage: sqlite:/x.db",
    "storage_bad_port": "storage: postgresql://u:secret@h:notaport/db",
    "storage_no_scheme": "storage: tracking/optuna.db",
    "storage_proxy_without_port": "storage: grpc://optuna-proxy",
    "kerastuner_with_sampler": "engine: {name: kerastuner, sampler: tpe}",
    "unknown_engine": "engine: {name: ray}",
    "enqueue_outside": "enqueue: [{learning_rate: 5.0}]",
    "enqueue_unknown_name": "enqueue: [{lr: 0.002}]",
    "shares_not_one": "pipeline: {shares: {search: 0.5, confirmation: 0.5, final: 0.5}}",
    "ensemble_of_one": "pipeline: {ensemble: 1}",
    "timeout_words": "budget: {trials: 1, timeout: soon}",
    "validation_zero": "validation_size: 0",
    "name_a_number": "name: 12",
    "precision_unknown": "precision: float16",
    "min_images_for_kerastuner": "engine: {name: kerastuner, min_images: 500}",
}


def run(arguments: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as ended:
        main(arguments)
    code = ended.value.code
    return int(code) if isinstance(code, int) else 1, capsys.readouterr().err.strip()


def assert_refused(code: int, error: str, folder: Path, *, exist: set[str]) -> None:
    assert code == 2, error
    assert len(error.splitlines()) == 1, error
    assert error.startswith("error: ") and "Traceback" not in error
    assert "secret" not in error  # passwords never reach a message
    written = {p.name for p in folder.iterdir()} - exist
    assert written == set(), f"refused input left {written}"


def write_experiment(folder: Path, extra: str) -> Path:
    (folder / "space.yaml").write_text(textwrap.dedent(SPACE))
    lines = [line for line in textwrap.dedent(GOOD).splitlines() if line]
    key = extra.split(":")[0]
    lines = [line for line in lines if not line.startswith(f"{key}:")]
    (folder / "bad.yaml").write_text("\n".join([*lines, extra]) + "\n")
    return folder / "bad.yaml"


@pytest.mark.parametrize("case", sorted(EXPERIMENTS))
def test_a_hostile_experiment_file_is_one_line_before_anything_runs(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_experiment(tmp_path, EXPERIMENTS[case])
    for command in (["validate", str(path)], ["tune", str(path)], ["run", str(path)]):
        code, error = run(command, capsys)
        assert_refused(code, error, tmp_path, exist={"space.yaml", "bad.yaml"})
        assert "bad.yaml" in error


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("latin1.yaml", "name: caf\xe9\n".encode("latin-1")),
        ("empty.yaml", b""),
        ("list.yaml", b"- a\n- b\n"),
        ("binary.yaml", bytes(range(256))),
        ("tabs.yaml", b"budget:\n\ttrials: 3\n"),
    ],
)
def test_unreadable_files_are_one_line(
    name: str, content: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / name).write_bytes(content)
    code, error = run(["validate", str(tmp_path / name)], capsys)
    assert_refused(code, error, tmp_path, exist={name})
    code, error = run(["validate", str(tmp_path)], capsys)  # a folder, not a file
    assert_refused(code, error, tmp_path, exist={name})


def good_experiment(folder: Path) -> Path:
    (folder / "space.yaml").write_text(textwrap.dedent(SPACE))
    (folder / "good.yaml").write_text(textwrap.dedent(GOOD))
    return folder / "good.yaml"


FLAG_CASES = {
    "trials_zero": ["tune", "EXP", "--trials", "0"],
    "trials_negative": ["tune", "EXP", "--trials", "-3"],
    "trials_words": ["tune", "EXP", "--trials", "many"],
    "timeout_zero": ["tune", "EXP", "--timeout", "0"],
    "timeout_words": ["tune", "EXP", "--timeout", "a while"],
    "workers_zero": ["tune", "EXP", "--workers", "0"],
    "missing_experiment": ["tune", "FOLDER/nope.yaml"],
    "storage_garbage": ["tune", "EXP", "--storage", "not a url"],
    "storage_missing_driver": ["tune", "EXP", "--storage", "postgresql+psycopg2://u:secret@h/d"],
    "storage_proxy_with_a_path": ["tune", "EXP", "--storage", "grpc://h:13000/optuna"],
    "proxy_of_a_proxy": ["storage-proxy", "--storage", "grpc://h:13000"],
    "proxy_of_garbage": ["storage-proxy", "--storage", "not a url"],
    "tracking_unknown_scheme": ["tune", "EXP", "--tracking-uri", "ftp://u:secret@h/x"],
    "data_file_missing": ["tune", "EXP", "--data-file", "FOLDER/none.npz"],
    "budget_zero": ["run", "EXP", "--budget", "0"],
    "budget_words": ["run", "EXP", "--budget", "soon"],
    "compare_no_store": ["compare", "EXP"],
    "compare_format": ["compare", "EXP", "--format", "pdf"],
    "compare_top_zero": ["compare", "EXP", "--top", "0"],
    "compare_out_under_a_file": ["compare", "EXP", "--out", "FOLDER/good.yaml/t.csv"],
    "compare_quote_in_study": ["compare", "--study", "o'brien\"x"],
    "report_out_folder": ["report", "EXP", "--out", "FOLDER"],
    "export_unknown_run": ["export", "0123456789abcdef0123456789abcdef"],
    "export_format": ["export", "EXP", "--formats", "png"],
    "export_ensemble_one": ["export", "EXP", "--ensemble", "1"],
    "export_epochs_zero": ["export", "EXP", "--epochs", "0"],
    "reproduce_not_an_id": ["reproduce", "not-a-run"],
    "confirm_top_zero": ["confirm", "EXP", "--top", "0"],
    "baseline_epochs_zero": ["baseline", "--epochs", "0"],
    "baseline_negative_seed": ["baseline", "--seed", "-1"],
    "data_unknown_dataset": ["data", "--dataset", "cifar"],
    "unknown_option": ["tune", "EXP", "--trails", "3"],
    "unknown_command": ["tunes", "EXP"],
}


@pytest.mark.parametrize("case", sorted(FLAG_CASES))
def test_a_hostile_flag_or_argument_is_one_line_before_anything_runs(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    experiment = good_experiment(tmp_path)
    arguments = [
        a.replace("EXP", str(experiment)).replace("FOLDER", str(tmp_path)) for a in FLAG_CASES[case]
    ]
    if "--tracking-uri" not in arguments and arguments[0] != "storage-proxy":
        arguments += ["--tracking-uri", f"sqlite:///{tmp_path / 'store' / 'm.db'}"]
    if arguments[0] == "data" or arguments[0] == "baseline":
        arguments = [a for a in arguments if "store" not in a and a != "--tracking-uri"]
    code, error = run(arguments, capsys)
    assert_refused(code, error, tmp_path, exist={"space.yaml", "good.yaml"})


@pytest.mark.parametrize(
    ("uri", "said"),
    [
        ("http://u:secret@127.0.0.1:9/", "the MLflow tracking server http://u:***@127.0.0.1:9/"),
        # MLflow itself retries a database for about two minutes
        ("postgresql://u:secret@127.0.0.1:9/m", "the tracking database postgresql://u:***@"),
    ],
)
def test_an_unreachable_tracking_server_is_refused_within_seconds(
    uri: str, said: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    code, error = run(["compare", "x", "--tracking-uri", uri], capsys)
    assert time.monotonic() - started < 10
    assert_refused(code, error, tmp_path, exist=set())
    assert f"cannot reach {said}" in error and "secret" not in error


def test_names_with_quotes_are_searched_exactly(tmp_path: Path) -> None:
    """A study or experiment named with ' or " cannot break or widen an MLflow search."""
    from tunelab.record.names import Role, TagKey
    from tunelab.record.query import Query
    from tunelab.record.store import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path / 'm.db'}")
    for study in ("o'brien", 'say "hi"', "back\\slash", "plain"):
        tracker.create_run("it's", study, tags={TagKey.ROLE: Role.SWEEP, TagKey.STUDY: study})
    for study in ("o'brien", 'say "hi"', "back\\slash", "plain"):
        [found] = tracker.search("it's", Query.of(role=Role.SWEEP, study=study))
        assert found.data.tags[TagKey.STUDY] == study
    assert tracker.search("it's", Query.of(study="o'")) == []

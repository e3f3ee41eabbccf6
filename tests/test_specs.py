"""Search spaces and experiments: every shipped file loads; every broken one fails in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunelab.define.experiment import load_experiment
from tunelab.define.files import ConfigError, parse_duration
from tunelab.define.space import load_search_space

ROOT = Path(__file__).resolve().parent.parent
INVALID = Path(__file__).parent / "invalid_specs"
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.yaml"))
SPACES = sorted((ROOT / "search_spaces").glob("*.yaml"))
BROKEN = sorted(INVALID.glob("*.yaml"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_every_experiment_file_validates(path: Path) -> None:
    spec = load_experiment(path)
    assert spec.search_space.parameters
    assert spec.budget.trials or spec.budget.timeout_seconds


def test_make_tunes_experiment_is_given_no_recipe_and_trains_only_complete_schedules() -> None:
    """benchmarks/peers.py compares this sweep with the tutorials: it must find its model itself."""
    spec = load_experiment(ROOT / "experiments" / "mnist_quick.yaml")
    assert spec.enqueue == ()
    assert spec.engine.pruner in (None, "none")
    assert spec.search_space.fixed["epochs"] == 1
    assert spec.train_size is None  # every training image


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_every_search_space_file_validates(path: Path) -> None:
    space = load_search_space(path)
    assert len(space.names()) == len(set(space.names()))


def expected_message(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} must start with '# expect: ...'"
    return first.removeprefix("# expect: ")


@pytest.mark.parametrize("path", BROKEN, ids=lambda p: p.name)
def test_each_broken_file_fails_with_its_one_line_message(path: Path) -> None:
    load = load_experiment if path.name.startswith("experiment_") else load_search_space
    with pytest.raises(ConfigError) as caught:
        load(path)
    message = str(caught.value)
    assert "\n" not in message
    assert expected_message(path) in message, message
    assert message.split(": ")[0].endswith(".yaml")  # names the file first


def test_the_corpus_covers_both_kinds() -> None:
    kinds = {p.name.split("_")[0] for p in BROKEN}
    assert kinds == {"space", "experiment"} and len(BROKEN) >= 20


def test_conditional_parameters_and_shared_fields(tmp_path: Path) -> None:
    space = load_search_space(ROOT / "search_spaces" / "mnist_small.yaml")
    by_name = {p.name: p for p in space.parameters}
    assert by_name["lr_adam"].field == "learning_rate"
    assert by_name["lr_adam"].condition is not None
    assert by_name["lr_adam"].condition.values == ("adam",)
    assert by_name["lr_adam"].low == pytest.approx(1e-4)  # 1e-4 read as a number
    chosen = {"optimizer": "adam", "lr_adam": 0.001, "filters": 32}
    assert space.to_config_values(chosen)["learning_rate"] == 0.001
    assert not by_name["momentum"].is_active(chosen)
    assert by_name["momentum"].is_active({"optimizer": "sgd"})


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("30m", 1800), ("1h", 3600), ("1h30m", 5400), (45, 45)]
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text, Path("x.yaml"), "budget.timeout") == seconds

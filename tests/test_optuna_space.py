"""The Optuna translator asks for exactly the declared names, bounds and conditions.

No training: ask/tell and FixedTrial only.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from tunelab.define.space import SearchSpace, load_search_space
from tunelab.engines.optuna.space import distribution, suggest

ROOT = Path(__file__).resolve().parent.parent
SPACES = sorted((ROOT / "search_spaces").glob("*.yaml"))


def active_names(space: SearchSpace, params: dict[str, object]) -> set[str]:
    chosen: dict[str, object] = {}
    for parameter in space.parameters:
        if parameter.is_active(chosen):  # type: ignore[arg-type]
            chosen[parameter.name] = params[parameter.name]
    return set(chosen)


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_suggestions_match_the_declared_space(path: Path) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_search_space(path)
    declared = {p.name: p for p in space.parameters}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_names: set[str] = set()
    for _ in range(80):
        trial = study.ask()
        chosen = suggest(space, trial)
        assert chosen == trial.params
        assert set(chosen) == active_names(space, chosen)  # conditions decide who is asked
        for name, dist in trial.distributions.items():
            assert dist == distribution(declared[name]), name
            assert dist._contains(dist.to_internal_repr(chosen[name]))
        seen_names |= set(chosen)
        study.tell(trial, 0.5)
    assert seen_names == set(declared)  # every parameter is reachable


def test_conditional_learning_rates_follow_the_optimizer() -> None:
    space = load_search_space(ROOT / "search_spaces" / "mnist_small.yaml")
    for optimizer, expected in (
        ("adam", "lr_adam"),
        ("sgd", "lr_sgd"),
        ("adadelta", "lr_adadelta"),
    ):
        trial = optuna.trial.FixedTrial(
            {
                "filters": 32,
                "dense_units": 128,
                "conv_dropout": 0.25,
                "dense_dropout": 0.5,
                "optimizer": optimizer,
                expected: 0.001 if optimizer != "adadelta" else 1.0,
                "momentum": 0.9,
                "batch_size": 128,
            }
        )
        chosen = suggest(space, trial)
        lrs = {name for name in chosen if name.startswith("lr_")}
        assert lrs == {expected}
        assert ("momentum" in chosen) == (optimizer == "sgd")

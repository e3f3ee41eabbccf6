"""Short final refits in the suite and in the processes it starts.

`tunelab run` plans its final refit from the time the final share leaves. With the suite's fixed
speeds and tiny data every share fits the most the plan allows (ten times the trial's schedule:
20 epochs for most pipelines here), 10-20 s of CPU per pipeline that shows nothing four epochs
would not. The suite caps the refit at `EPOCHS`; the tests of the plan itself set their own cap.
"""

from __future__ import annotations

from types import ModuleType

from on_import import patch_on_import

VARIABLE = "TUNELAB_TEST_SHORT_REFITS"  # set: the processes the suite starts refit briefly
MODULE = "tunelab.pipeline.plan"
EPOCHS = 4


def _patch(plan: ModuleType) -> None:
    plan.MAX_FINAL_EPOCHS = EPOCHS


def install() -> None:
    """The cap in this process (now, or once tunelab's plan module loads)."""
    patch_on_import(MODULE, _patch)

"""The model card of an export bundle: `card.json` for machines, `card.md` for people.

It says what the model is (config, parameter count, where it came from; for an ensemble, every
member), what data it saw (the dataset digest, training and test sizes), how good it is with
honest uncertainty (test accuracy with a 95 % Wilson interval, the paired McNemar test against
the baseline on the same test images, and for an ensemble against the single champion, the
confirmation over fresh seeds when there was one), that every exported format reproduces it
(accuracy and largest probability difference per format), the package versions, and the command
that reproduces it. The Markdown is rendered from `templates/card.md.j2`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined


@dataclass
class ModelCard:
    """Everything a card shows; `as_json` is the machine-readable form."""

    title: str
    source: dict[str, Any]
    config: dict[str, Any]
    param_count: int
    data: dict[str, Any]
    training: dict[str, Any]
    test: dict[str, Any]
    baseline: dict[str, Any] | None
    confirmation: dict[str, Any] | None
    formats: list[dict[str, Any]]
    tolerance: float
    versions: dict[str, str]
    reproduce: str
    registry: dict[str, Any] = field(default_factory=dict)
    members: list[dict[str, Any]] = field(default_factory=list)
    versus_single: dict[str, Any] | None = None

    def as_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False, default=str)

    def as_markdown(self) -> str:
        return str(_templates().get_template("card.md.j2").render(card=self))


def _templates() -> Environment:
    return Environment(
        loader=PackageLoader("tunelab.delivery", "templates"),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # Markdown, not HTML
    )

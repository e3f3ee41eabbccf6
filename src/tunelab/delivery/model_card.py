"""The model card of an export bundle: `card.json` for machines, `card.md` for people.

It says what the model is (config, parameter count, where it came from), what data it saw (the
dataset digest, training and test sizes), how good it is with honest uncertainty (test accuracy
with a 95 % Wilson interval, the paired McNemar test against the baseline on the same test
images, the confirmation over fresh seeds when there was one), that every exported format
reproduces it (accuracy and largest probability difference per format), the package versions,
and the command that reproduces it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


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

    def as_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, sort_keys=False, default=str)

    def as_markdown(self) -> str:
        test = self.test
        lines = [
            f"# {self.title}",
            "",
            f"Source: {self.source.get('label')} (run `{self.source.get('run_id')}`, experiment "
            f"`{self.source.get('experiment')}`), {self.param_count:,} parameters.",
            "",
            "## Test set (evaluated once)",
            "",
            f"- accuracy **{test['accuracy']:.4f}** ({test['errors']} errors of "
            f"{test['images']:,}), 95 % Wilson interval [{test['ci95_low']:.4f}, "
            f"{test['ci95_high']:.4f}]",
        ]
        if self.baseline:
            b = self.baseline
            lines += [
                f"- baseline (run `{b['run_id']}`): {b['accuracy']:.4f}; difference "
                f"{b['difference'] * 100:+.2f} points",
                f"- McNemar's exact test on the same images: {b['only_model']} images only this "
                f"model gets right, {b['only_baseline']} only the baseline; p = "
                f"{b['p_value']:.3g}",
            ]
        else:
            lines.append("- no baseline with test predictions in this store: no paired test")
        if self.confirmation:
            c = self.confirmation
            lines += [
                "",
                "## Confirmation (validation, fresh seeds)",
                "",
                f"- mean val_accuracy {c['mean']:.4f} over {c['seeds']} seeds, std "
                f"{c['std']:.4f}, 95 % t-interval [{c['ci95_low']:.4f}, {c['ci95_high']:.4f}]",
            ]
        lines += [
            "",
            "## Training",
            "",
            f"- {self.training['mode']}: {self.training['images']:,} images, "
            f"{self.training['epochs']} epochs, seed {self.training['seed']}, "
            f"{self.training['wall_seconds']:.0f} s",
            f"- data: {self.data['dataset']} digest `{self.data['digest']}` from "
            f"{self.data['source']}",
            "- input: raw pixels 0..255, float32, shape (N, 28, 28, 1); output: class "
            "probabilities (N, 10). Augmentation layers are dropped from the exported model "
            "(they are identities at inference).",
            "",
            "## Formats (each loaded back and run on the test set)",
            "",
            "| format | file | accuracy | max prob. difference | flipped | size |",
            "|---|---|---|---|---|---|",
        ]
        for f in self.formats:
            lines.append(
                f"| {f['name']} | `{f['file']}` | {f['accuracy']:.4f} | "
                f"{f['max_probability_difference']:.2e} | {f['flipped_predictions']} | "
                f"{f['size_bytes'] / 1e6:.2f} MB |"
            )
        lines += [
            "",
            f"Tolerance: {self.tolerance:g} in probability (see `tunelab.delivery.formats`).",
            "",
            "## Configuration",
            "",
            "```json",
            json.dumps(self.config, indent=2),
            "```",
            "",
            "## Reproduce",
            "",
            "```bash",
            self.reproduce,
            "```",
            "",
            "## Versions",
            "",
            ", ".join(f"{k} {v}" for k, v in self.versions.items()),
        ]
        if self.registry:
            lines += [
                "",
                f"Registered as `{self.registry['name']}` version {self.registry['version']} "
                f"with alias `{self.registry['alias']}`.",
            ]
        return "\n".join(lines) + "\n"

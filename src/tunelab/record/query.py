"""Which runs to find, written once: a `Query` becomes an MLflow filter string with quoted values.

MLflow's filter language quotes a string value in single or double quotes and has no escape for
a quote inside it. A `Query` quotes every value it can express and leaves the others (a study
named `o'brien`, say) to an exact comparison on the runs MLflow returns, so no name a user types
can break a search or match the wrong runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tunelab.record.names import PARENT_RUN_TAG, TagKey

_UNSAFE = ("'", '"', "\\", "\n", "\r")


def quote(value: str) -> str | None:
    """`value` as an MLflow filter string literal, or None if the language cannot express it."""
    if any(character in value for character in _UNSAFE):
        return None
    return f"'{value}'"


@dataclass(frozen=True)
class Query:
    """Runs whose tags equal the given values (and, optionally, with a given status)."""

    tags: Mapping[str, str] = field(default_factory=dict)
    status: str | None = None
    statuses: tuple[str, ...] = ()  # any of these (checked on the returned runs)

    @classmethod
    def of(
        cls,
        *,
        role: str | None = None,
        study: str | None = None,
        parent: str | None = None,
        status: str | None = None,
        **tags: str,
    ) -> Query:
        """The common case: role, study and parent run by name, other tags by TagKey value."""
        chosen: dict[str, str] = {}
        for key, value in ((TagKey.ROLE, role), (TagKey.STUDY, study), (PARENT_RUN_TAG, parent)):
            if value is not None:
                chosen[key] = value
        chosen.update(tags)
        return cls(chosen, status)

    def and_tags(self, **more: str) -> Query:
        return Query({**self.tags, **more}, self.status, self.statuses)

    def filter_string(self) -> str:
        """The conditions MLflow can evaluate itself, joined with `and`."""
        conditions = []
        for key, value in self.tags.items():
            quoted = quote(value)
            if quoted is not None:
                conditions.append(f"tags.`{key}` = {quoted}")
        if self.status is not None:
            conditions.append(f"attributes.status = '{self.status}'")
        return " and ".join(conditions)

    def matches(self, run: Any) -> bool:
        """Every condition, checked exactly on a run MLflow returned."""
        tags = run.data.tags
        if any(tags.get(key) != value for key, value in self.tags.items()):
            return False
        if self.status is not None and run.info.status != self.status:
            return False
        return not self.statuses or run.info.status in self.statuses

    def select(self, runs: Iterable[Any]) -> list[Any]:
        return [run for run in runs if self.matches(run)]

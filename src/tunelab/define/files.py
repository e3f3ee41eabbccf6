"""Reading the files a user writes (YAML), and turning every problem into one line.

Every refusal of a user's file reads `file: field: problem (got value)`: the file first, then the
dotted path of the offending key, what is wrong, and the value found. `ConfigError` carries the
parts; `from_validation_error` turns pydantic's first complaint about a model into one.

Validators in `tunelab.define` raise `ValueError("sub.field: problem (got value)")` when a rule
spans several keys; the converter appends `sub.field` to the location pydantic reports, so the
line still names the exact key to fix.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from tunelab.errors import UserError


class ConfigError(UserError):
    """A user's file or flag is wrong; one line: `file: field: problem (got value)`."""

    def __init__(self, source: str | Path, field: str, problem: str, value: object = None) -> None:
        self.source, self.field, self.problem, self.value = str(source), field, problem, value
        got = "" if value is None else f" (got {value!r})"
        where = f"{field}: " if field else ""
        super().__init__(f"{source}: {where}{problem}{got}")


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads 1e-4 as a float (YAML 1.1 wants 1.0e-4 and gives a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from a file, or a ConfigError naming the file (never a traceback)."""
    if not path.exists():
        raise ConfigError(path, "", "no such file")
    if not path.is_file():
        raise ConfigError(path, "", "is not a file (a directory?)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            path, "", f"is not UTF-8 text (byte {error.start}): save it as UTF-8 YAML"
        ) from None
    except OSError as error:
        raise ConfigError(path, "", f"cannot be read ({error.strerror or error})") from None
    try:
        loaded = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "yaml"
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(path, where, f"not valid YAML: {problem}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(path, "", "must be a YAML mapping of key: value", type(loaded).__name__)
    return loaded


DURATION = re.compile(
    r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s)?\s*"
)
DURATION_PATTERN = r"^\s*(\d+(\.\d+)?h)?\s*(\d+(\.\d+)?m)?\s*(\d+(\.\d+)?s)?\s*$"


Model = TypeVar("Model", bound=BaseModel)


def read_model(path: Path, model: type[Model], context: dict[str, Any] | None = None) -> Model:
    """Read a YAML file and validate it as `model`; every problem as one `ConfigError` line."""
    raw = read_yaml(path)
    try:
        return model.model_validate(raw, context=context)
    except ValidationError as error:
        raise from_validation_error(path, error) from None


def duration_seconds(text: object) -> float:
    """'90s', '30m', '1.5h', '1h30m' or a positive number of seconds -> seconds.

    Raises:
        ValueError: not a duration, or not positive.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text > 0:
            return float(text)
        raise ValueError(f"must be positive (got {text!r})")
    match = DURATION.fullmatch(str(text))
    if not match or not any(match.groups()):
        raise ValueError(f"must be a duration like 90s, 30m, 1h or 1h30m (got {text!r})")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise ValueError(f"must be positive (got {text!r})")
    return total


def parse_duration(text: object, source: str | Path, where: str) -> float:
    """`duration_seconds`, refusing with a ConfigError that names the source and key."""
    try:
        return duration_seconds(text)
    except ValueError as error:
        problem, _, _ = str(error).rpartition(" (got ")
        raise ConfigError(source, where, problem, text) from None


_FIELD_MESSAGE = re.compile(r"^([A-Za-z_][\w.\[\]]*): (.*?)(?: \(got (.*)\))?$", re.S)


def from_validation_error(source: str | Path, error: ValidationError) -> ConfigError:
    """The first problem pydantic found in a file's content, as one ConfigError line."""
    detail = error.errors()[0]
    field = _join_location(detail["loc"])
    kind = detail["type"]
    value: object = detail.get("input")
    if kind == "value_error":
        message = str(detail["msg"]).removeprefix("Value error, ")
        match = _FIELD_MESSAGE.match(message)
        if match:
            sub, problem, got = match.groups()
            field = f"{field}.{sub}" if field else sub
            return _error(source, field, problem, got)
        return ConfigError(source, field, message)
    if kind == "missing":
        return ConfigError(source, field, "is required")
    if kind == "extra_forbidden":
        return ConfigError(source, field, "unknown key")
    if kind == "literal_error":
        expected = detail.get("ctx", {}).get("expected", "")
        choices = [part.strip().strip("'") for part in re.split(r",| or ", str(expected))]
        return ConfigError(source, field, f"must be one of {[c for c in choices if c]}", value)
    return ConfigError(source, field, str(detail["msg"]), value)


def _join_location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _error(source: str | Path, field: str, problem: str, got: str | None) -> ConfigError:
    """A ConfigError whose value is already rendered text (from a validator's message)."""
    error = ConfigError(source, field, problem)
    if got is not None:
        error.value = got
        error.args = (f"{error.args[0]} (got {got})",)
    return error

"""How tunelab shows values and errors in one line (tables, run names, failure reasons)."""

from __future__ import annotations


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (empty when it has none)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else ""


def describe_exception(error: BaseException) -> str:
    """A failure reason: the exception's type and first line, kept short."""
    return f"{type(error).__name__}: {first_line(error)[:300]}".rstrip(": ")


def short_value(value: object) -> str:
    """A parameter value as run names and tables show it: floats to 3 significant digits.

    MLflow hands params back as strings; a string that is a number is shown like the number.
    """
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return value if number.is_integer() and "." not in value else f"{number:.3g}"
    return str(value)

"""Storage and tracking URLs a user types: refused in one line before anything connects.

tunelab keeps its promises about studies (an exact trial budget across workers, one parent run)
with a lock it knows how to take on two databases only: a PostgreSQL advisory lock (workers on
many machines) and a file lock beside a SQLite file (one machine). Any other Optuna storage is
refused here rather than run with a weaker lock. Messages never repeat a password.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from tunelab.redact import redact_url

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
STORAGE_EXAMPLES = "sqlite:///tracking/optuna.db or postgresql://user:password@host:5432/optuna"
TRACKING_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "file", "http", "https")


def _scheme(url: str) -> tuple[str, str] | None:
    """(dialect, driver) of `dialect+driver://...`, or None when there is no scheme."""
    match = _SCHEME.match(url)
    if not match:
        return None
    dialect, _, driver = match.group(1).lower().partition("+")
    return dialect, driver


def check_storage_url(url: str) -> str | None:
    """Why `url` cannot be an Optuna storage for tunelab, or None if it can."""
    shown = redact_url(url)
    scheme = _scheme(url)
    if scheme is None:
        return f"must be a database URL like {STORAGE_EXAMPLES} (got {shown!r})"
    dialect, _ = scheme
    if dialect == "postgres":
        return f"unknown dialect postgres: write postgresql:// (got {shown!r})"
    if dialect == "sqlite":
        if not url.startswith("sqlite:///") or len(url) <= len("sqlite:///"):
            return (
                "a SQLite URL is sqlite:///relative/path.db or sqlite:////abs/path.db "
                f"(got {shown!r})"
            )
        return None
    if dialect == "postgresql":
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018  (raises for a port that is not a number)
        except ValueError as error:
            return f"is not a valid URL ({error}) (got {shown!r})"
        if not parts.hostname or not parts.path.strip("/"):
            return (
                f"a PostgreSQL URL names a host and a database, like {STORAGE_EXAMPLES} "
                f"(got {shown!r})"
            )
        return None
    return (
        f"tunelab locks studies on PostgreSQL (many machines) or SQLite (one machine); "
        f"{dialect} is neither (got {shown!r})"
    )


def missing_driver(url: str) -> str | None:
    """Why the database driver of `url` cannot be loaded, or None (imports SQLAlchemy)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        dialect = make_url(url).get_dialect()
        dialect.import_dbapi()
    except (ArgumentError, NoSuchModuleError, ImportError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return f"its database driver cannot be loaded ({first}); install it or use another URL"
    return None


def check_tracking_uri(uri: str) -> str | None:
    """Why `uri` cannot be an MLflow tracking store, or None if it can."""
    shown = redact_url(uri)
    scheme = _scheme(uri)
    if scheme is None:
        if uri.startswith(("/", "./", "file:")) or "://" not in uri:
            return None  # a local folder: MLflow's file store
        return (
            f"must be a URL like sqlite:///tracking/mlflow.db or http://host:5000 (got {shown!r})"
        )
    dialect, _ = scheme
    if dialect not in TRACKING_SCHEMES:
        return f"unknown scheme {dialect}: use one of {list(TRACKING_SCHEMES)} (got {shown!r})"
    if dialect in ("http", "https"):
        try:
            parts = urlsplit(uri)
            parts.port  # noqa: B018  (raises for a port that is not a number)
        except ValueError as error:
            return f"is not a valid URL ({error}) (got {shown!r})"
        if not parts.hostname:
            return f"names no host (got {shown!r})"
    if dialect == "sqlite" and not uri.startswith("sqlite:///"):
        return f"a SQLite URL is sqlite:///relative/path.db (got {shown!r})"
    return None

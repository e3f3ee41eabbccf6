"""Storage and tracking URLs a user types: refused in one line before anything connects.

tunelab keeps its promises about studies (an exact trial budget across workers, one parent run)
with a lock it knows how to take on three storages only: a PostgreSQL advisory lock (workers on
many machines), a file lock beside a SQLite file (one machine), and a lock built on the storage's
own atomic operations through Optuna's gRPC storage proxy (`grpc://host:port`, many machines;
`tunelab.engines.optuna.proxy`). Any other Optuna storage is refused here rather than run with a
weaker lock. Messages never repeat a password.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from tunelab.redact import redact_url

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
POSTGRESQL_EXAMPLE = "postgresql://user:password@host:5432/optuna"
STORAGE_EXAMPLES = (
    f"sqlite:///tracking/optuna.db, {POSTGRESQL_EXAMPLE} or grpc://host:13000 "
    "(`tunelab storage-proxy`)"
)
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
                f"a PostgreSQL URL names a host and a database, like {POSTGRESQL_EXAMPLE} "
                f"(got {shown!r})"
            )
        return None
    if dialect == "grpc":
        return _check_proxy_url(url, shown)
    return (
        f"tunelab locks studies on PostgreSQL or Optuna's gRPC proxy (many machines) or SQLite "
        f"(one machine); {dialect} is none of them (got {shown!r})"
    )


def _check_proxy_url(url: str, shown: str) -> str | None:
    """Why `url` is not `grpc://host:port` (Optuna's gRPC storage proxy), or None."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        return f"is not a valid URL ({error}) (got {shown!r})"
    if not parts.hostname or port is None or parts.path.strip("/") or parts.query:
        return (
            f"a gRPC storage proxy URL is grpc://host:port, nothing after the port (got {shown!r})"
        )
    return None


def is_proxy_url(url: str) -> bool:
    """Whether `url` names Optuna's gRPC storage proxy (any case of the scheme, as checked)."""
    scheme = _scheme(url)
    return scheme is not None and scheme[0] == "grpc"


def proxy_address(url: str) -> tuple[str, int]:
    """(host, port) of a checked `grpc://host:port` URL."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def missing_driver(url: str) -> str | None:
    """Why the database driver of `url` cannot be loaded, or None (imports SQLAlchemy)."""
    if is_proxy_url(url):
        from importlib.util import find_spec

        if find_spec("grpc") is None:
            return "the gRPC client (grpcio) is not installed; install it or use another URL"
        return None
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

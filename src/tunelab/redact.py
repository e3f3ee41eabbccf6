"""Keep passwords out of logs, params, tags and artifacts.

Storage and tracking URLs may carry credentials (`postgresql://user:secret@host/db`). Anything
tunelab prints or records that could contain such a URL goes through `redact_url` or
`redact_text`, which replace the password with `***` and keep the rest readable.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
_URL_WITH_PASSWORD = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]+:)([^@\s/]+)(@)")


def redact_url(url: str) -> str:
    """The URL with its password (if any) replaced by ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}{port}"))


def redact_text(text: str) -> str:
    """Every `scheme://user:password@` in free text, with the password replaced by ***."""
    return _URL_WITH_PASSWORD.sub(lambda m: f"{m.group(1)}{MASK}{m.group(3)}", text)


def database_error_line(error: BaseException) -> str:
    """A database error's first line with passwords masked: the driver's own message where
    SQLAlchemy wraps it (`error.orig`), else the error's type name when it says nothing."""
    text = str(getattr(error, "orig", error)).strip()
    return redact_text(text.splitlines()[0] if text else type(error).__name__)

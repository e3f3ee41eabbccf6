"""Passwords in URLs are masked wherever tunelab prints or records them."""

from __future__ import annotations

from tunelab.redact import redact_text, redact_url


def test_redact_url_masks_only_the_password() -> None:
    url = "postgresql://tunelab:s3cr%40t@127.0.0.1:5433/optuna"
    assert redact_url(url) == "postgresql://tunelab:***@127.0.0.1:5433/optuna"
    assert redact_url("sqlite:///tracking/optuna.db") == "sqlite:///tracking/optuna.db"
    assert redact_url("http://127.0.0.1:5050") == "http://127.0.0.1:5050"


def test_redact_text_masks_every_url_in_free_text() -> None:
    text = "storage: postgresql://u:pw1@h/db\nother: mysql+pymysql://v:pw2@h:3306/x"
    masked = redact_text(text)
    assert "pw1" not in masked and "pw2" not in masked
    assert "postgresql://u:***@h/db" in masked and "mysql+pymysql://v:***@h:3306/x" in masked

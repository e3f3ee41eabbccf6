"""The command line: user errors are one line with exit code 2, nothing half-recorded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPORTS_TENSORFLOW = """
import sys
from tunelab.cli import main
try:
    main()
finally:
    print(f"tensorflow loaded: {'tensorflow' in sys.modules}", file=sys.stderr)
"""


def tunelab(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`tunelab *args` in `cwd`; its last line on stderr says whether it loaded TensorFlow."""
    return subprocess.run(
        [sys.executable, "-c", REPORTS_TENSORFLOW, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("data", "--dataset", "cifar"),
            "error: unknown dataset 'cifar'; choose one of mnist, fashion_mnist",
        ),
        (
            ("baseline", "--epochs", "0"),
            "error: --epochs: must be a positive integer (got 0)",
        ),
    ],
)
def test_user_errors_are_one_line(args: tuple[str, ...], message: str, tmp_path: Path) -> None:
    """Refused in one line, before any run starts and before TensorFlow loads (seconds)."""
    done = tunelab(*args, cwd=tmp_path)
    assert done.returncode == 2
    *said, loaded = done.stderr.strip().splitlines()
    assert said == [message]
    assert loaded == "tensorflow loaded: False"
    assert not (tmp_path / "tracking").exists()  # refused before any run started


def test_help_lists_the_commands(tmp_path: Path) -> None:
    done = tunelab("--help", cwd=tmp_path)
    assert done.returncode == 0
    for command in ("data", "baseline", "ui"):
        assert command in done.stdout

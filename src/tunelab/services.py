"""Starting MLflow's own servers without putting a password on their command line.

A process's argv is readable by every user of the machine (`ps`), so a store URL that carries a
password is handed to `mlflow ui` and `mlflow server` through the environment variable they read
(`MLFLOW_BACKEND_STORE_URI`), never as an argument.
"""

from __future__ import annotations

import os
import sys


def exec_mlflow_ui(tracking_uri: str, port: int) -> None:
    """Replace this process with `mlflow ui` on 127.0.0.1:`port` for `tracking_uri`."""
    environment = {**os.environ, "MLFLOW_BACKEND_STORE_URI": tracking_uri}
    command = [sys.executable, "-m", "mlflow", "ui", "--host", "127.0.0.1", "--port", str(port)]
    os.execve(sys.executable, command, environment)

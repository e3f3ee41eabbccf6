"""Starting MLflow's own servers without putting a password on their command line.

A process's argv is readable by every user of the machine (`ps`), so a store URL that carries a
password is handed to `mlflow ui` and `mlflow server` through the environment variable they read
(`MLFLOW_BACKEND_STORE_URI`), never as an argument.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def serve_dashboard(storage: Any, port: int) -> None:
    """optuna-dashboard on 127.0.0.1:`port` for a study storage, in this process.

    The server is given a storage object (`engines.optuna.study.connect_storage`), not the URL on
    a command line: the password stays in this process's memory. Blocks until Ctrl-C.
    """
    import optuna_dashboard

    optuna_dashboard.run_server(storage, host="127.0.0.1", port=port)


def landing_url(base: str, experiment_id: str) -> str:
    """Where a tuner lands in the MLflow UI: an experiment's training runs, flat, best first.

    MLflow 3 opens on its GenAI views unless told the workflow (`workflowType`); sorted by a
    metric, its runs table lists nested runs flat, so the sweep's parent and every trial show
    on the first page without expanding anything.
    """
    return (
        f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
        "&orderByKey=metrics.%60best_val_accuracy%60&orderByAsc=false"
    )


# MLflow's server-side jobs (GenAI judges, prompt optimisation) stay off unless the user's
# environment asks for them: tunelab runs none, and they cost five more processes polling the store
# (measured: 41 s of CPU in a server's first 45 s with them and 4 web workers, 6 s with neither).
WITHOUT_SERVER_JOBS = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def mlflow_ui_command(port: int) -> list[str]:
    """`mlflow ui` for one person on 127.0.0.1:`port`: one web worker, not MLflow's default 4."""
    return [
        *(sys.executable, "-m", "mlflow", "ui"),
        *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
    ]


def mlflow_ui_environment(tracking_uri: str) -> dict[str, str]:
    """This process's environment plus the store URL (never in argv) and no server jobs."""
    return {**WITHOUT_SERVER_JOBS, **os.environ, "MLFLOW_BACKEND_STORE_URI": tracking_uri}


def exec_mlflow_ui(tracking_uri: str, port: int) -> None:
    """Replace this process with `mlflow ui` on 127.0.0.1:`port` for `tracking_uri`."""
    os.execve(sys.executable, mlflow_ui_command(port), mlflow_ui_environment(tracking_uri))

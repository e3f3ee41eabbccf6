#!/usr/bin/env bash
# Start a tunelab container's command with the database URLs built from the password secret.
#
# The password arrives as a file (Compose secrets, a mounted Kubernetes Secret:
# TUNELAB_DB_PASSWORD_FILE) or as an environment variable from the platform's secret store
# (TUNELAB_DB_PASSWORD, a secretKeyRef); it is put only into the environment variables tunelab
# and the MLflow server read (TUNELAB_OPTUNA_STORAGE, MLFLOW_BACKEND_STORE_URI), never onto a
# command line, which every process on the host can read.
set -euo pipefail

password="${TUNELAB_DB_PASSWORD:-}"
if [ -z "$password" ] && [ -n "${TUNELAB_DB_PASSWORD_FILE:-}" ]; then
    password="$(cat "$TUNELAB_DB_PASSWORD_FILE")"
fi
if [ -z "$password" ]; then
    echo "entrypoint: error: no database password (set TUNELAB_DB_PASSWORD_FILE or TUNELAB_DB_PASSWORD)" >&2
    exit 2
fi
host="${TUNELAB_DB_HOST:-postgres}"
user="${TUNELAB_DB_USER:-tunelab}"
export TUNELAB_OPTUNA_STORAGE="postgresql+psycopg://$user:$password@$host:5432/optuna"
export MLFLOW_BACKEND_STORE_URI="postgresql+psycopg://$user:$password@$host:5432/mlflow"
unset TUNELAB_DB_PASSWORD password
exec "$@"

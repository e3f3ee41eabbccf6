#!/usr/bin/env bash
# Local services for multi-worker sweeps: a PostgreSQL server (Optuna studies and the MLflow
# backend store) and an MLflow tracking server, both bound to 127.0.0.1 (and to
# TUNELAB_SERVICES_HOST, when workers on other hosts must reach them).
#
#   scripts/services.sh install            install PostgreSQL (apt) if its binaries are missing
#   scripts/services.sh start              install if needed, init, start both; write $DIR/env
#   scripts/services.sh stop | status
#   scripts/services.sh restart-postgres [S] | restart-mlflow [S]
#                                          restart one server, down for S seconds (default 0)
#   scripts/services.sh postgres-only      start PostgreSQL alone (the tests use this)
#
# Settings (environment): TUNELAB_SERVICES_DIR (default tracking/services), TUNELAB_PG_PORT
# (5433), TUNELAB_MLFLOW_PORT (5050), TUNELAB_SERVICES_HOST (the address the servers listen on and
# the URLs in $DIR/env name; default 127.0.0.1), TUNELAB_SERVICES_CLIENTS (a network, e.g.
# 10.0.0.0/24, whose hosts PostgreSQL accepts with the password; default none),
# TUNELAB_MLFLOW_WORKERS (the MLflow server's web worker processes; default 2). The password is generated once into $DIR/pg_password
# (mode 600) and appears only in $DIR/env, which `source` puts into the two URLs tunelab reads.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${TUNELAB_SERVICES_DIR:-$ROOT/tracking/services}"
case "${1:-start}" in start|postgres-only) mkdir -p "$DIR" ;; esac
[ ! -d "$DIR" ] || DIR="$(cd "$DIR" && pwd)"
PG_PORT="${TUNELAB_PG_PORT:-5433}"
MLFLOW_PORT="${TUNELAB_MLFLOW_PORT:-5050}"
PGDATA="$DIR/pgdata"
PG_USER=tunelab
HOST="${TUNELAB_SERVICES_HOST:-127.0.0.1}"
CLIENTS="${TUNELAB_SERVICES_CLIENTS:-}"
MLFLOW_WORKERS="${TUNELAB_MLFLOW_WORKERS:-2}"
LISTEN=127.0.0.1
[ "$HOST" = 127.0.0.1 ] || LISTEN="127.0.0.1,$HOST"
VENV_BIN="${TUNELAB_VENV_BIN:-$ROOT/.venv/bin}"

say() { echo "services: $*" >&2; }
die() { echo "services: error: $*" >&2; exit 1; }

pg_bindir() {
    local found
    found="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
    if [ -n "$found" ] && [ -x "$found/initdb" ]; then echo "$found"; return; fi
    if command -v initdb >/dev/null 2>&1; then dirname "$(command -v initdb)"; return; fi
    return 1
}

install_postgres() {
    if pg_bindir >/dev/null; then return; fi
    say "PostgreSQL not found: installing it with apt-get"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq >/dev/null || die "apt-get update failed: install PostgreSQL (>= 13) yourself"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >/dev/null \
        || die "apt-get install postgresql failed: install PostgreSQL (>= 13) yourself"
    pg_bindir >/dev/null || die "PostgreSQL installed but initdb not found"
}

# PostgreSQL refuses to run as root: as root, run its programs as the `postgres` user.
as_pg() {
    if [ "$(id -u)" -eq 0 ]; then
        id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

password() {
    if [ ! -s "$DIR/pg_password" ]; then
        (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$DIR/pg_password")
    fi
    cat "$DIR/pg_password"
}

pg_running() { as_pg "$(pg_bindir)/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; }

start_postgres() {
    install_postgres
    local bin pw
    bin="$(pg_bindir)"
    pw="$(password)"
    if [ "$(id -u)" -eq 0 ] && ! runuser -u postgres -- test -x "$DIR"; then
        die "PostgreSQL runs as user postgres, which cannot enter $DIR: choose a TUNELAB_SERVICES_DIR whose parent folders it may traverse"
    fi
    if [ ! -s "$PGDATA/PG_VERSION" ]; then
        mkdir -p "$PGDATA"
        local pwfile="$DIR/.initdb_pw"
        (umask 077; echo "$pw" > "$pwfile")
        if [ "$(id -u)" -eq 0 ]; then chown postgres "$PGDATA" "$pwfile"; chmod 700 "$PGDATA"; fi
        as_pg "$bin/initdb" -D "$PGDATA" -U "$PG_USER" --pwfile="$pwfile" \
            --auth-host=scram-sha-256 --auth-local=scram-sha-256 -E UTF8 >"$DIR/initdb.log" 2>&1 \
            || { rm -f "$pwfile"; die "initdb failed (see $DIR/initdb.log)"; }
        rm -f "$pwfile"
    fi
    if [ -n "$CLIENTS" ] && ! grep -q "^host all $PG_USER $CLIENTS " "$PGDATA/pg_hba.conf"; then
        echo "host all $PG_USER $CLIENTS scram-sha-256" >> "$PGDATA/pg_hba.conf"
    fi
    if ! pg_running; then
        touch "$DIR/postgres.log"
        [ "$(id -u)" -ne 0 ] || chown postgres "$DIR/postgres.log"
        as_pg "$bin/pg_ctl" -D "$PGDATA" -l "$DIR/postgres.log" -w -t 60 \
            -o "-p $PG_PORT -k $PGDATA -c listen_addresses=$LISTEN -c max_connections=200" start \
            >/dev/null || die "PostgreSQL did not start (see $DIR/postgres.log)"
    fi
    for db in optuna mlflow; do
        if ! PGPASSWORD="$pw" "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres -tAc \
            "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1; then
            PGPASSWORD="$pw" "$bin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" "$db"
        fi
    done
    say "PostgreSQL on $HOST:$PG_PORT (databases optuna, mlflow; data $PGDATA)"
}

mlflow_running() { [ -s "$DIR/mlflow.pid" ] && kill -0 "$(cat "$DIR/mlflow.pid")" 2>/dev/null; }

start_mlflow() {
    local pw
    pw="$(password)"
    [ -x "$VENV_BIN/mlflow" ] || die "$VENV_BIN/mlflow not found: run \`make install\` first"
    if ! mlflow_running; then
        mkdir -p "$DIR/artifacts"
        # the virtual environment goes on PATH for whatever the server starts by name.
        # The store URL carries the password: it goes in the environment (mlflow server reads
        # MLFLOW_BACKEND_STORE_URI), never on a command line that `ps` shows to every user.
        # MLflow's server-side jobs (GenAI judges, prompt optimisation) are off unless asked
        # for: tunelab runs none, and they cost five more processes that poll the store.
        MLFLOW_BACKEND_STORE_URI="postgresql://$PG_USER:$pw@127.0.0.1:$PG_PORT/mlflow" \
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}" \
        PATH="$VENV_BIN:$PATH" nohup "$VENV_BIN/mlflow" server \
            --artifacts-destination "$DIR/artifacts" --workers "$MLFLOW_WORKERS" \
            --host "$HOST" --port "$MLFLOW_PORT" >"$DIR/mlflow.log" 2>&1 &
        echo $! > "$DIR/mlflow.pid"
    fi
    for _ in $(seq 1 120); do
        if "$VENV_BIN/python" -c "import urllib.request,sys; urllib.request.urlopen('http://$HOST:$MLFLOW_PORT/health', timeout=2)" 2>/dev/null; then
            say "MLflow tracking server on http://$HOST:$MLFLOW_PORT (artifacts $DIR/artifacts)"
            return
        fi
        mlflow_running || die "the MLflow server exited (see $DIR/mlflow.log)"
        sleep 1
    done
    die "the MLflow server did not answer in 120 s (see $DIR/mlflow.log)"
}

write_env() {
    local pw
    pw="$(password)"
    (umask 077
     echo "# source this file: every tunelab command then uses the shared services" > "$DIR/env"
     echo "export TUNELAB_OPTUNA_STORAGE=postgresql://$PG_USER:$pw@$HOST:$PG_PORT/optuna" >> "$DIR/env"
     if [ "${1:-}" = with-mlflow ]; then
         echo "export MLFLOW_TRACKING_URI=http://$HOST:$MLFLOW_PORT" >> "$DIR/env"
     fi)
    say "written $DIR/env; run: source $DIR/env"
}

stop_mlflow() {
    if mlflow_running; then
        local pid
        pid="$(cat "$DIR/mlflow.pid")"
        pkill -TERM -P "$pid" 2>/dev/null || true
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        say "MLflow server stopped"
    fi
    rm -f "$DIR/mlflow.pid"
}

stop_all() {
    stop_mlflow
    if pg_bindir >/dev/null && [ -s "$PGDATA/PG_VERSION" ] && pg_running; then
        as_pg "$(pg_bindir)/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
        say "PostgreSQL stopped"
    fi
}

status() {
    if [ -s "$PGDATA/PG_VERSION" ] && pg_bindir >/dev/null && pg_running; then
        say "PostgreSQL running on $HOST:$PG_PORT"
    else
        say "PostgreSQL not running"
    fi
    if mlflow_running; then say "MLflow running on $HOST:$MLFLOW_PORT"; else say "MLflow not running"; fi
}

case "${1:-start}" in
    install) install_postgres ;;
    start) start_postgres; start_mlflow; write_env with-mlflow ;;
    postgres-only) start_postgres; write_env ;;
    stop) stop_all ;;
    restart-postgres)
        pg_running || die "PostgreSQL is not running: use start"
        as_pg "$(pg_bindir)/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
        sleep "${2:-0}"
        start_postgres ;;
    restart-mlflow) stop_mlflow; sleep "${2:-0}"; start_mlflow ;;
    status) status ;;
    *) die "unknown command ${1}: use install, start, postgres-only, stop, status, restart-postgres or restart-mlflow" ;;
esac

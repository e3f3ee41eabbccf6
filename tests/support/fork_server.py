"""Test processes forked from an interpreter that has already loaded TensorFlow, Keras, Optuna and
MLflow, instead of new interpreters that load them again.

A `python -m tunelab tune ...` or `python -c WORKER ...` process that a test starts spends about
5 CPU seconds importing those libraries before it does anything the test is about (2 cores of an
AMD EPYC Zen 4 with AVX-512 BF16); the fault and worker tests start about forty of them, on two
cores shared by the whole suite. A fork server
imports the libraries once (per pytest process and per import-time environment, see
`IMPORT_TIME`); `popen` asks it for a child, which takes the command's standard streams, working
folder, environment, session and, for tests/hosts.py, network namespace and host name, and then
runs the command as `python` would: `-m tunelab` through runpy, `-c` code in a fresh `__main__`,
then threads joined, atexit handlers, streams flushed. The server is the child's parent: it
reaps it and sends back the wait status and the CPU it used, so `ForkedPopen` answers `wait`,
`poll`, `communicate`, `send_signal` and `kill` as `subprocess.Popen` does, with the child's
real pid.

What is preloaded is libraries only, never tunelab: some tunelab modules read the environment as
they load, and each child must load them under its own. Tests about a process's own start (what
it imports, what it prints while TensorFlow loads, what strace sees of its argv) and commands
this module cannot reproduce exactly (`-X` options, `preexec_fn`, `pass_fds`, another user) get
a real interpreter: `popen` falls back to `subprocess.Popen` for them.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import process_log

# read by the preloaded libraries (or the suite's sitecustomize) while they load: a command
# whose environment differs from a server's in any of them gets a server of its own (MLflow's
# log level is read then too, but each child sets it again: `_configure_libraries`)
IMPORT_TIME = (
    "PYTHONPATH",
    "PYTHONHASHSEED",
    "PYTHONWARNINGS",
    "TF_CPP_MIN_LOG_LEVEL",
    "TF_ENABLE_ONEDNN_OPTS",
    "KERAS_BACKEND",
    "KERAS_HOME",
)
PER_PROCESS = (process_log.VARIABLE,)  # the suite's settings each child applies itself
PRELOAD = (
    "numpy",
    "tensorflow",
    "keras",
    "optuna",
    "optuna.storages",
    "optuna.importance",  # scikit-learn, for the study's plots at a sweep's end (1.1 CPU-s)
    "optuna.visualization.matplotlib",
    "mlflow",
    "mlflow.tracking",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.tracking.rest_store",
    "sqlalchemy",
    "psycopg",
    "alembic",
    "matplotlib.figure",
    "matplotlib.backends.backend_agg",
    "h5py",
    "yaml",
    "rich.console",
    "tenacity",
)
STATUS = struct.Struct("!qdd")  # wait status, user and system CPU seconds of the child
PID = struct.Struct("!q")
LENGTH = struct.Struct("!I")
CLONE_NEWNET, CLONE_NEWUTS = 0x40000000, 0x04000000
PR_SET_PDEATHSIG = 1
START_SECONDS = 180.0

forked_cpu_seconds = [0.0]  # what this process's forked children used, summed (tests/conftest.py)


def forkable(argv: Sequence[Any], options: Mapping[str, Any]) -> bool:
    """Whether a fork of the server runs `argv` as a new interpreter would."""
    args = [str(a) for a in argv] if not isinstance(argv, (str, bytes)) else []
    command = len(args) >= 3 and args[0] == sys.executable and (
        args[1] == "-c" or args[1:3] == ["-m", "tunelab"]
    )
    plain = not any(
        options.get(name)
        for name in ("preexec_fn", "pass_fds", "shell", "user", "group", "extra_groups")
    )
    same = options.get("umask", -1) == -1 and options.get("executable") is None
    return command and plain and same


def popen(argv: Sequence[Any], **options: Any) -> subprocess.Popen[Any]:
    """`subprocess.Popen(argv, **options)`, forked from a fork server where that runs the same.

    Also takes `namespace` and `hostname`: the child joins that network namespace (made by
    `ip netns add`) and a UTS namespace of its own with that host name (tests/hosts.py)."""
    namespace, hostname = options.pop("namespace", None), options.pop("hostname", None)
    if not forkable(argv, options):
        if namespace is not None:
            raise ValueError("a command in a namespace must be forkable here")
        return subprocess.Popen(argv, **options)
    args = [str(a) for a in argv]
    loading = _import_environment(args, dict(options.get("env") or os.environ))
    return ForkedPopen(
        args,
        server=_servers.for_environment(loading),
        loading=loading,
        namespace=namespace,
        hostname=hostname,
        **options,
    )


def run(
    argv: Sequence[Any],
    *,
    input: Any = None,
    capture_output: bool = False,
    timeout: float | None = None,
    check: bool = False,
    **options: Any,
) -> subprocess.CompletedProcess[Any]:
    """`subprocess.run`, through `popen`."""
    if capture_output:
        options["stdout"] = options["stderr"] = subprocess.PIPE
    if input is not None:
        options["stdin"] = subprocess.PIPE
    with popen(argv, **options) as process:
        try:
            out, errors = process.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise
    done = subprocess.CompletedProcess(process.args, process.returncode, out, errors)
    if check:
        done.check_returncode()
    return done


def _import_environment(argv: list[str], environment: Mapping[str, str]) -> dict[str, str]:
    """The environment the libraries would load under in a new interpreter running `argv`: a
    `-m tunelab` command sets `quiet.LOAD_TIME_DEFAULTS` before it loads them, unless verbose."""
    from tunelab import quiet

    verbose = environment.get(quiet.VERBOSE_ENV) == "1" or "--verbose" in argv
    defaults = quiet.LOAD_TIME_DEFAULTS if argv[1] == "-m" and not verbose else {}
    return {**defaults, **environment}


def _signature(environment: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(
        sorted(
            (name, value)
            for name, value in environment.items()
            if name in IMPORT_TIME
            or (name.startswith("TUNELAB_TEST_") and name not in PER_PROCESS)
        )
    )


class ForkedPopen(subprocess.Popen):  # type: ignore[type-arg]
    """A `subprocess.Popen` whose child a fork server starts and reaps."""

    def __init__(
        self,
        args: list[str],
        *,
        server: _Server,
        loading: dict[str, str],
        namespace: str | None,
        hostname: str | None,
        **options: Any,
    ) -> None:
        self._server, self._loading = server, loading
        self._namespace, self._hostname = namespace, hostname
        self._connection: socket.socket | None = None
        self.cpu_seconds: float | None = None
        super().__init__(args, **options)

    def _execute_child(  # type: ignore[override]
        self,
        args: list[str],
        executable: Any,
        preexec_fn: Any,
        close_fds: bool,
        pass_fds: Any,
        cwd: Any,
        env: Mapping[str, str] | None,
        startupinfo: Any,
        creationflags: int,
        shell: bool,
        p2cread: int,
        p2cwrite: int,
        c2pread: int,
        c2pwrite: int,
        errread: int,
        errwrite: int,
        restore_signals: bool,
        gid: Any,
        gids: Any,
        uid: Any,
        umask: int,
        start_new_session: bool,
        process_group: int | None = None,
    ) -> None:
        streams = [
            p2cread if p2cread != -1 else 0,
            c2pwrite if c2pwrite != -1 else 1,
            errwrite if errwrite != -1 else 2,
        ]
        request = {
            "argv": list(args),
            "cwd": os.fspath(cwd) if cwd is not None else os.getcwd(),
            "env": dict(env if env is not None else os.environ),
            "loading": self._loading,
            "session": bool(start_new_session),
            "group": process_group if process_group not in (None, -1) else None,
            "namespace": self._namespace,
            "hostname": self._hostname,
        }
        try:
            self._connection, self.pid = self._server.start(request, streams)
            self._child_created = True
        finally:
            self._close_pipe_fds(p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite)

    def _try_wait(self, wait_flags: int) -> tuple[int, int]:
        assert self._connection is not None
        if wait_flags & os.WNOHANG:
            ready, _, _ = select.select([self._connection], [], [], 0)
            if not ready:
                return 0, 0
        data = _receive(self._connection, STATUS.size)
        status, user, system = STATUS.unpack(data)
        self.cpu_seconds = user + system
        forked_cpu_seconds[0] += self.cpu_seconds
        self._connection.close()
        return self.pid, status

    def _internal_poll(self, _deadstate: int | None = None, **_: Any) -> int | None:
        if self.returncode is None:
            if not self._waitpid_lock.acquire(False):
                return None
            try:
                if self.returncode is None:
                    pid, status = self._try_wait(os.WNOHANG)
                    if pid == self.pid:
                        self._handle_exitstatus(status)
            except OSError:
                if _deadstate is not None:
                    self.returncode = _deadstate
            finally:
                self._waitpid_lock.release()
        return self.returncode


def _receive(connection: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the fork server closed the connection (it stopped?)")
        data += chunk
    return data


class _Server:
    """One fork server process, started with `environment` as its own."""

    def __init__(self, folder: Path, environment: dict[str, str]) -> None:
        self.path = folder / "server.sock"
        self.log = folder / "server.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, __file__, str(self.path)],
                cwd=folder,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        self._ready = False

    def start(self, request: dict[str, Any], streams: list[int]) -> tuple[socket.socket, int]:
        """Ask for a child running `request`; its connection (for the status) and pid."""
        self._wait_until_ready()
        body = json.dumps(request).encode()
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.connect(str(self.path))
        socket.send_fds(connection, [LENGTH.pack(len(body)) + body], streams)
        (pid,) = PID.unpack(_receive(connection, PID.size))
        if pid < 0:
            connection.close()
            raise OSError(-pid, os.strerror(-pid))
        return connection, pid

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + START_SECONDS
        while not self._ready:
            if self.process.poll() is not None:
                raise RuntimeError(f"the fork server stopped: {self.log.read_text()[-2000:]}")
            if self.path.exists():
                self._ready = True
            elif time.monotonic() > deadline:
                raise RuntimeError(f"the fork server did not start in {START_SECONDS:.0f} s")
            else:
                time.sleep(0.05)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


class _Servers:
    """The fork servers of this process, one per import-time environment, started on demand."""

    def __init__(self) -> None:
        self.folder: Path | None = None
        self._by_signature: dict[tuple[tuple[str, str], ...], _Server] = {}
        self._lock = threading.Lock()

    def for_environment(self, environment: Mapping[str, str]) -> _Server:
        signature = _signature(environment)
        with self._lock:
            if signature not in self._by_signature:
                if self.folder is None:
                    raise RuntimeError("fork_server.use(folder) first (tests/conftest.py does)")
                folder = self.folder / f"server{len(self._by_signature)}"
                folder.mkdir(parents=True)
                own = {k: v for k, v in environment.items() if k not in PER_PROCESS}
                self._by_signature[signature] = _Server(folder, own)
            return self._by_signature[signature]

    def stop(self) -> None:
        with self._lock:
            for server in self._by_signature.values():
                server.stop()
            self._by_signature.clear()


_servers = _Servers()


def use(folder: Path) -> None:
    """Fork servers of this process keep their sockets and logs under `folder`; all stop when
    the process exits."""
    _servers.folder = folder
    atexit.register(_servers.stop)


# ---- the server process -------------------------------------------------------------------


def _serve(path: str) -> None:
    """Preload, listen on `path`, fork a child per request, report each child's end."""
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getppid()
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # dies with the pytest process that started it
    if os.getppid() != parent:
        return
    for name in PRELOAD:
        __import__(name)
    sys.stdout.flush()
    sys.stderr.flush()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    temporary = path + ".new"
    listener.bind(temporary)
    listener.listen(64)
    os.rename(temporary, path)  # the path appears once the server answers
    children: dict[int, tuple[int, socket.socket]] = {}  # pidfd: (pid, connection)
    while True:
        ready, _, _ = select.select([listener.fileno(), *children], [], [])
        for item in ready:
            if item == listener.fileno():
                connection, _ = listener.accept()
                try:
                    _start_child(libc, connection, listener, children)
                except OSError as error:  # the test gets it, as from a failed exec
                    connection.sendall(PID.pack(-(error.errno or 1)))
                    connection.close()
            else:
                pid, connection = children.pop(item)
                os.close(item)
                _, status, usage = os.wait4(pid, 0)
                with contextlib.suppress(OSError):  # the test may no longer wait for it
                    connection.sendall(STATUS.pack(status, usage.ru_utime, usage.ru_stime))
                connection.close()


def _start_child(
    libc: Any,
    connection: socket.socket,
    listener: socket.socket,
    children: dict[int, tuple[int, socket.socket]],
) -> None:
    message, streams, _, _ = socket.recv_fds(connection, 1 << 16, 3)
    (length,) = LENGTH.unpack(message[: LENGTH.size])
    body = message[LENGTH.size :]
    while len(body) < length:
        chunk = connection.recv(length - len(body))
        if not chunk:
            break
        body += chunk
    request = json.loads(body)
    pid = os.fork()
    if pid == 0:
        try:
            listener.close()
            connection.close()
            for pidfd, (_, other) in children.items():
                os.close(pidfd)
                other.close()
            _run_child(libc, request, streams)
        finally:
            os._exit(70)
    for stream in streams:
        os.close(stream)
    children[os.pidfd_open(pid)] = (pid, connection)
    connection.sendall(PID.pack(pid))


def _run_child(libc: Any, request: dict[str, Any], streams: list[int]) -> None:
    """In the child: take on the request's process settings, run its command, exit as `python`
    exits (never returns)."""
    for target, stream in enumerate(streams):
        os.dup2(stream, target)
    for stream in set(streams) - {0, 1, 2}:
        os.close(stream)
    if request["session"]:
        os.setsid()
    elif request["group"] is not None:
        os.setpgid(0, request["group"])
    if request["namespace"]:
        _enter_namespace(libc, request["namespace"], request["hostname"])
    os.chdir(request["cwd"])
    _configure_libraries(request["loading"])
    os.environ.clear()
    os.environ.update(request["env"])
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    if unbuffered or os.isatty(1):
        sys.stdout.reconfigure(line_buffering=True, write_through=unbuffered)  # type: ignore[union-attr]
    if process_log.VARIABLE in os.environ:
        process_log.install()
    code: int | str = 0
    try:
        _run_command(request["argv"])
    except SystemExit as exit:
        code = _exit_code(exit.code)
    except KeyboardInterrupt:
        sys.excepthook(*sys.exc_info())  # type: ignore[arg-type]
        code = "interrupted"
    except BaseException:
        sys.excepthook(*sys.exc_info())  # type: ignore[arg-type]
        code = 1
    _exit(code)


def _configure_libraries(loading: dict[str, str]) -> None:
    """What the preloaded libraries set from the environment as they load and can set again:
    MLflow's log level (`tunelab` raises it to WARNING before loading MLflow)."""
    from mlflow.utils.logging_utils import _configure_mlflow_loggers

    os.environ.clear()
    os.environ.update(loading)
    _configure_mlflow_loggers(root_module_name="mlflow")


def _enter_namespace(libc: Any, namespace: str, hostname: str | None) -> None:
    """Join a network namespace made by `ip netns add`, and a UTS namespace named `hostname`."""
    descriptor = os.open(f"/var/run/netns/{namespace}", os.O_RDONLY)
    if libc.setns(descriptor, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), f"setns into {namespace}")
    os.close(descriptor)
    if hostname:
        if libc.unshare(CLONE_NEWUTS) != 0:
            raise OSError(ctypes.get_errno(), "unshare the host name")
        socket.sethostname(hostname)


def _run_command(argv: list[str]) -> None:
    import builtins
    import runpy
    import types

    if argv[1] == "-c":
        main = types.ModuleType("__main__")
        main.__dict__["__builtins__"] = builtins
        sys.modules["__main__"] = main
        sys.argv = ["-c", *argv[3:]]
        sys.path[0] = ""
        exec(compile(argv[2], "<string>", "exec"), main.__dict__)
    else:
        sys.argv = ["-m", *argv[3:]]
        sys.path[0] = os.getcwd()
        runpy._run_module_as_main(argv[2], alter_argv=True)  # type: ignore[attr-defined]


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _exit(code: int | str) -> None:
    """Finish as the interpreter does: join threads, run atexit handlers, flush, exit."""
    with contextlib.suppress(BaseException):
        threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    if code == "interrupted":  # as Python does: die of SIGINT itself
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(int(code) & 0xFF)


if __name__ == "__main__":
    _serve(sys.argv[1])

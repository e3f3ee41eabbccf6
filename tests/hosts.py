"""Hosts that are really apart, on one machine: a network namespace per host.

Each `Host` has its own network namespace (a veth pair into one bridge of the test's own
addresses), its own host name (a UTS namespace per process), its own working folder and its own
HOME. It reaches PostgreSQL and the MLflow server only through their addresses on the bridge:
nothing a worker reads or writes is shared with another host through a path. `disconnect()`
takes a host's link down, as a pulled cable does; `connect()` puts it back.

Needs root and `ip` (iproute2); `unavailable()` says why not otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import fork_server

NETWORK_PREFIX = "10.213"  # a private range; only the namespaces made here use it


def unavailable() -> str | None:
    """None when hosts can be made here; otherwise why not."""
    if os.geteuid() != 0:
        return "separate hosts need root (network namespaces)"
    if not shutil.which("ip") or not shutil.which("unshare"):
        return "separate hosts need iproute2's ip and util-linux's unshare"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@dataclass
class Host:
    """One host: a namespace, an address on the bridge, a folder and a HOME of its own."""

    name: str
    namespace: str
    address: str
    link: str  # the bridge side of its veth pair
    folder: Path
    environment: dict[str, str] = field(default_factory=dict)

    def popen(
        self, argv: list[str], env: Mapping[str, str] | None = None, **kwargs: object
    ) -> subprocess.Popen[str]:
        """Start `argv` on this host: in its namespace, under its host name, in its folder, with
        only this host's environment (PATH, HOME, its cache) plus `env`, and the suite's own
        settings for the processes it starts (fixed speeds, short refits: tests/support).
        A Python command is forked from a fork server that joins the namespaces itself
        (tests/support/fork_server.py); anything else goes through `ip netns exec`."""
        suite = {
            name: value
            for name, value in os.environ.items()
            if name.startswith("TUNELAB_TEST_") or name == "PYTHONPATH"
        }
        environment = {
            **suite,
            "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
            "HOME": str(self.folder / "home"),
            "TUNELAB_DATA_DIR": str(self.folder / "cache"),
            "TUNELAB_OFFLINE": "1",
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "LANG": "C.UTF-8",
            **self.environment,
            **(env or {}),
        }
        options = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, **kwargs}
        if fork_server.forkable(argv, options):
            return fork_server.popen(  # type: ignore[no-any-return]
                argv,
                namespace=self.namespace,
                hostname=self.name,
                cwd=self.folder,
                env=environment,
                **options,
            )
        command = [
            "ip", "netns", "exec", self.namespace,
            "unshare", "--uts",
            "sh", "-c", 'hostname "$0" && exec "$@"', self.name,
            *argv,
        ]  # fmt: skip
        return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
            command, cwd=self.folder, env=environment, **options
        )

    def disconnect(self) -> None:
        """The host loses the network (its link goes down; its processes run on)."""
        _ip("link", "set", self.link, "down")

    def connect(self) -> None:
        _ip("link", "set", self.link, "up")


@dataclass
class Network:
    """A bridge with an address for the servers (`gateway`) and hosts attached to it."""

    tag: str
    subnet: int
    hosts: list[Host] = field(default_factory=list)
    made: int = 0

    @property
    def bridge(self) -> str:
        return f"tlb{self.tag}"

    @property
    def gateway(self) -> str:
        return f"{NETWORK_PREFIX}.{self.subnet}.1"

    @property
    def cidr(self) -> str:
        return f"{NETWORK_PREFIX}.{self.subnet}.0/24"

    def up(self) -> Network:
        self.down()
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        return self

    def host(self, name: str, folder: Path) -> Host:
        """A new host on the bridge, working in `folder` (HOME inside it)."""
        index = self.made = self.made + 1  # never reuse a name, even after remove_hosts
        namespace, link = f"tl{self.tag}h{index}", f"tl{self.tag}v{index}"
        address = f"{NETWORK_PREFIX}.{self.subnet}.{10 + index}"
        _ip("netns", "add", namespace)
        _ip("link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        _ip("link", "set", link, "master", self.bridge)
        _ip("link", "set", link, "up")
        for args in (["addr", "add", f"{address}/24", "dev", "eth0"],
                     ["link", "set", "eth0", "up"], ["link", "set", "lo", "up"]):  # fmt: skip
            _ip("-n", namespace, *args)
        (folder / "home").mkdir(parents=True, exist_ok=True)
        host = Host(name, namespace, address, link, folder)
        self.hosts.append(host)
        return host

    def remove_hosts(self) -> None:
        """Remove every host's namespace (its veth pair goes with it); the bridge stays."""
        for host in self.hosts:
            subprocess.run(["ip", "netns", "del", host.namespace], capture_output=True)
        self.hosts.clear()

    def down(self) -> None:
        """Remove the hosts and the bridge."""
        self.remove_hosts()
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)

    def teardown_command(self) -> str:
        """A shell line that removes every namespace and the bridge this network made (for a
        watchdog that runs when the test session was killed)."""
        spaces = f"ip netns list | grep -o '^tl{self.tag}h[0-9]*' | xargs -r -n1 ip netns del"
        return f"{spaces}; ip link del {self.bridge}"

"""Hosts on one machine, for tests that cross a network: Linux network namespaces, each
with one veth into a bridge in the root namespace (the data host: the bridge address
is where its PostgreSQL and Redis listen).

Addresses are 10.77.0.0/24, used only inside these namespaces and the bridge; the
context manager removes every namespace, link and process it made. A host is cut off
(`cut`) and healed (`heal`) by setting its veth down and up (`tc netem` is not
available here), or only from some addresses (`drop`: iptables in its namespace); a
host is lost by SIGKILL to every process in its namespace.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

BRIDGE = "tfbr0"
SUBNET = "10.77.0"
DATA_HOST = f"{SUBNET}.1"  # the bridge's own address, in the root namespace


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@dataclass(frozen=True)
class Host:
    name: str
    address: str

    @property
    def netns(self) -> str:
        return f"tf-{self.name}"

    @property
    def veth(self) -> str:
        return f"tfv-{self.name}"[:15]

    def command(self, argv: list[str]) -> list[str]:
        """`argv` run inside this host."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def pids(self) -> list[int]:
        found = subprocess.run(
            ["ip", "netns", "pids", self.netns], capture_output=True, text=True, check=False
        ).stdout
        return [int(pid) for pid in found.split()]

    def kill_all(self) -> int:
        """The host is lost: SIGKILL to every process in it. Returns how many."""
        pids = self.pids()
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(pids)

    def cut(self) -> None:
        """The host's only link goes down: no packet in or out (a partition)."""
        _ip("link", "set", self.veth, "down")

    def heal(self) -> None:
        _ip("link", "set", self.veth, "up")

    def drop(self, *addresses: str) -> None:
        """A partial partition: nothing in or out between this host and `addresses`,
        everything else as before (iptables rules in its namespace)."""
        for chain, side in (("INPUT", "-s"), ("OUTPUT", "-d")):
            rule = ["iptables", "-A", chain, side, ",".join(addresses), "-j", "DROP"]
            subprocess.run(self.command(rule), check=True, capture_output=True)

    def undrop(self) -> None:
        for chain in ("INPUT", "OUTPUT"):
            subprocess.run(self.command(["iptables", "-F", chain]), check=True, capture_output=True)


@contextmanager
def hosts(*names: str, subnet: str = SUBNET, bridge: str = BRIDGE) -> Iterator[dict[str, Host]]:
    """Make one namespace per name, joined by the bridge; remove them all afterwards.
    Another `subnet` and `bridge` make a network of its own (its data host at
    `{subnet}.1`), beside one that another run may be using."""
    made: list[Host] = []
    gateway = f"{subnet}.1"
    _teardown(names, bridge)  # what a killed run may have left behind
    try:
        _ip("link", "add", bridge, "type", "bridge")
        _ip("addr", "add", f"{gateway}/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for number, name in enumerate(names, start=10):
            host = Host(name, f"{subnet}.{number}")
            _ip("netns", "add", host.netns)
            made.append(host)
            peer = ["peer", "name", "eth0", "netns", host.netns]
            _ip("link", "add", host.veth, "type", "veth", *peer)
            _ip("link", "set", host.veth, "master", bridge, "up")
            inside = ["-n", host.netns]
            _ip(*inside, "addr", "add", f"{host.address}/24", "dev", "eth0")
            _ip(*inside, "link", "set", "eth0", "up")
            _ip(*inside, "link", "set", "lo", "up")
            _ip(*inside, "route", "add", "default", "via", gateway)
        yield {host.name: host for host in made}
    finally:
        for host in made:
            host.kill_all()
        _teardown(names, bridge)


def _teardown(names: tuple[str, ...], bridge: str) -> None:
    for name in names:
        host = Host(name, "")
        subprocess.run(["ip", "link", "del", host.veth], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", host.netns], capture_output=True, check=False)
    subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)

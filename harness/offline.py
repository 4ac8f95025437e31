"""A machine without a network, for tests: a fresh Linux network namespace that has only
its loopback interface (no veth, no route out), and a way to serve a WSGI app inside it
from a thread of the test process.

A network namespace belongs to a thread, not to a process: a thread that enters one
with setns(2) (Python 3.11 has no os.setns, hence libc through ctypes) binds its
listening socket there, and the threads it starts to serve requests stay there. A
browser joins the same namespace through `ip netns exec`. Needs root and iproute2.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from werkzeug.serving import BaseWSGIServer, make_server

CLONE_NEWNET = 0x40000000
# TEST-NET-1 (RFC 5737): an address no one uses; asking for a route to it sends nothing.
UNROUTABLE = ("192.0.2.1", 80)


def can_make_namespaces() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


@dataclass(frozen=True)
class Namespace:
    name: str

    def command(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def enter(self) -> None:
        """Move the calling thread (only it) into this namespace."""
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                code = ctypes.get_errno()
                raise OSError(code, os.strerror(code))
        finally:
            os.close(fd)


@contextmanager
def loopback_namespace(prefix: str = "tf-offline") -> Iterator[Namespace]:
    """A new namespace with `lo` up and nothing else; deleted afterwards."""
    namespace = Namespace(f"{prefix}-{os.getpid()}")
    subprocess.run(["ip", "netns", "del", namespace.name], capture_output=True, check=False)
    subprocess.run(["ip", "netns", "add", namespace.name], check=True, capture_output=True)
    try:
        subprocess.run(
            ["ip", "-n", namespace.name, "link", "set", "lo", "up"],
            check=True,
            capture_output=True,
        )
        yield namespace
    finally:
        subprocess.run(["ip", "netns", "del", namespace.name], capture_output=True, check=False)


@dataclass
class OfflineServer:
    url: str
    # What connecting to an outside address did from inside: ENETUNREACH, no route.
    outside_errno: int | None


@contextmanager
def serve_in(namespace: Namespace, app: Any) -> Iterator[OfflineServer]:
    """`app` on 127.0.0.1 of `namespace` (threaded werkzeug), until the block ends."""
    started = threading.Event()
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            namespace.enter()
            with socket.socket() as probe:
                try:
                    probe.connect(UNROUTABLE)
                    box["errno"] = None
                except OSError as exc:
                    box["errno"] = exc.errno
            server: BaseWSGIServer = make_server("127.0.0.1", 0, app, threaded=True)
            box["server"] = server
        except BaseException as exc:
            box["error"] = exc
            raise
        finally:
            started.set()
        server.serve_forever()

    thread = threading.Thread(target=run, name=f"serve-in-{namespace.name}", daemon=True)
    thread.start()
    started.wait(30)
    if "server" not in box:
        raise RuntimeError(f"could not serve in {namespace.name}") from box.get("error")
    server = box["server"]
    try:
        yield OfflineServer(f"http://127.0.0.1:{server.server_port}", box["errno"])
    finally:
        server.shutdown()
        thread.join(10)

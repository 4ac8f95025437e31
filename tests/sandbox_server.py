"""The provider sandbox as a real HTTP server on a free port, in a thread of the test.

(The sandbox is a plain WSGI app; a test that needs it in another process — beside a
real API under gunicorn — runs `python -m sandbox` instead.)"""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from werkzeug.serving import BaseWSGIServer, make_server

from sandbox.app import SandboxConfig, create_sandbox


@dataclass
class SandboxServer:
    server: BaseWSGIServer
    base: str

    def set_mode(self, mode: str, delay: float = 0.0) -> None:
        self._post("/_sandbox/mode", {"mode": mode, "delay": delay})

    def state(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.base}/_sandbox/state", timeout=5) as answer:
            return dict(json.load(answer))

    def stop(self) -> None:
        """Unreachable from now on: the port refuses connections."""
        self.server.shutdown()
        self.server.server_close()

    def _post(self, path: str, body: dict[str, Any]) -> None:
        request = urllib.request.Request(
            f"{self.base}{path}", data=json.dumps(body).encode(), method="POST"
        )
        urllib.request.urlopen(request, timeout=5).close()


def start_sandbox(config: SandboxConfig | None = None) -> SandboxServer:
    app = create_sandbox(config or SandboxConfig(webhook_secret="whsec_test"))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return SandboxServer(server, f"http://127.0.0.1:{server.port}")


_shared: list[SandboxServer] = []


def shared() -> SandboxServer:
    """The test run's sandbox, started on first use and kept until the run ends."""
    if not _shared:
        _shared.append(start_sandbox())
    return _shared[0]


@contextmanager
def sandbox_server(config: SandboxConfig | None = None) -> Iterator[SandboxServer]:
    running = start_sandbox(config)
    try:
        yield running
    finally:
        with suppress(OSError):  # already stopped by the test
            running.stop()

"""A WSGI app served on a free port from a thread of this process (threaded werkzeug): the
one way tests, benchmarks and the soak run a server in their own process. The payment
provider's sandbox is served so, with a client for its control endpoints.

(A server that must live in another process, beside a real API under gunicorn, runs
`python -m sandbox` instead: harness/processes.py.)"""

from __future__ import annotations

import json
import threading
import urllib.request
from contextlib import suppress
from typing import Any, Self

from werkzeug.serving import BaseWSGIServer, make_server

from sandbox.app import SandboxConfig, create_sandbox


class ThreadedServer:
    """`app` served at `base` (http://address:port) until `stop`, or until the `with`
    block on it ends."""

    def __init__(self, app: Any, address: str = "127.0.0.1", *, name: str = "wsgi") -> None:
        self.server: BaseWSGIServer = make_server(address, 0, app, threaded=True)
        self.base = f"http://{address}:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, name=name, daemon=True).start()

    def stop(self) -> None:
        """Unreachable from now on: the port refuses connections."""
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        with suppress(OSError):  # stopped already, by the block
            self.stop()


class SandboxServer(ThreadedServer):
    """The provider sandbox (sandbox/app.py) in a thread; its mode and state."""

    def __init__(self, config: SandboxConfig | None = None, *, address: str = "127.0.0.1") -> None:
        super().__init__(create_sandbox(config or SandboxConfig()), address, name="sandbox")

    def set_mode(self, mode: str, delay: float = 0.0) -> None:
        body = json.dumps({"mode": mode, "delay": delay}).encode()
        request = urllib.request.Request(f"{self.base}/_sandbox/mode", data=body, method="POST")
        urllib.request.urlopen(request, timeout=5).close()

    def state(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.base}/_sandbox/state", timeout=5) as answer:
            return dict(json.load(answer))

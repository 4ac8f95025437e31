"""The payment provider sandbox in a thread of the bench process (bench/common.py)."""

from __future__ import annotations

import threading

from werkzeug.serving import make_server

from sandbox.app import SandboxConfig, create_sandbox


def start() -> str:
    """Serve the sandbox on a free port for the rest of the process; its base URL."""
    server = make_server("127.0.0.1", 0, create_sandbox(SandboxConfig()), threaded=True)
    threading.Thread(target=server.serve_forever, name="sandbox", daemon=True).start()
    return f"http://127.0.0.1:{server.port}"

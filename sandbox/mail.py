"""`python -m sandbox.mail [--host H] [--port 1025]`: the local stand-in for a mail relay
(development only: `make up`, docker compose). Every message is taken (250) and printed
whole on stdout, where honcho and `docker compose logs` show it; nothing is delivered.

It is aiosmtpd's own server and printing handler; the host's default comes from
SANDBOX_HOST, as for the provider sandbox (`python -m sandbox`), so the Procfile and
compose run the same command.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Debugging


def main() -> None:
    parser = argparse.ArgumentParser(description="A local SMTP sink that prints each mail.")
    parser.add_argument("--host", default=os.environ.get("SANDBOX_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=1025)
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    controller = Controller(Debugging(sys.stdout), hostname=args.host, port=args.port)
    controller.start()
    print(
        f"mail sink: SMTP on {args.host}:{args.port} (SMTP_URL=smtp://{args.host}:{args.port});"
        " every message is printed here, none is delivered"
    )
    try:
        threading.Event().wait()  # until the process is stopped
    finally:
        controller.stop()


if __name__ == "__main__":
    main()

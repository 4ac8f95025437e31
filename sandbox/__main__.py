"""`python -m sandbox [--port 12111] [--webhook-url URL] [--webhook-secret S] [--secret-key K]`

Each option's default may also come from the environment (SANDBOX_HOST, SANDBOX_PORT,
SANDBOX_WEBHOOK_URL, STRIPE_SECRET_KEY, STRIPE_WEBHOOK_SECRETS' first entry), so the
Procfile and docker-compose run the same command with different surroundings.

Served by werkzeug's threaded WSGI server, as the tests serve it (harness/serving.py),
through `make_server` rather than `run_simple`: run_simple's banner warns against its
development server in production, and the sandbox, a stand-in for api.stripe.com, exists
only for development and tests. It prints one ready line, a line per request, and stops
with exit status 0 on SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from werkzeug.serving import make_server

from sandbox.app import SandboxConfig, create_sandbox


def main() -> None:
    defaults = SandboxConfig()
    env = os.environ
    parser = argparse.ArgumentParser(description="A local Stripe API sandbox.")
    parser.add_argument("--host", default=env.get("SANDBOX_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env.get("SANDBOX_PORT", "12111")))
    parser.add_argument("--secret-key", default=env.get("STRIPE_SECRET_KEY", defaults.secret_key))
    parser.add_argument(
        "--webhook-url",
        default=env.get("SANDBOX_WEBHOOK_URL", "http://127.0.0.1:8000/api/v1/webhooks/stripe"),
        help="where events are POSTed",
    )
    secrets = env.get("STRIPE_WEBHOOK_SECRETS", defaults.webhook_secret).split(",")
    parser.add_argument("--webhook-secret", default=secrets[-1].strip())
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s sandbox %(message)s")
    app = create_sandbox(
        SandboxConfig(
            secret_key=args.secret_key,
            webhook_url=args.webhook_url,
            webhook_secret=args.webhook_secret,
        )
    )
    server = make_server(args.host, args.port, app, threaded=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    logging.getLogger("sandbox").info(
        "ready: http://%s:%s (Stripe's API for development; events to %s)",
        args.host,
        server.server_port,
        args.webhook_url,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()

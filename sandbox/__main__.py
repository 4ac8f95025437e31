"""`python -m sandbox [--port 12111] [--webhook-url URL] [--webhook-secret S] [--secret-key K]`"""

from __future__ import annotations

import argparse
import logging

from werkzeug.serving import run_simple

from sandbox.app import SandboxConfig, create_sandbox


def main() -> None:
    defaults = SandboxConfig()
    parser = argparse.ArgumentParser(description="A local Stripe API sandbox.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=12111)
    parser.add_argument("--secret-key", default=defaults.secret_key)
    parser.add_argument("--webhook-url", default=None, help="where events are POSTed")
    parser.add_argument("--webhook-secret", default=defaults.webhook_secret)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s sandbox %(message)s")
    app = create_sandbox(
        SandboxConfig(
            secret_key=args.secret_key,
            webhook_url=args.webhook_url,
            webhook_secret=args.webhook_secret,
        )
    )
    run_simple(args.host, args.port, app, threaded=True)


if __name__ == "__main__":
    main()

"""`python -m sandbox [--port 12111] [--webhook-url URL] [--webhook-secret S] [--secret-key K]`

Each option's default may also come from the environment (SANDBOX_HOST, SANDBOX_PORT,
SANDBOX_WEBHOOK_URL, STRIPE_SECRET_KEY, STRIPE_WEBHOOK_SECRETS' first entry), so the
Procfile and docker-compose run the same command with different surroundings.
"""

from __future__ import annotations

import argparse
import logging
import os

from werkzeug.serving import run_simple

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
    run_simple(args.host, args.port, app, threaded=True)


if __name__ == "__main__":
    main()

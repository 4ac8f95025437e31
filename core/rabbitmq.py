"""RabbitMQ's management API, for the one thing AMQP cannot do: set a policy on the
broker URL's virtual host (RabbitMQ's way to give existing queues optional arguments
such as a delivery limit; tasks/poison.py). The standard library's HTTP client: one
request at a worker's start."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote, urlsplit
from urllib.request import Request, urlopen


def vhost_of(broker_url: str) -> str:
    """The virtual host an `amqp://` URL names, as kombu reads it ("/" when none)."""
    return unquote(urlsplit(broker_url).path[1:]) or "/"


def put_policy(management_url: str, broker_url: str, name: str, policy: Mapping[str, Any]) -> None:
    """Create or replace the policy `name` on the broker URL's vhost, logging in with the
    URL's user and password (who needs the `policymaker` or `administrator` tag).
    Raises OSError (urllib's errors among them) when the API is away or refuses."""
    url = urlsplit(broker_url)
    login = f"{unquote(url.username or 'guest')}:{unquote(url.password or 'guest')}"
    request = Request(
        f"{management_url.rstrip('/')}/api/policies/"
        f"{quote(vhost_of(broker_url), safe='')}/{quote(name, safe='')}",
        data=json.dumps(policy).encode(),
        method="PUT",
        headers={
            "Content-Type": "application/json",
            "Authorization": "Basic " + base64.b64encode(login.encode()).decode(),
        },
    )
    with urlopen(request, timeout=5):  # 201 created, 204 replaced; errors raise
        pass

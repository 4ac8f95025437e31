"""No request waits on another client's manners (issue 17, "no request ever hangs").

gunicorn's gthread worker closed connections "gracefully" on its one main thread,
waiting up to 2 s per connection for the client's FIN (core/gunicorn_worker.py). Clients
that leave their sockets open after a `Connection: close` answer so held up everyone
else: a request already sent on a kept-alive connection sat unanswered, every pool
thread idle, for 2 s per such client. These tests run the real API under the project's
gunicorn.conf.py and fail on gunicorn's own gthread class.
"""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager

import pytest

from harness.processes import api_server

LINGERING_CLIENTS = 8
# Far above a healthz answer (milliseconds), far below one lingering close (2 s).
ANSWER_WITHIN = 1.5


@pytest.fixture(scope="module")
def api() -> Iterator:
    with api_server({}) as server:  # one gunicorn worker: one main thread for all
        yield server


@contextmanager
def lingering_clients(port: int, count: int) -> Iterator[list[socket.socket]]:
    """Clients that ask with `Connection: close`, get their answer, and keep their end
    open (never read to the end, never close): gunicorn must linger for their FIN."""
    with ExitStack() as stack:
        sockets = []
        for _ in range(count):
            client = stack.enter_context(socket.create_connection(("127.0.0.1", port)))
            client.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            sockets.append(client)
        yield sockets


def wait_for_an_answer(client: socket.socket) -> None:
    """The server answered `client`: it is closing that connection from now on."""
    client.settimeout(10)
    assert client.recv(12, socket.MSG_PEEK).startswith(b"HTTP/1.1 200")


def test_a_kept_alive_request_is_answered_while_other_clients_linger(api) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", api.port, timeout=ANSWER_WITHIN)
    connection.request("GET", "/healthz")
    assert connection.getresponse().read()
    with lingering_clients(api.port, LINGERING_CLIENTS) as lingering:
        wait_for_an_answer(lingering[0])
        started = time.monotonic()
        connection.request("GET", "/healthz")  # on the kept-alive connection
        response = connection.getresponse()  # raises TimeoutError on today's gthread
        assert response.status == 200 and response.read()
        assert time.monotonic() - started < ANSWER_WITHIN


def test_a_new_connection_is_served_while_other_clients_linger(api) -> None:
    with lingering_clients(api.port, LINGERING_CLIENTS) as lingering:
        wait_for_an_answer(lingering[0])
        for _ in range(3):
            connection = http.client.HTTPConnection("127.0.0.1", api.port, timeout=ANSWER_WITHIN)
            connection.request("GET", "/healthz")
            assert connection.getresponse().status == 200
            connection.close()


def test_thousands_of_kept_alive_requests_each_answered_in_time(api) -> None:
    """Sequential requests on one connection, some closing it and some with a body
    the app never reads: each answered within the client's timeout, none lost."""
    kept_alive_requests(api.port, 2000)


def test_concurrent_kept_alive_clients_each_answered_in_time(api) -> None:
    """Eight clients at once (more than the worker's four threads), 300 requests each."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        for done in [pool.submit(kept_alive_requests, api.port, 300) for _ in range(8)]:
            done.result()


def kept_alive_requests(port: int, count: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=ANSWER_WITHIN)
    unread_body = b"x" * 9000  # more than gunicorn reads with the headers
    for n in range(count):
        if n % 100 == 99:
            connection.request("GET", "/healthz", headers={"Connection": "close"})
        elif n % 10 == 5:
            connection.request("POST", "/healthz", body=unread_body)  # refused, body unread
        else:
            connection.request("GET", "/healthz")
        response = connection.getresponse()
        assert response.status in (200, 405, 415), n
        response.read()
        if response.will_close:
            connection.close()  # http.client reconnects on the next request

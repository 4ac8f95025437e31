"""gunicorn's threaded worker (gthread), with its connection closes off the main thread.

gthread's main thread runs one select loop for every connection of its process: it
accepts, hands each kept-alive connection whose next request has arrived to the thread
pool, and finishes each request. When a response ends its connection (`Connection:
close`, an error, a body too long to drain), gunicorn closes it "gracefully" (RFC 9112
section 9.6) on that main thread: it half-closes, then waits up to 2 s for the client's
FIN. A client that does not close its end at once (a phone gone off the network, a
client that keeps sockets it is done with) so stops every other connection of the
process for up to 2 s per such close, one after the other: requests already sent on
kept-alive connections wait unanswered with every pool thread idle, new connections
wait unaccepted, and a kept-alive connection whose timeout passed meanwhile is closed
under the request it carries (tests/test_keepalive.py reproduces both).

Here those closes run on a small pool of their own; everything else is gunicorn's.
`gunicorn.conf.py` names this class as `worker_class`.
"""

from __future__ import annotations

from concurrent import futures
from typing import Any

from gunicorn.workers.gthread import ThreadWorker  # type: ignore[import-untyped]

# Threads that wait for clients' FINs (at most 2 s each, gunicorn's linger). More
# lingering closes than this queue up here, holding only their sockets meanwhile.
CLOSING_THREADS = 16


class GracefulThreadWorker(ThreadWorker):
    def init_process(self) -> None:
        self.closer = futures.ThreadPoolExecutor(
            max_workers=CLOSING_THREADS, thread_name_prefix="gunicorn-close"
        )
        super().init_process()  # runs the loop; returns only when the worker stops

    def finish_request(self, conn: Any, fs: futures.Future) -> None:
        """What gunicorn does, except that a connection to close gracefully is handed
        to the closing threads (handle() returns False for it; it catches its errors)."""
        if fs.cancelled() or (fs.exception() is None and fs.result() is False):
            self.nr_conns -= 1
            self.closer.submit(conn.close, graceful=True)
            return
        super().finish_request(conn, fs)

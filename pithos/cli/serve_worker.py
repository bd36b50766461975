"""The gunicorn worker of `pithos serve`: gunicorn's gevent worker, which says when it is full.

A gevent worker serves at most `worker_connections` connections at once (a pool of greenlets);
at the cap it stops accepting and new clients wait, unanswered, in the listen backlog, and
gunicorn says nothing.  This worker counts its open connections and logs one line when it
reaches the cap and one when it is under it again: once per episode, not per connection, and
at most one episode's start every `CAP_LOG_INTERVAL_S`, so a worker that hovers at its cap
cannot flood the log.

Imported by gunicorn (by its dotted name, in the master and in each worker), so gevent is
imported here only as gunicorn's gevent worker imports it.
"""

from __future__ import annotations

import time
from typing import Any

from gunicorn.http import wsgi
from gunicorn.http.errors import InvalidHeader, LimitRequestHeaders
from gunicorn.workers.ggevent import GeventWorker

# The least time between two "at its cap" lines of one worker.
CAP_LOG_INTERVAL_S = 60.0


class SwiftResponse(wsgi.Response):  # type: ignore[misc]
    """gunicorn's response, which keeps a 204's `Content-Length: 0`.  gunicorn drops every
    Content-Length of a 204 (RFC 9110 says a server must not send one); Swift's servers send
    `Content-Length: 0` on theirs, and its clients and functional tests read it.  A zero
    length frames nothing either way: the response still has no body, and the connection is
    kept alive as before.  Any other length on a 204 is still dropped."""

    def start_response(self, status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Any:
        write = super().start_response(status, headers, exc_info)
        if self.status_code == 204 and any(
                k.lower() == "content-length" and v.strip() == "0" for k, v in headers):
            self.headers.append(("Content-Length", "0"))
        return write


class CappedGeventWorker(GeventWorker):  # type: ignore[misc]
    """GeventWorker that logs when its connections reach `worker_connections`, and answers
    with `SwiftResponse`."""

    def init_process(self) -> None:
        # gunicorn makes each response in gunicorn.http.wsgi.create, by that module's name
        # `Response`: there is no setting for it.  Set in the worker only (this module is
        # gunicorn's worker class for `pithos serve`, and nothing else loads it).
        wsgi.Response = SwiftResponse
        super().init_process()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.open_connections = 0
        self._full_since: float | None = None  # the logged episode's start (monotonic)
        self._last_full_log = -CAP_LOG_INTERVAL_S

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        # Each accepted connection runs here, in a greenlet of the pool that holds at most
        # worker_connections: the count is the pool's, and at the cap the server has stopped
        # accepting.  (The hub runs one greenlet at a time: no lock is needed.)
        self.open_connections += 1
        if self.open_connections >= self.worker_connections:
            self._at_cap()
        try:
            super().handle(listener, client, addr)
        finally:
            self.open_connections -= 1
            if self._full_since is not None and self.open_connections < self.worker_connections:
                self.log.warning(
                    "pithos serve: worker %s is under its cap of %d open connections again "
                    "(after %.0f s); it accepts new connections", self.pid,
                    self.worker_connections, time.monotonic() - self._full_since)
                self._full_since = None

    def _at_cap(self) -> None:
        now = time.monotonic()
        if self._full_since is not None or now - self._last_full_log < CAP_LOG_INTERVAL_S:
            return
        self._full_since = self._last_full_log = now
        self.log.warning(
            "pithos serve: worker %s is at its cap of %d open connections "
            "(PITHOS_WORKER_CONNECTIONS); new connections wait unanswered in the listen "
            "backlog until one of these closes (idle and stalled ones are cut off by the "
            "keep-alive and client timeouts)", self.pid, self.worker_connections)

    def handle_error(self, req: Any, client: Any, addr: Any, exc: Exception) -> None:
        # A header over its size limit, or too many of them, is Swift's 400 (its clients
        # and tests expect that), not the 431 gunicorn answers: the same refusal, worded
        # as a bad header.
        if isinstance(exc, LimitRequestHeaders):
            exc = InvalidHeader(str(exc))
        super().handle_error(req, client, addr, exc)

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
from itertools import compress
from operator import itemgetter
from typing import Any

from gunicorn import http, util
from gunicorn.http import message, wsgi
from gunicorn.http.errors import InvalidHeader, LimitRequestHeaders
from gunicorn.workers import ggevent
from gunicorn.workers.ggevent import GeventWorker

from pithos.cli import serve_balance, serve_loop, serve_parse
from pithos.core import gc_tuning

# The least time between two "at its cap" lines of one worker.
CAP_LOG_INTERVAL_S = 60.0


# A first body piece up to this size goes out in one send with the response's head.
COALESCE_BYTES = 64 * 1024
# Response header names found valid: None for most, or their lower-case form and whether
# they are hop-by-hop for Content-Length and the hop-by-hop ones; user metadata names make them
# many, so the table stops growing here.
KNOWN_NAMES_MAX = 4096
_known_names: dict[str, tuple[str, bool] | None] = {}
_name_of, _value_of = itemgetter(0), itemgetter(1)


def send_all(sock: Any, data: bytes) -> None:
    """`sock.sendall(data)` in one send(2) when the socket takes it all, as it does a small
    response: gevent's sendall asks the socket's buffer size (a getsockopt(2)) before every
    send."""
    sent = sock.send(data)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])


_date_of: list[Any] = [-1, ""]  # (second, its Date header value)


def _date_now() -> str:
    now = int(time.time())
    if now != _date_of[0]:
        _date_of[:] = [now, util.http_date(now)]
    return str(_date_of[1])


class SwiftResponse(wsgi.Response):  # type: ignore[misc]
    """gunicorn's response, which keeps a 204's `Content-Length: 0`, and sends a small
    response's head and body together.

    gunicorn drops every Content-Length of a 204 (RFC 9110 says a server must not send one);
    Swift's servers send `Content-Length: 0` on theirs, and its clients and functional tests
    read it.  A zero length frames nothing either way: the response still has no body, and the
    connection is kept alive as before.  Any other length on a 204 is still dropped.

    gunicorn sends the head, then each body piece, each with its own sendall: a small GET
    made two sends (and two getsockopt calls), and on loopback or a VM each send costs the
    receiver's wake-up too (a fifth of a worker's CPU per 4 KiB GET went to the sends).  The
    head and a first piece of at most COALESCE_BYTES now go in one send; the bytes on the
    wire are the same."""

    def start_response(self, status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Any:
        write = super().start_response(status, headers, exc_info)
        if self.status_code == 204 and any(
                k.lower() == "content-length" and v.strip() == "0" for k, v in headers):
            self.headers.append(("Content-Length", "0"))
        return write

    def process_headers(self, headers: list[tuple[str, str]]) -> None:
        """gunicorn's checks and filtering of the application's headers, with what it
        checked once remembered: each name's match of the token grammar (a regex, per name
        and per response, was 7% of a small GET's worker CPU with 15 headers), and the values
        checked by one match over all of them, joined with a space (a character each value
        may hold).  A name not seen yet, a value that is not text, or a value that fails goes
        through gunicorn's own method, which names the bad header as before.

        Each step is one call over all the headers, not Python code per header (~40
        bytecodes each, 13 headers a small GET: a quarter of the worker's HTTP layer): the
        names' look-up, the values' check, whether any value has spaces or tabs to strip (any
        that has goes through the loop of `_keep_each`), the headers kept in order, the
        head's lines of them joined (`_head`).  Only Content-Length is looked at by itself;
        a hop-by-hop name (dropped, or a websocket's Upgrade kept) goes through the loop."""
        try:
            if type(headers) is not list or set(map(type, headers)) - {tuple} or \
                    set(map(len, headers)) - {2}:
                raise TypeError  # (lists, or the wrong lengths: gunicorn's way)
            known = list(map(_known_names.__getitem__, map(_name_of, headers)))
            values = list(map(_value_of, headers))
            joined = " ".join(values)
        except (KeyError, TypeError):
            super().process_headers(headers)
            for name, _ in headers:
                if (len(_known_names) < KNOWN_NAMES_MAX and type(name) is str
                        and message.TOKEN_RE.fullmatch(name)):
                    lname, hoppish = name.lower(), util.is_hoppish(name)
                    _known_names[name] = (lname, hoppish) if hoppish or \
                        lname == "content-length" else None
            return
        # (ASCII from space to '~' is what the value grammar allows of ASCII, but the tab:
        # the regex for a value with a tab or any byte above ASCII.)
        if not (joined.isascii() and joined.isprintable()) and \
                not wsgi.HEADER_VALUE_RE.fullmatch(joined):
            super().process_headers(headers)  # (raises InvalidHeader for the bad one)
            return
        # Values NUL-separated (no value holds a NUL: checked above): one with a space or
        # a tab at either end has something to strip.
        ends = "\0" + "\0".join(values) + "\0"
        if " \0" in ends or "\t\0" in ends or "\0 " in ends or "\0\t" in ends:
            self._keep_each(headers, known)
            return
        for i in compress(range(len(known)), known):  # (the few special names, in order)
            if known[i][1]:  # (a hop-by-hop name, dropped or kept: the loop, in place)
                self._keep_each(headers, known)
                return
            self.response_length = int(values[i])  # (the other: Content-Length, kept)
        self.headers.extend(headers)
        self._lines = (self.headers, len(headers), "\r\n".join(map(": ".join, headers)))

    def _keep_each(self, headers: list[tuple[str, str]],
                   known: list[tuple[str, bool] | None]) -> None:
        """process_headers' work header by header (gunicorn's loop), for values to strip
        or a websocket's Upgrade."""
        kept = self.headers
        for (name, value), special in zip(headers, known, strict=True):
            value = value.strip(" \t")
            if special is not None:
                lname, hoppish = special
                if lname == "content-length":
                    self.response_length = int(value)
                elif hoppish:
                    if lname == "connection":
                        if value.lower() == "upgrade":
                            self.upgrade = True
                    elif lname == "upgrade" and value.lower() == "websocket":
                        kept.append((name, value))
                    continue
            kept.append((name, value))

    def default_headers(self) -> list[str]:
        # gunicorn's, with the Date of the current second formatted once (email.utils'
        # formatdate for every response was 1.5% of a small GET).
        if self.upgrade:
            connection = "upgrade"
        elif self.should_close():
            connection = "close"
        else:
            connection = "keep-alive"
        version = self.req.version
        headers = [f"HTTP/{version[0]}.{version[1]} {self.status}\r\n",
                   f"Server: {self.version}\r\n", f"Date: {_date_now()}\r\n",
                   f"Connection: {connection}\r\n"]
        if self.chunked:
            headers.append("Transfer-Encoding: chunked\r\n")
        return headers

    def _head(self) -> bytes:
        lines = self.default_headers()
        made = getattr(self, "_lines", None)
        if made is not None and made[0] is self.headers and made[1] == len(self.headers):
            # The lines process_headers joined, for these very headers (gunicorn drops a
            # 204's or 304's Content-Length into a new list; headers kept from an earlier
            # start_response make the counts differ): made one by one otherwise.
            if made[1]:
                lines.extend((made[2], "\r\n"))
        else:
            lines.extend([f"{k}: {v}\r\n" for k, v in self.headers])
        lines.append("\r\n")
        return "".join(lines).encode("latin-1")

    def send_headers(self) -> None:
        if self.headers_sent:
            return
        send_all(self.sock, self._head())
        self.headers_sent = True

    def write(self, arg: bytes) -> None:
        # (`_omits_body` is gunicorn 26's; without it, gunicorn's own write for all.)
        if (self.headers_sent or self.chunked or getattr(self, "_omits_body", True)
                or self.response_length is None or type(arg) is not bytes
                or not 0 < len(arg) <= min(COALESCE_BYTES, self.response_length)):
            # Later pieces, framed or bodiless responses, large or odd ones: gunicorn's own
            # write (its checks and its framing).
            super().write(arg)
            return
        head = self._head()
        self.headers_sent = True
        self.sent = len(arg)
        send_all(self.sock, head + arg)


def freeze_config(cfg: Any) -> None:
    """Each setting's value as a plain attribute of this worker's `cfg`.  gunicorn reads its
    settings through `Config.__getattr__` (a dict look-up and a method call), some 26 times
    per request; a worker's settings never change (a reload starts new workers), so they
    are read once here, in the worker, after the fork.  With them fixed, whether a peer
    address may set forwarding headers is fixed too: gunicorn parses the peer's address and
    matches it against `forwarded_allow_ips` for every request (3% of a small GET); the
    answer is kept per address."""
    for name, setting in cfg.settings.items():
        cfg.__dict__[name] = setting.get()
    match = getattr(message, "_ip_in_allow_list", None)
    if match is None:  # (a gunicorn that matches addresses otherwise: left as it is)
        return
    forwarded, proxy = cfg.forwarded_allow_ips, cfg.proxy_allow_ips
    answers: dict[tuple[str, bool], bool] = {}

    def ip_in_allow_list(ip: str, allow_list: Any, networks: Any) -> bool:
        if allow_list is not forwarded and allow_list is not proxy:
            return bool(match(ip, allow_list, networks))  # (not a frozen list)
        key = (ip, allow_list is forwarded)
        found = answers.get(key)
        if found is None:
            found = bool(match(ip, allow_list, networks))
            if len(answers) < KNOWN_NAMES_MAX:
                answers[key] = found
        return found

    message._ip_in_allow_list = ip_in_allow_list


def use_swift_parser() -> None:
    """gunicorn makes each connection's parser by `gunicorn.http.RequestParser` (no setting
    for it): ours parses a plain request's head at less cost, and hands any other to
    gunicorn's (pithos.cli.serve_parse).  Not on a gunicorn older than the one it was made
    for: that one's parser serves every request."""
    if serve_parse.supported():
        http.RequestParser = serve_parse.SwiftRequestParser


def keep_base_environ(cfg: Any) -> dict[str, Any]:
    """gunicorn starts each request's environ from `base_environ(cfg)`, a new dict with a new
    `wsgi.errors` writer, which looks its loggers up by name (`logging.getLogger`, twice) for
    every request: 2-3% of a small GET.  With the worker's settings frozen the dict is the
    same for each request: it is built once and copied."""
    made = wsgi.base_environ
    base = made(cfg)

    def base_environ(c: Any) -> dict[str, Any]:
        return dict(base) if c is cfg else dict(made(c))

    wsgi.base_environ = base_environ
    return base


class CappedGeventWorker(GeventWorker):  # type: ignore[misc]
    """GeventWorker that logs when its connections reach `worker_connections`, and answers
    with `SwiftResponse`."""

    def init_process(self) -> None:
        # gunicorn makes each response in gunicorn.http.wsgi.create, by that module's name
        # `Response`: there is no setting for it.  Set in the worker only (this module is
        # gunicorn's worker class for `pithos serve`, and nothing else loads it).
        wsgi.Response = SwiftResponse
        freeze_config(self.cfg)
        base = keep_base_environ(self.cfg)
        use_swift_parser()
        # A plain connection's keep-alive loop (pithos.cli.serve_loop), with what it decides
        # once for the worker.
        self.plan = serve_loop.Plan(self, base)
        # Connections spread evenly over the workers (serve_balance): gunicorn makes its
        # listener's server by ggevent's name `StreamServer`, as it makes responses above.
        self.balancer = serve_balance.Balancer(getattr(self, "balance_slot", None),
                                               self.worker_connections)
        serve_balance.BalancedStreamServer.balancer = self.balancer
        ggevent.StreamServer = serve_balance.BalancedStreamServer
        super().init_process()

    def load_wsgi(self) -> None:
        super().load_wsgi()
        # The app is loaded, requests not yet taken (gunicorn calls `run` next).
        gc_tuning.tune_for_throughput()

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
            if self.plan.plain(client, addr):
                serve_loop.handle(self, self.plan, listener, client, addr)
            else:
                super().handle(listener, client, addr)
        finally:
            self.open_connections -= 1
            self.balancer.closed()
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

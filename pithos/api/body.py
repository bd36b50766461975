"""Reading a request body straight from the socket under gunicorn.

gunicorn's body reader stacks three buffers (Body, LengthReader's Unreader, BytesIO) and copies
every byte through each of them on the worker's event loop: for a 4 MiB upload that was most
of the loop's CPU, more than the MD5 and BLAKE3 of the same bytes on the thread pool.  Under
gunicorn, a body of known length is read here with `recv_into` into the buffer that is handed
on, after taking what gunicorn has already buffered; gunicorn's own counters are kept exact, so
it finds the connection where it expects it for the next request (keep-alive, pipelining).
Any other server or body (chunked, or gunicorn's internals not as expected) is read through the
WSGI input unchanged.

Pieces of the size the uploads read (`PieceBuffers`) are received into reused buffers: a fresh
1 MiB bytearray is a zero fill plus, for an allocation that size, new pages from the kernel
and an munmap when it dies, on the event loop for every piece.  They are anonymous mappings,
so page-aligned: the block store can write a piece with O_DIRECT straight from one.

A body that stops arriving must not hold its upload (its lease, its pieces, its threads)
forever: given a client timeout, every read waits at most that long for the client's next
bytes (a timeout on the socket, set for the read and put back after it, so it bounds each
receive, never the whole upload: a slow client that keeps sending is never cut off), then
raises ClientTimeout.  Where that body ended is unknown (a chunked one especially), so the
connection is then closed once the answer is sent: its reading side is shut down, and a chunked
request is marked to close.
"""

from __future__ import annotations

import inspect
import mmap
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from typing import Any, BinaryIO, TypeVar

from pithos.core.errors import ClientTimeout, IncompleteBody, InvalidArgument
from pithos.core.locks import native_lock, waits_cooperatively

T = TypeVar("T")


class PieceBuffers:
    """Page-aligned receive buffers of one size, handed out again once nothing else refers
    to them.

    A body's pieces live on after read() returns: queued for the MD5, in a block being hashed
    and written on the pool, in a small block staged for a batch.  Instead of each of those
    giving its piece back, a buffer is reused only when its reference count shows that the
    pool alone holds it; whatever still uses it (a memoryview, a C extension's buffer view, a
    queue) holds a reference.  At most `keep` buffers are kept; when all of them are in use a
    read gets a fresh one, which is freed as usual."""

    def __init__(self, size: int, keep: int) -> None:
        self.size = size
        self.keep = keep
        self._buffers: list[mmap.mmap] = []
        # One taker at a time (two could see the same idle); a native lock, never held
        # across a yield (pithos/core/locks.py).
        self._lock = native_lock()

    def take(self) -> mmap.mmap:
        with self._lock:
            if _IDLE_REFS:
                for buf in self._buffers:
                    if sys.getrefcount(buf) == _IDLE_REFS:
                        return buf
            buf = mmap.mmap(-1, self.size)
            if _IDLE_REFS and len(self._buffers) < self.keep:
                self._buffers.append(buf)
            return buf

    def __len__(self) -> int:
        return len(self._buffers)


def _idle_refs() -> int:
    """The reference count that `take` sees for a buffer held by the pool alone (its list's,
    the loop variable's and getrefcount's own argument), measured the same way; 0 where
    reference counts are not available (then nothing is reused)."""
    if not hasattr(sys, "getrefcount"):
        return 0
    for buf in [bytearray(1)]:
        return sys.getrefcount(buf)
    return 0


_IDLE_REFS = _idle_refs()


def request_body(env: dict[str, Any], pieces: PieceBuffers | None = None,
                 timeout_s: float | None = None) -> BinaryIO:
    """The request body as a file whose read(n) returns n bytes unless it ends first; reads of
    `pieces.size` bytes may return a reused buffer (see PieceBuffers).  With `timeout_s`, a
    read that waits that long for the client's next bytes raises ClientTimeout."""
    stream: BinaryIO = env["wsgi.input"]
    sock = env.get("gunicorn.socket")
    fast = SocketBody.wrap(stream, sock, pieces, timeout_s)
    if fast is not None:
        return fast  # type: ignore[return-value]
    return timed_body(env, timeout_s)


def timed_body(env: dict[str, Any], timeout_s: float | None) -> BinaryIO:
    """The WSGI input, each read bounded by `timeout_s` (see TimedBody) when the server gives
    the connection's socket; else the WSGI input itself.  A chunked body's parse shares the
    event loop (`_share_the_loop`)."""
    stream: BinaryIO = env["wsgi.input"]
    sock = env.get("gunicorn.socket")
    _share_the_loop(stream)
    if timeout_s is None or not hasattr(sock, "settimeout"):
        return stream
    return TimedBody(stream, sock, timeout_s)  # type: ignore[return-value]


def _share_the_loop(stream: Any) -> None:
    """gunicorn parses a chunked body on the event loop, chunk after chunk, ~15 us each
    whatever its size; a client sending one-byte chunks as fast as it can never makes a read
    wait on the socket, so nothing else on the loop ran while it sent (a GET beside it waited
    8 s).  Its parse now lets the loop run others every CHUNKS_SLICE_S of its own work: the
    reader's chunk generator is wrapped (`_sliced`).  Only under gevent, on the loop's
    thread (elsewhere a body is read on a thread of its own), and only gunicorn's chunked
    reader (its `parser`, a generator of the chunks' bytes)."""
    reader = getattr(stream, "reader", None)
    parser = getattr(reader, "parser", None)
    if inspect.isgenerator(parser) and parser.gi_code is not _sliced.__code__ and \
            _on_the_loop():  # (once: BodyTimeout and the handler may both ask)
        reader.parser = _sliced(parser)  # type: ignore[union-attr]


def _on_the_loop() -> bool:
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover (gevent is a dependency)
        return False
    return bool(monkey.is_module_patched("socket")) and waits_cooperatively()


# How long a chunked body's parse runs before it lets the loop run others, and how many
# chunks it parses between looks at the clock.
CHUNKS_SLICE_S = 0.005
_CHUNKS_PER_LOOK = 64


def _sliced(parser: Iterator[bytes]) -> Iterator[bytes]:
    from gevent import sleep

    clock = time.monotonic
    since = clock()
    count = 0
    for piece in parser:
        yield piece
        count += 1
        if count == _CHUNKS_PER_LOOK:
            count = 0
            if clock() - since >= CHUNKS_SLICE_S:
                sleep(0)  # (the others that are ready run; then this parse goes on)
                since = clock()


def _end_connection(stream: Any, sock: Any) -> None:
    """After a body stopped arriving: no further request may be read from its connection.
    gunicorn's chunked reader gave up mid-chunk (it would next find the body "ended" and parse
    the rest as a request), so its request is marked to close; and the socket's reading side
    is shut down, so that gunicorn, draining a Content-Length body before the next request,
    finds its end at once instead of waiting out the keep-alive for bytes that may never come.
    The answer is still sent."""
    request = getattr(getattr(stream, "reader", None), "req", None)
    if request is not None and hasattr(request, "must_close"):
        request.must_close = True
    with suppress(OSError, AttributeError):
        sock.shutdown(socket.SHUT_RD)


def refuse_body(env: dict[str, Any]) -> None:
    """The answer refuses a request whose body it will not read, and whose framing cannot be
    trusted (no Content-Length nor chunked: gunicorn would read to the end of the connection;
    a transfer coding we do not take): the connection ends after the answer, which is sent at
    once instead of after a body that may never end."""
    _end_connection(env.get("wsgi.input"), env.get("gunicorn.socket"))


def _timed(sock: Any, timeout_s: float, stream: Any, read: Callable[[], T]) -> T:
    """`read()` with every receive from `sock` bounded by `timeout_s`; ClientTimeout if one
    waits that long (the connection then closes after the answer)."""
    prior = sock.gettimeout()
    sock.settimeout(timeout_s)
    try:
        return read()
    except TimeoutError:  # (socket.timeout)
        _end_connection(stream, sock)
        raise ClientTimeout(f"no byte of the request body came for {timeout_s:g} s") from None
    except Exception as exc:
        if _ended_early(exc):
            # The connection ended mid-body (a chunked one: a Content-Length body cut short
            # is SocketBody's IncompleteBody too).
            _end_connection(stream, sock)
            raise IncompleteBody("the request body ended before its last chunk") from None
        if not _framing_error(exc):
            raise
        # A chunk size that is no number, a chunk without its CRLF: the body's end is
        # unknown, so the connection carries nothing more.
        _end_connection(stream, sock)
        raise InvalidArgument(f"the request body's chunked framing is broken ({exc})") from None
    finally:
        with suppress(OSError):
            sock.settimeout(prior)


def _ended_early(exc: Exception) -> bool:
    """Whether gunicorn's body reader found the connection's end before the body's."""
    try:
        from gunicorn.http.errors import NoMoreData
    except ImportError:
        return False
    return isinstance(exc, NoMoreData)


def _framing_error(exc: Exception) -> bool:
    """Whether gunicorn's body reader gave up on the request's framing."""
    try:
        from gunicorn.http import errors
    except ImportError:
        return False
    # (The chunk errors are OSErrors, not ParseExceptions, in gunicorn.)
    kinds = tuple(getattr(errors, name) for name in (
        "ParseException", "InvalidChunkSize", "ChunkMissingTerminator", "InvalidChunkExtension")
        if hasattr(errors, name))
    return isinstance(exc, kinds)


class TimedBody:
    """Any request body read through the server's reader (chunked, or not SocketBody's),
    each read bounded by the client timeout (see the module's docstring)."""

    def __init__(self, stream: Any, sock: Any, timeout_s: float) -> None:
        self._stream = stream
        self._sock = sock
        self._timeout_s = timeout_s

    def read(self, size: int | None = -1) -> bytes:
        return bytes(_timed(self._sock, self._timeout_s, self._stream,
                            lambda: self._stream.read(size)))

    def readline(self, size: int | None = -1) -> bytes:
        return bytes(_timed(self._sock, self._timeout_s, self._stream,
                            lambda: self._stream.readline(size)))

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        return _timed(self._sock, self._timeout_s, self._stream,
                      lambda: self._stream.readlines(hint))

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line


class SocketBody:
    """A Content-Length body of a gunicorn request, read from its socket."""

    def __init__(self, body: Any, reader: Any, unreader: Any, sock: Any,
                 pieces: PieceBuffers | None = None, timeout_s: float | None = None) -> None:
        self._body = body          # gunicorn.http.body.Body: its .buf is already counted
        self._reader = reader      # LengthReader: .length is what the socket still owes
        self._unreader = unreader  # SocketUnreader: .buf holds bytes received, not yet taken
        self._sock = sock
        self._pieces = pieces
        self._timeout_s = timeout_s  # for each receive (the client timeout), or none

    @classmethod
    def wrap(cls, stream: Any, sock: Any, pieces: PieceBuffers | None = None,
             timeout_s: float | None = None) -> SocketBody | None:
        try:
            from gunicorn.http.body import Body, LengthReader
            from gunicorn.http.unreader import SocketUnreader
        except ImportError:
            return None
        # (gevent's socket is not a subclass of the standard one: ask for what is used)
        if type(stream) is not Body or not hasattr(sock, "recv_into"):
            return None
        reader = getattr(stream, "reader", None)
        if type(reader) is not LengthReader:
            return None
        unreader = getattr(reader, "unreader", None)
        if type(unreader) is not SocketUnreader or getattr(unreader, "sock", None) is not sock:
            return None
        if not all(hasattr(x, "buf") for x in (stream, unreader)) or \
                not isinstance(getattr(reader, "length", None), int):
            return None
        if timeout_s is not None and not hasattr(sock, "settimeout"):
            return None
        return cls(stream, reader, unreader, sock, pieces, timeout_s)

    @staticmethod
    def _take(holder: Any, out: memoryview, limit: int) -> int:
        """Move up to `limit` bytes from a gunicorn BytesIO buffer into `out`."""
        held = holder.buf.getvalue()
        if not held:
            return 0
        n = min(len(held), limit, len(out))
        out[:n] = held[:n]
        holder.buf = type(holder.buf)()
        holder.buf.write(held[n:])
        return n

    def read(self, size: int = -1) -> bytes | bytearray | mmap.mmap:
        if size is None or size < 0:
            size = len(self._body.buf.getvalue()) + self._reader.length
        pooled = self._pieces is not None and size == self._pieces.size
        out = self._pieces.take() if pooled else bytearray(size)  # type: ignore[union-attr]
        view = memoryview(out)
        filled = self._take(self._body, view, size)
        if filled < size and self._reader.length > 0:
            got = self._take(self._unreader, view[filled:], self._reader.length)
            self._reader.length -= got
            filled += got
        try:
            if filled < size and self._reader.length > 0:
                if self._timeout_s is None:
                    filled = self._receive(view, filled, size)
                else:
                    filled = _timed(self._sock, self._timeout_s, self._body,
                                    lambda: self._receive(view, filled, size))
        finally:
            view.release()
        if filled < size:
            if pooled:
                return out[:filled]  # (a copy: the pooled buffer keeps its size)
            del out[filled:]
        return out

    def _receive(self, view: memoryview, filled: int, size: int) -> int:
        """Receive into `view[filled:size]` until full or the body ends; the new fill."""
        try:
            while filled < size and self._reader.length > 0:
                want = min(size - filled, self._reader.length)
                got = self._sock.recv_into(view[filled:filled + want], want)
                if not got:
                    break  # the client went away: a short body, the caller says so
                self._reader.length -= got
                filled += got
        except BaseException:
            self._body.failed = True  # where the next request starts is unknown now
            raise
        return filled

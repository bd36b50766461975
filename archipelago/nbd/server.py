"""The NBD server: every volume and snapshot of a data directory, exported by name.

Concurrency: one thread per connection, requests of a connection handled in order, replies
batched into one `sendmsg` whenever the connection has no complete request waiting (measured
against asyncio: see docs/volumes.md).

What a client may cost is bounded (`Limits`): at most `max_connections` connections (beyond,
new ones are closed at once), a handshake finished within `handshake_timeout_s`, and buffers
borrowed from the server's two pools (`buffers.BufferPool`) only while a request needs them: an
idle connection holds none, so the buffer memory of the whole server stays under
`buffer_memory_bytes`.  A connection idle between requests is never timed out (qemu keeps one
open for as long as its guest runs), but one whose request stops moving half-way (a header,
a payload, a reply the client does not read) ends after `stall_timeout_s`.

All connections to one export share one open `Volume` (and so one lease, one bitmap): FLUSH on
any connection makes every connection's acknowledged writes durable, hence
NBD_FLAG_CAN_MULTI_CONN.

Exports are looked up in the head store at each option, so a volume created, cloned or deleted
while the server runs appears or disappears at once.  A volume is opened (its lease taken) when
its first connection enters transmission and closed (flushed, lease released) when its last
connection ends, so the CLI can snapshot or delete it between uses.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from archipelago import overlay
from archipelago.heads import Head
from archipelago.nbd import protocol as p
from archipelago.nbd.buffers import BufferPool
from archipelago.overlay import recv_spin
from archipelago.volume import Volume
from archipelago.volumes import Volumes
from pithos.core.errors import NotFound, PithosError

log = logging.getLogger("archipelago.nbd")

_OPT_HEADER = struct.Struct(">QII")
_OPT_REPLY = struct.Struct(">QIII")
_INFO_EXPORT = struct.Struct(">HQH")
_INFO_BLOCK_SIZE = struct.Struct(">HIII")
# Option payloads larger than this are refused (names are at most 4096 bytes).
_MAX_OPTION = 64 * 1024
# The handshake reads into a small buffer of the connection's own, grown for a long option.
_HANDSHAKE_BUFFER = 4096
# A connection in transmission parses request headers and WRITE payloads up to this size in a
# receive buffer borrowed from the server while it has bytes to read (given back whenever it
# sleeps); larger payloads, and READ data above _SMALL_READ, use a buffer of the data pool.
_RECV_BUFFER = 256 * 1024
_SMALL_READ = 64 * 1024
# Flush batched replies when they reach this many bytes even if more requests wait.
_SEND_BATCH = 256 * 1024
# Parts one sendmsg takes (IOV_MAX): many small replies batched are sent in several calls.
_IOV_MAX = 1024
# Before sleeping in recv for the next request, poll for this long (GIL released): waking
# an idle vCPU costs more than a small request's whole work, so a client that answers within
# this time gets its next request served without that cost (measured: 4 KiB QD1 IOPS about 2x).
# After a sleep longer than _SPIN_AGAIN_NS (an idle client) spinning stops until a short one.
_SPIN_NS = 100_000
_SPIN_AGAIN_NS = 2_000_000
_EMPTY = bytearray()  # the receive buffer of a connection that holds none
# At the connection limit, say so at most this often (with how many were closed meanwhile).
_NOTICE_S = 10.0
# accept() errors that pass (out of descriptors or memory for a moment, a client that left).
_ACCEPT_AGAIN = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.ECONNABORTED}
_ALLOWED_FLAGS = {
    p.CMD_READ: p.CMD_FLAG_FUA,
    p.CMD_WRITE: p.CMD_FLAG_FUA,
    p.CMD_FLUSH: p.CMD_FLAG_FUA,
    p.CMD_TRIM: p.CMD_FLAG_FUA,
    p.CMD_WRITE_ZEROES: p.CMD_FLAG_FUA | p.CMD_FLAG_NO_HOLE,
    p.CMD_DISC: 0xFFFF,
}


class Hangup(Exception):
    """The connection must end (client gone, or it broke the protocol)."""


class HandshakeTimeout(Hangup):
    """The client did not finish its handshake in time."""


@dataclass(frozen=True)
class Limits:
    """What clients may cost a server (docs/volumes.md, "Limits")."""

    # From accept to the start of transmission; a client that sends nothing, or stalls
    # anywhere in the handshake, is disconnected after this long.
    handshake_timeout_s: float = 10.0
    # Connections at once (handshaking or not); beyond, new ones are closed at once.
    max_connections: int = 256
    # Receive buffers (a quarter: _RECV_BUFFER each, one per busy connection) and request
    # data (READ replies, WRITE payloads; one request takes up to 32 MiB).
    buffer_memory_bytes: int = 256 * 1024 * 1024
    # A request whose bytes stop moving (to or from the client) this long ends its connection.
    stall_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if not self.handshake_timeout_s > 0 or not self.stall_timeout_s > 0:
            raise ValueError("timeouts must be positive")
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if self.buffer_memory_bytes < 64 * 1024 * 1024:
            raise ValueError("buffer memory must be at least 64 MiB (one request takes 32)")


class Exports:
    """Open volumes shared by the connections that use them."""

    def __init__(self, volumes: Volumes) -> None:
        self.volumes = volumes
        self._open: dict[str, tuple[Volume, int]] = {}
        self._lock = threading.Lock()

    def lookup(self, name: str) -> Head:
        try:
            return self.volumes.get(name)
        except (NotFound, PithosError, UnicodeError):
            raise NotFound(f"no export named {name!r}") from None

    def names(self) -> list[str]:
        return self.volumes.heads.names()

    def attach(self, name: str) -> Volume:
        with self._lock:
            entry = self._open.get(name)
            if entry is not None:
                self._open[name] = (entry[0], entry[1] + 1)
                return entry[0]
            vol = self.volumes.open(name)
            self._open[name] = (vol, 1)
            return vol

    def detach(self, vol: Volume) -> None:
        with self._lock:
            held, count = self._open[vol.name]
            if count > 1:
                self._open[vol.name] = (held, count - 1)
                return
            del self._open[vol.name]
            vol.close()

    def close_all(self) -> None:
        with self._lock:
            for vol, _ in self._open.values():
                with contextlib.suppress(Exception):
                    vol.close()
            self._open.clear()


def transmission_flags(head: Head) -> int:
    flags = (p.FLAG_HAS_FLAGS | p.FLAG_SEND_FLUSH | p.FLAG_SEND_FUA | p.FLAG_SEND_TRIM
             | p.FLAG_SEND_WRITE_ZEROES | p.FLAG_CAN_MULTI_CONN)
    if head.readonly:
        flags |= p.FLAG_READ_ONLY
    return flags


class Connection:
    """One client: handshake, then requests until it disconnects.

    Buffers: the handshake reads into a small one of its own; in transmission the receive
    buffer is borrowed from `recv_pool` while there are bytes to read and given back before
    every sleep between requests, and large READ replies and WRITE payloads use a buffer of
    `data_pool` for one request.  A connection never waits for a pool while holding a buffer
    of that pool (replies are sent first), so the pools cannot deadlock."""

    def __init__(self, sock: socket.socket, exports: Exports, limits: Limits,
                 recv_pool: BufferPool, data_pool: BufferPool) -> None:
        self.sock = sock
        self.exports = exports
        self.limits = limits
        self.recv_pool = recv_pool
        self.data_pool = data_pool
        self.buf = bytearray(_HANDSHAKE_BUFFER)
        self.view = memoryview(self.buf)
        self.pooled = False  # self.buf is recv_pool's
        self.start = 0
        self.end = 0
        self.out: list[bytes | bytearray | memoryview] = []
        self.out_bytes = 0
        self.held: list[bytearray] = []  # data_pool buffers in self.out, given back once sent
        self.no_zeroes = False
        self.spin = False
        self.in_handshake = True
        self.deadline = time.monotonic() + limits.handshake_timeout_s
        self.poller: select.poll | None = None

    # -- byte plumbing -----------------------------------------------------------------------

    def arm(self) -> None:
        """In the handshake, bound the next wait for the client by the time it has left."""
        if self.in_handshake:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise HandshakeTimeout(self.timeout_message())
            self.sock.settimeout(left)

    def timeout_message(self) -> str:
        return f"handshake not finished within {self.limits.handshake_timeout_s:g} s"

    def lost(self, what: str, exc: OSError) -> Hangup:
        if self.in_handshake and isinstance(exc, TimeoutError):
            return HandshakeTimeout(self.timeout_message())
        if isinstance(exc, BlockingIOError):  # SO_RCVTIMEO / SO_SNDTIMEO ran out
            return Hangup(f"{what} stalled for {self.limits.stall_timeout_s:g} s")
        return Hangup(f"{what} failed: {exc}")

    def recv(self, mv: memoryview) -> int:
        self.arm()
        try:
            got = self.sock.recv_into(mv)
        except OSError as exc:
            raise self.lost("receive", exc) from None
        if not got:
            raise Hangup("client closed the connection")
        return got

    def flush_out(self) -> None:
        out, self.out, self.out_bytes = self.out, [], 0
        try:
            while out:
                self.arm()
                try:
                    sent = self.sock.sendmsg(out[:_IOV_MAX])
                except OSError as exc:
                    raise self.lost("send", exc) from None
                while out and sent >= len(out[0]):
                    sent -= len(out[0])
                    out.pop(0)
                if out and sent:
                    out[0] = memoryview(out[0])[sent:]
        finally:
            self.give_back()

    def give_back(self) -> None:
        """Return the data buffers of replies sent (or never to be sent)."""
        while self.held:
            self.data_pool.put(self.held.pop())

    def send(self, *parts: bytes | bytearray | memoryview) -> None:
        self.out.extend(parts)
        self.out_bytes += sum(len(x) for x in parts)
        if self.out_bytes >= _SEND_BATCH:
            self.flush_out()

    def fill(self, n: int) -> None:
        """Make `n` bytes available at `start` (n <= _RECV_BUFFER, or _MAX_OPTION + 16 in
        the handshake)."""
        if self.end - self.start >= n:
            return
        self.flush_out()  # about to wait for the client: it must have our replies first
        if len(self.buf) < n:
            self.grow(n)
        if self.start:
            left = self.end - self.start
            self.buf[:left] = self.buf[self.start:self.end]
            self.start, self.end = 0, left
        while self.end - self.start < n:
            if self.end == self.start and not self.in_handshake:
                self.end += self.recv_next()
            else:
                self.end += self.recv(self.view[self.end:])

    def recv_next(self) -> int:
        """Receive between requests (nothing pending): wait busy for a moment if the client is
        busy (see _SPIN_NS), else sleep until it sends, holding no buffer."""
        if self.spin and self.pooled:
            try:
                got: int = recv_spin(self.sock, self.view, _SPIN_NS)
            except OSError as exc:
                raise self.lost("receive", exc) from None
            if got > 0:
                return got
            if got == 0:
                raise Hangup("client closed the connection")
        t0 = time.perf_counter_ns()
        self.start = self.end = 0
        self.drop_buffer()
        assert self.poller is not None
        self.poller.poll()  # no timeout: an idle client is a legitimate one
        self.grow(1)
        got = self.recv(self.view)
        # A client that keeps us waiting long is idle: no spinning until it is busy.
        self.spin = time.perf_counter_ns() - t0 < _SPIN_AGAIN_NS
        return got

    def grow(self, n: int) -> None:
        """Replace the buffer by one that holds `n` bytes, keeping the bytes pending."""
        if self.in_handshake:
            new = bytearray(max(n, 2 * len(self.buf)))
        else:
            new = self.recv_pool.get(_RECV_BUFFER)
        pending = self.end - self.start
        new[:pending] = self.buf[self.start:self.end]
        self.drop_buffer()
        self.buf, self.view, self.pooled = new, memoryview(new), not self.in_handshake
        self.start, self.end = 0, pending

    def drop_buffer(self) -> None:
        """Let go of the receive buffer (its pending bytes too)."""
        if self.pooled:
            self.recv_pool.put(self.buf)
        self.buf, self.view, self.pooled = _EMPTY, memoryview(_EMPTY), False

    def take(self, n: int) -> memoryview:
        """The next `n` bytes (valid until the next call; n as for `fill`)."""
        self.fill(n)
        mv = self.view[self.start:self.start + n]
        self.start += n
        return mv

    def data_buffer(self, n: int) -> bytearray:
        """A buffer of the data pool for one request (give it back, or to `held`)."""
        buf = self.data_pool.try_get(n)
        if buf is None:
            self.flush_out()  # never wait while holding buffers of replies not yet sent
            buf = self.data_pool.get(n)
        return buf

    def payload(self, n: int) -> tuple[memoryview, bytearray | None]:
        """A WRITE's `n` bytes, and the data pool's buffer holding them (None: they are in the
        receive buffer, valid until the next call)."""
        if n <= _RECV_BUFFER:
            return self.take(n), None
        buf = self.data_buffer(n)
        try:
            mv = memoryview(buf)[:n]
            have = self.end - self.start  # less than n: at most a receive buffer
            mv[:have] = self.view[self.start:self.end]
            self.start = self.end = 0
            self.flush_out()  # about to wait for the client
            while have < n:
                have += self.recv(mv[have:])
        except BaseException:
            self.data_pool.put(buf)
            raise
        return mv, buf

    # -- handshake ---------------------------------------------------------------------------

    def reply(self, option: int, kind: int, data: bytes = b"") -> None:
        self.send(_OPT_REPLY.pack(p.OPT_REPLY_MAGIC, option, kind, len(data)) + data)

    def handshake(self) -> Volume | None:
        """Negotiate; returns the volume to serve, None when the client aborted."""
        self.send(p.NBDMAGIC + p.IHAVEOPT + struct.pack(">H", p.FLAG_FIXED_NEWSTYLE
                                                              | p.FLAG_NO_ZEROES))
        (client_flags,) = struct.unpack(">I", self.take(4))
        if client_flags & ~(p.FLAG_C_FIXED_NEWSTYLE | p.FLAG_C_NO_ZEROES):
            raise Hangup(f"unknown client flags {client_flags:#x}")
        self.no_zeroes = bool(client_flags & p.FLAG_C_NO_ZEROES)
        while True:
            magic, option, length = _OPT_HEADER.unpack(self.take(_OPT_HEADER.size))
            if magic != p.IHAVEOPT_INT:
                raise Hangup("bad option magic")
            if length > _MAX_OPTION:
                raise Hangup(f"option of {length} bytes")
            data = bytes(self.take(length))
            if option == p.OPT_EXPORT_NAME:
                return self.export_name(data)
            if option == p.OPT_ABORT:
                self.reply(option, p.REP_ACK)
                self.flush_out()
                return None
            if option == p.OPT_LIST:
                self.opt_list(data)
            elif option in (p.OPT_INFO, p.OPT_GO):
                vol = self.opt_info(option, data)
                if vol is not None:
                    return vol
            else:
                self.reply(option, p.REP_ERR_UNSUP, b"option not supported")

    def export_name(self, data: bytes) -> Volume:
        try:
            head = self.exports.lookup(data.decode())
            vol = self.exports.attach(head.name)
        except (PithosError, UnicodeError) as exc:
            raise Hangup(f"export refused: {exc}") from None  # EXPORT_NAME cannot fail politely
        self.send(struct.pack(">QH", vol.size, transmission_flags(vol.head)))
        if not self.no_zeroes:
            self.send(bytes(124))
        return vol

    def opt_list(self, data: bytes) -> None:
        if data:
            self.reply(p.OPT_LIST, p.REP_ERR_INVALID, b"LIST takes no data")
            return
        for name in self.exports.names():
            raw = name.encode()
            self.reply(p.OPT_LIST, p.REP_SERVER, struct.pack(">I", len(raw)) + raw)
        self.reply(p.OPT_LIST, p.REP_ACK)

    def opt_info(self, option: int, data: bytes) -> Volume | None:
        if len(data) < 6:
            self.reply(option, p.REP_ERR_INVALID, b"short INFO/GO request")
            return None
        (name_len,) = struct.unpack_from(">I", data)
        if 4 + name_len + 2 > len(data):
            self.reply(option, p.REP_ERR_INVALID, b"bad name length")
            return None
        raw_name = data[4:4 + name_len]
        (count,) = struct.unpack_from(">H", data, 4 + name_len)
        if len(data) != 4 + name_len + 2 + 2 * count:
            self.reply(option, p.REP_ERR_INVALID, b"bad information request count")
            return None
        try:
            head = self.exports.lookup(raw_name.decode())
        except (NotFound, UnicodeError):
            self.reply(option, p.REP_ERR_UNKNOWN, b"no such export: " + raw_name[:200])
            return None
        vol = None
        if option == p.OPT_GO:
            try:
                vol = self.exports.attach(head.name)
                head = vol.head
            except PithosError as exc:
                self.reply(option, p.REP_ERR_POLICY, str(exc).encode()[:1000])
                return None
        self.reply(option, p.REP_INFO,
                   _INFO_EXPORT.pack(p.INFO_EXPORT, head.size, transmission_flags(head)))
        self.reply(option, p.REP_INFO, _INFO_BLOCK_SIZE.pack(
            p.INFO_BLOCK_SIZE, p.MIN_BLOCK, p.PREFERRED_BLOCK, p.MAX_BLOCK))
        self.reply(option, p.REP_ACK)
        return vol

    # -- transmission ------------------------------------------------------------------------

    def enter_transmission(self) -> None:
        """The handshake is over: no deadline any more (an idle client may stay), but a stall
        timeout on every receive and send of a request (an idle wait is a `poll` instead)."""
        self.in_handshake = False
        self.sock.settimeout(None)
        stall = self.limits.stall_timeout_s
        timeval = struct.pack("ll", int(stall), int(stall % 1 * 1_000_000))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
        self.poller = select.poll()
        self.poller.register(self.sock, select.POLLIN)
        if self.end > self.start:
            self.grow(_RECV_BUFFER)  # a client that sent its first request early
        else:
            self.drop_buffer()
        self.spin = True

    def serve(self, vol: Volume) -> None:
        self.enter_transmission()
        reply = overlay.simple_reply
        parse = overlay.parse_request
        size = vol.size
        while True:
            try:
                flags, cmd, handle, offset, length = parse(self.take(28))
            except ValueError as exc:
                self.flush_out()  # the requests before it still get their replies
                raise Hangup(str(exc)) from None
            if cmd == p.CMD_READ:
                if flags & ~p.CMD_FLAG_FUA or length > p.MAX_BLOCK or offset + length > size:
                    self.send(reply(p.EINVAL, handle))
                    continue
                pooled = self.data_buffer(length) if length > _SMALL_READ else None
                data = memoryview(bytearray(length) if pooled is None else pooled)[:length]
                try:
                    vol.read_into(data, offset)
                except Exception as exc:
                    if pooled is not None:
                        self.data_pool.put(pooled)
                    self.send(reply(self.error(exc, "read"), handle))
                    continue
                if pooled is not None:
                    self.held.append(pooled)
                self.send(reply(0, handle), data)
            elif cmd == p.CMD_WRITE:
                if length > p.MAX_BLOCK:
                    self.flush_out()
                    raise Hangup(f"write of {length} bytes")  # its payload cannot be trusted
                payload, pooled = self.payload(length)
                try:
                    error = self.command(vol, cmd, flags, offset, length, payload)
                finally:
                    if pooled is not None:
                        self.data_pool.put(pooled)
                self.send(reply(error, handle))
            elif cmd == p.CMD_DISC:
                return
            else:
                self.send(reply(self.command(vol, cmd, flags, offset, length, None), handle))

    def command(self, vol: Volume, cmd: int, flags: int, offset: int, length: int,
                payload: memoryview | None) -> int:
        """Run a command other than READ; returns the NBD error (0: success)."""
        allowed = _ALLOWED_FLAGS.get(cmd)
        if allowed is None or flags & ~allowed:
            return p.EINVAL
        if vol.readonly and cmd != p.CMD_FLUSH:
            return p.EPERM
        fua = bool(flags & p.CMD_FLAG_FUA)
        try:
            if cmd == p.CMD_WRITE:
                assert payload is not None
                vol.write(offset, payload, fua)
            elif cmd == p.CMD_FLUSH:
                vol.flush()
            elif cmd in (p.CMD_TRIM, p.CMD_WRITE_ZEROES):
                vol.zero(offset, length, fua)
        except Exception as exc:
            return self.error(exc, "command")
        return 0

    def error(self, exc: BaseException, what: str) -> int:
        code = p.nbd_errno(exc)
        if not isinstance(exc, PithosError) or code == p.EIO:
            log.warning("%s failed: %r", what, exc)
        return code

    def run(self) -> None:
        vol = None
        try:
            vol = self.handshake()
            if vol is not None:
                self.serve(vol)
                self.flush_out()
        except HandshakeTimeout as exc:
            log.info("connection closed: %s", exc)
        except Hangup as exc:
            log.debug("connection ended: %s", exc)
        except Exception:
            log.exception("connection failed")
        finally:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.out.clear()
            self.give_back()
            self.drop_buffer()
            if vol is not None:
                try:
                    self.exports.detach(vol)
                except Exception:
                    log.exception("closing %s failed", vol.name)


class NbdServer:
    """Accepts connections on a TCP address or a Unix socket; one thread per connection, at
    most `limits.max_connections` of them."""

    def __init__(self, volumes: Volumes, host: str = "127.0.0.1", port: int = 10809,
                 unix_path: str | None = None, limits: Limits | None = None) -> None:
        self.exports = Exports(volumes)
        self.limits = limits or Limits()
        recv_bytes = self.limits.buffer_memory_bytes // 4
        self.recv_pool = BufferPool(recv_bytes, min_bytes=_RECV_BUFFER)
        self.data_pool = BufferPool(self.limits.buffer_memory_bytes - recv_bytes)
        if unix_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(unix_path)
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.bind(unix_path)
            self.address = unix_path
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind((host, port))
            self.address = "{}:{}".format(*self.sock.getsockname())
        self.sock.listen(128)
        self._threads: set[threading.Thread] = set()
        self._conns: set[socket.socket] = set()
        self._stopping = False
        self._lock = threading.Lock()
        self._refused = 0  # connections closed at the limit since the last notice
        self._noticed = -_NOTICE_S  # time.monotonic() of that notice

    def serve_forever(self, ready: Callable[[str], None] | None = None) -> None:
        if ready is not None:
            ready(self.address)
        while not self._stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError as exc:
                if self._stopping:
                    return
                if exc.errno not in _ACCEPT_AGAIN:
                    raise
                log.warning("accept failed: %s", exc)  # out of descriptors: wait for some
                time.sleep(0.1)
                continue
            if not self._admit(conn):
                continue
            if conn.family == socket.AF_INET:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            t = threading.Thread(target=self._run, args=(conn,), daemon=True,
                                 name="nbd-conn")
            with self._lock:
                self._threads.add(t)
            t.start()

    def _admit(self, conn: socket.socket) -> bool:
        """Count a new connection in, or close it at once when the limit is reached (a client
        is told by the end of its connection before the greeting, instead of waiting in a
        queue)."""
        now = time.monotonic()
        with self._lock:
            if len(self._conns) < self.limits.max_connections:
                self._conns.add(conn)
                return True
            self._refused += 1
            refused, notice = self._refused, now - self._noticed >= _NOTICE_S
            if notice:
                self._refused, self._noticed = 0, now
        if notice:
            log.warning("connection limit reached (%d connections): closing new connections "
                        "until some end (%d closed since the last notice)",
                        self.limits.max_connections, refused)
        with contextlib.suppress(OSError):
            conn.close()
        return False

    def _run(self, conn: socket.socket) -> None:
        try:
            Connection(conn, self.exports, self.limits, self.recv_pool, self.data_pool).run()
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())
                self._conns.discard(conn)

    def interrupt(self) -> None:
        """Stop accepting: serve_forever returns.  Safe from a signal handler."""
        self._stopping = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        """Stop accepting, end every connection, flush and close every volume."""
        self.interrupt()
        with contextlib.suppress(OSError):
            self.sock.close()
        with self._lock:
            conns, threads = list(self._conns), list(self._threads)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        for t in threads:
            t.join(timeout=10)
        self.exports.close_all()

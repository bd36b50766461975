"""A fuzzer for `archipelago serve` (issue 26): hypothesis makes connections that negotiate
(fixed newstyle: client flags, OPT_LIST / OPT_INFO / OPT_GO / OPT_EXPORT_NAME / OPT_ABORT /
OPT_STRUCTURED_REPLY / unknown options, bad lengths, bad magic, huge options) and then send
pipelined requests (READ, WRITE, FLUSH, TRIM, WRITE_ZEROES, DISC, unknown commands; bad flags,
ranges past the end, huge offsets and lengths) ending in a clean or a broken frame (garbage,
a truncated header or payload, a payload longer than its header says, a 4 GiB write).

Against one real server process, every option and request gets the reply this oracle (the NBD
protocol as docs/volumes.md states our server implements it) predicts, or the connection is
closed where it must be; no reply is late beyond a socket timeout and no byte breaks framing.
Reads are checked against a model of the volume that every acknowledged write, trim and zero
updates; at the end the whole volume (read with nbdcopy, before and after a restart) is the
model, qemu-io still works and the server logged no failure."""

from __future__ import annotations

import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import threading
from typing import NamedTuple

import pytest
from conftest import readable
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archipelago.nbd import protocol as p
from archipelago.testing import ServerProcess

KiB, MiB = 1 << 10, 1 << 20
BASE_SIZE = MiB
SIZE = MiB + 512  # the clone grown past its base, ending in a partial sector
EXPORTS = {"src", "snap", "fz"}
TIMEOUT_S = 10.0  # per socket operation: a reply later than this is a hang
MAX_OPTION = 64 * KiB
REQUEST_MAGIC = 0x25609513
REPLY_MAGIC = 0x67446698
ERRNOS = {0, p.EPERM, p.EIO, p.ENOMEM, p.EINVAL, p.ENOSPC, p.EOVERFLOW, p.ESHUTDOWN}
pytestmark = pytest.mark.skipif(any(shutil.which(t) is None for t in ("qemu-io", "nbdcopy")),
                                reason="qemu-utils / libnbd-bin not installed")


# -- what a connection sends ----------------------------------------------------------------

class Option(NamedTuple):
    """One option of the handshake: `data` is its payload; `declared` a length to claim
    instead of len(data) (then only the header is sent); `magic` replaces IHAVEOPT."""
    option: int
    data: bytes = b""
    declared: int | None = None
    magic: bytes = p.IHAVEOPT


class Request(NamedTuple):
    cmd: int
    flags: int
    offset: int
    length: int
    handle: int
    seed: int = 0  # of a WRITE's payload


class Session(NamedTuple):
    client_flags: int
    options: list[Option]
    end: str  # go | export_name | abort | close | truncated
    export: str  # for go / export_name
    requests: list[Request]
    trailer: str  # disc | close | garbage | truncated | huge_write | long_payload
    junk: bytes  # garbage or the bytes of a truncated frame


def info_payload(name: bytes, infos: list[int], name_len_delta: int = 0,
                 count_delta: int = 0, cut: int = 0) -> bytes:
    data = (struct.pack(">I", max(len(name) + name_len_delta, 0)) + name
            + struct.pack(">H", max(len(infos) + count_delta, 0))
            + b"".join(struct.pack(">H", i) for i in infos))
    return data[:len(data) - cut] if cut else data


names = st.one_of(st.sampled_from([b"fz", b"snap", b"src", b"nope", b"", b"\xff\xfe", b"../fz",
                                   b"fz\x00", b"x" * 300]),
                  st.binary(max_size=20))
infos = st.lists(st.integers(0, 0xFFFF), max_size=4)
info_requests = st.builds(info_payload, names, infos,
                          st.sampled_from([0, 0, 0, -1, 1, 1 << 20]),
                          st.sampled_from([0, 0, 0, 1, -1]), st.sampled_from([0, 0, 0, 1, 3]))

def _options(option: st.SearchStrategy[int], data: st.SearchStrategy[bytes]
             ) -> st.SearchStrategy[Option]:
    return st.tuples(option, data).map(lambda t: Option(*t))


options = st.one_of(
    _options(st.just(p.OPT_LIST), st.sampled_from([b"", b"", b"x"])),
    _options(st.sampled_from([p.OPT_INFO, p.OPT_GO]), info_requests),
    _options(st.sampled_from([p.OPT_STRUCTURED_REPLY, p.OPT_STARTTLS, 4, 9, 10, 11, 0,
                              0xFFFFFFFF]), st.binary(max_size=16)),
    _options(st.integers(12, 0xFFFFFFFF), st.binary(max_size=16)),
)
# Options after which the server hangs up (they end the list).
breaking_options = st.one_of(
    st.integers(MAX_OPTION + 1, 0xFFFFFFFF).map(lambda n: Option(p.OPT_LIST, declared=n)),
    st.sampled_from([b"IHAVEOPX", b"\0" * 8, p.NBDMAGIC]).map(
        lambda m: Option(p.OPT_LIST, magic=m)),
    _options(st.just(p.OPT_EXPORT_NAME),
             st.sampled_from([b"nope", b"", b"\xff", b"fz/..", b"x" * 200])),
)

offsets = st.one_of(st.integers(0, SIZE), st.integers(0, SIZE // 4096).map(lambda s: s * 4096),
                    st.sampled_from([SIZE - 1, SIZE, SIZE + 1, BASE_SIZE - 100, 1 << 63,
                                     (1 << 64) - 1, (1 << 64) - 4096]))
lengths = st.one_of(st.integers(0, 9000), st.integers(0, SIZE),
                    st.integers(60 * KiB, 260 * KiB),  # around the server's buffer sizes
                    st.sampled_from([0, 1, 4095, 4096, 300 * KiB, SIZE, 32 * MiB,
                                     32 * MiB + 1, 0xFFFFFFFF]))
valid_flags = {p.CMD_READ: p.CMD_FLAG_FUA, p.CMD_WRITE: p.CMD_FLAG_FUA,
               p.CMD_FLUSH: p.CMD_FLAG_FUA, p.CMD_TRIM: p.CMD_FLAG_FUA,
               p.CMD_WRITE_ZEROES: p.CMD_FLAG_FUA | p.CMD_FLAG_NO_HOLE}


@st.composite
def requests(draw: st.DrawFn) -> Request:
    cmd = draw(st.one_of(st.sampled_from([p.CMD_READ, p.CMD_READ, p.CMD_WRITE, p.CMD_WRITE,
                                          p.CMD_FLUSH, p.CMD_TRIM, p.CMD_WRITE_ZEROES,
                                          p.CMD_CACHE, p.CMD_BLOCK_STATUS]),
                         st.integers(8, 0xFFFF)))
    allowed = valid_flags.get(cmd, 0)
    flags = draw(st.one_of(st.integers(0, allowed), st.integers(0, 0xFFFF)))
    offset, length = draw(offsets), draw(lengths)
    if cmd == p.CMD_WRITE and length > 32 * MiB:
        length = draw(st.integers(0, 64 * KiB))  # a huge write is a trailer (it hangs up)
    return Request(cmd, flags, offset, length, draw(st.integers(0, (1 << 64) - 1)),
                   draw(st.integers(0, 1 << 30)))


@st.composite
def sessions(draw: st.DrawFn) -> Session:
    client_flags = draw(st.one_of(st.sampled_from([3, 3, 3, 1]), st.integers(0, 0xFFFFFFFF)))
    opts = draw(st.lists(options, max_size=4))
    end = draw(st.sampled_from(["go", "go", "go", "export_name", "abort", "close",
                                "truncated", "breaking"]))
    if end == "breaking":
        opts.append(draw(breaking_options))
    export = draw(st.sampled_from(["fz", "fz", "fz", "snap"]))
    reqs = draw(st.lists(requests(), max_size=16))
    trailer = draw(st.sampled_from(["disc", "close", "garbage", "truncated", "huge_write",
                                    "long_payload"]))
    junk = draw(st.binary(min_size=1, max_size=64))
    if junk[:4] == struct.pack(">I", REQUEST_MAGIC):
        junk = b"\0" + junk
    return Session(client_flags, opts, end, export, reqs, trailer, junk)


# -- the model and the oracle ----------------------------------------------------------------

class Image:
    """What an export must read: `data`, and which of its bytes are known (a request whose
    outcome was not seen, in an example that failed, makes its range unknown)."""

    def __init__(self, data: bytes, readonly: bool) -> None:
        self.data = bytearray(data)
        self.known = bytearray(b"\1" * len(data))
        self.readonly = readonly
        self.size = len(data)

    def check(self, offset: int, got: bytes) -> None:
        want = self.data[offset:offset + len(got)]
        if got != want:
            known = self.known[offset:offset + len(got)]
            bad = [i for i in range(len(got)) if known[i] and got[i] != want[i]]
            assert not bad, f"{len(bad)} bytes differ from the model at {offset + bad[0]}"

    def apply(self, r: Request) -> None:
        """An acknowledged WRITE, TRIM or WRITE_ZEROES."""
        if r.cmd == p.CMD_WRITE:
            self.data[r.offset:r.offset + r.length] = payload(r)
        else:
            self.data[r.offset:r.offset + r.length] = bytes(r.length)

    def forget(self, r: Request) -> None:
        if r.offset < self.size:
            end = min(r.offset + r.length, self.size)
            self.known[r.offset:end] = bytes(end - r.offset)


class Model:
    """The three exports: the snapshot, the volume it was taken of, and its clone `fz`,
    grown past it."""

    def __init__(self, snap: bytes) -> None:
        self.images = {"snap": Image(snap, readonly=True), "src": Image(snap, readonly=False),
                       "fz": Image(snap + bytes(SIZE - len(snap)), readonly=False)}


def payload(r: Request) -> bytes:
    return random.Random(r.seed).randbytes(r.length)


def expected_error(r: Request, image: Image) -> int | None:
    """The error the server must answer `r` with (None: no reply, it hangs up)."""
    if r.cmd == p.CMD_DISC:
        return None
    readonly = image.readonly
    past = r.offset + r.length > image.size
    if r.cmd == p.CMD_READ:
        bad = r.flags & ~p.CMD_FLAG_FUA or r.length > p.MAX_BLOCK or past
        return p.EINVAL if bad else 0
    allowed = valid_flags.get(r.cmd)
    if allowed is None or r.flags & ~allowed:
        return p.EINVAL
    if readonly and r.cmd != p.CMD_FLUSH:
        return p.EPERM
    if r.cmd != p.CMD_FLUSH and past:
        return p.ENOSPC
    return 0


def recv_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def expect_closed(s: socket.socket) -> None:
    """The server closed the connection, sending nothing more."""
    try:
        extra = s.recv(4096)
    except ConnectionResetError:
        return
    assert extra == b"", f"{len(extra)} stray bytes instead of the end: {extra[:32]!r}"


def expect_nothing_more(s: socket.socket) -> None:
    if readable(s, 0.05):
        assert s.recv(4096, socket.MSG_PEEK) == b"", "stray bytes after the last reply"


def option_replies(s: socket.socket, option: int) -> list[tuple[int, bytes]]:
    """The replies to one option, up to its final one (ACK or an error)."""
    got = []
    while True:
        magic, echoed, kind, length = struct.unpack(">QIII", recv_exact(s, 20))
        assert magic == p.OPT_REPLY_MAGIC and echoed == option, (hex(magic), echoed, option)
        assert length <= 64 * KiB, length
        got.append((kind, recv_exact(s, length)))
        if kind == p.REP_ACK or kind & 1 << 31:
            return got
        assert kind in (p.REP_SERVER, p.REP_INFO), kind


def check_info(replies: list[tuple[int, bytes]], image: Image) -> None:
    assert [k for k, _ in replies] == [p.REP_INFO, p.REP_INFO, p.REP_ACK], replies
    kind, size, flags = struct.unpack(">HQH", replies[0][1])
    assert kind == p.INFO_EXPORT and size == image.size
    assert bool(flags & p.FLAG_READ_ONLY) == image.readonly
    assert flags & p.FLAG_HAS_FLAGS and flags & p.FLAG_SEND_FLUSH
    assert struct.unpack(">HIII", replies[1][1]) == (p.INFO_BLOCK_SIZE, 1, 4096, 32 * MiB)


def expected_info(data: bytes) -> int | str:
    """What OPT_INFO / OPT_GO with this payload gets: an error, or the export's name."""
    if len(data) < 6:
        return p.REP_ERR_INVALID
    (name_len,) = struct.unpack_from(">I", data)
    if 4 + name_len + 2 > len(data):
        return p.REP_ERR_INVALID
    (count,) = struct.unpack_from(">H", data, 4 + name_len)
    if len(data) != 4 + name_len + 2 + 2 * count:
        return p.REP_ERR_INVALID
    try:
        name = data[4:4 + name_len].decode()
    except UnicodeDecodeError:
        return p.REP_ERR_UNKNOWN
    return name if name in EXPORTS else p.REP_ERR_UNKNOWN


def send_option(s: socket.socket, o: Option) -> None:
    length = len(o.data) if o.declared is None else o.declared
    s.sendall(o.magic + struct.pack(">II", o.option, length)
              + (o.data if o.declared is None else b""))


def negotiate(s: socket.socket, session: Session, model: Model) -> str | None:
    """Run the handshake; the export entered, or None when the connection is over."""
    hello = recv_exact(s, 18)
    assert hello[:16] == p.NBDMAGIC + p.IHAVEOPT
    assert struct.unpack(">H", hello[16:])[0] == p.FLAG_FIXED_NEWSTYLE | p.FLAG_NO_ZEROES
    s.sendall(struct.pack(">I", session.client_flags))
    if session.client_flags & ~3:
        expect_closed(s)  # unknown client flags
        return None
    for o in session.options:
        send_option(s, o)
        if o.magic != p.IHAVEOPT or o.declared is not None or o.option == p.OPT_EXPORT_NAME:
            expect_closed(s)
            return None
        replies = option_replies(s, o.option)
        if o.option == p.OPT_LIST:
            if o.data:
                assert [k for k, _ in replies] == [p.REP_ERR_INVALID]
                continue
            assert [k for k, _ in replies] == [p.REP_SERVER] * len(EXPORTS) + [p.REP_ACK]
            listed = set()
            for _, d in replies[:-1]:
                (n,) = struct.unpack_from(">I", d)
                assert len(d) == 4 + n
                listed.add(d[4:].decode())
            assert listed == EXPORTS
        elif o.option in (p.OPT_INFO, p.OPT_GO):
            want = expected_info(o.data)
            if isinstance(want, int):
                assert [k for k, _ in replies] == [want], (replies, o)
            elif o.option == p.OPT_GO:
                check_info(replies, model.images[want])
                return want  # an export entered by a GO that was not meant to be the end
            else:
                check_info(replies, model.images[want])
        else:
            assert [k for k, _ in replies] == [p.REP_ERR_UNSUP], (replies, o)
    if session.end == "go":
        data = info_payload(session.export.encode(), [p.INFO_BLOCK_SIZE])
        send_option(s, Option(p.OPT_GO, data))
        check_info(option_replies(s, p.OPT_GO), model.images[session.export])
        return session.export
    if session.end == "export_name":
        send_option(s, Option(p.OPT_EXPORT_NAME, session.export.encode()))
        size, flags = struct.unpack(">QH", recv_exact(s, 10))
        image = model.images[session.export]
        assert size == image.size
        assert bool(flags & p.FLAG_READ_ONLY) == image.readonly
        if not session.client_flags & p.FLAG_C_NO_ZEROES:
            assert recv_exact(s, 124) == bytes(124)
        return session.export
    if session.end == "abort":
        send_option(s, Option(p.OPT_ABORT))
        assert option_replies(s, p.OPT_ABORT) == [(p.REP_ACK, b"")]
        expect_closed(s)
    elif session.end == "truncated":
        s.sendall((p.IHAVEOPT + struct.pack(">II", p.OPT_LIST, 8) + b"abc")[:len(session.junk)
                                                                              % 18 + 1])
        s.shutdown(socket.SHUT_WR)
        expect_closed(s)
    return None


def frame(r: Request, data: bytes = b"") -> bytes:
    return struct.pack(">IHHQQI", REQUEST_MAGIC, r.flags, r.cmd, r.handle, r.offset,
                       r.length) + data


def transmit(s: socket.socket, session: Session, export: str, model: Model) -> None:
    """Send the requests (pipelined, from a thread, as clients do) and check every reply."""
    image = model.images[export]
    reqs = list(session.requests)
    frames = [frame(r, payload(r) if r.cmd == p.CMD_WRITE else b"") for r in reqs]
    trailer, junk = session.trailer, session.junk
    if trailer == "disc":
        reqs.append(Request(p.CMD_DISC, junk[0], 0, 0, 1))  # any flags
        frames.append(frame(reqs[-1]))
    elif trailer == "garbage":
        frames.append(junk)
    elif trailer == "truncated":  # part of a header, or a WRITE short of its payload
        w = Request(p.CMD_WRITE, 0, 0, 4096, 2)
        cut = 28 + len(junk) * 61 % 4096 if junk[0] & 1 else len(junk) % 28
        frames.append(frame(w, payload(w))[:cut])
    elif trailer == "huge_write":
        frames.append(frame(Request(p.CMD_WRITE, 0, 0, 32 * MiB + 1 + junk[0], 3)))
    elif trailer == "long_payload":  # a WRITE with more bytes than its length: out of step
        w = Request(p.CMD_WRITE, 0, 512, 16, 4, seed=junk[0])
        reqs.append(w)
        frames.append(frame(w, payload(w)) + junk)
    errors: list[BaseException] = []

    def sender() -> None:
        try:
            for f in frames:
                s.sendall(f)
            if trailer in ("garbage", "truncated", "long_payload"):
                s.shutdown(socket.SHUT_WR)
        except OSError as exc:  # the server may hang up before the last bytes
            if trailer == "close":
                errors.append(exc)

    t = threading.Thread(target=sender)
    t.start()
    pending = [r for r in reqs if r.cmd in (p.CMD_WRITE, p.CMD_TRIM, p.CMD_WRITE_ZEROES)]
    try:
        for r in reqs:
            want = expected_error(r, image)
            if want is None:
                break
            magic, error, handle = struct.unpack(">IIQ", recv_exact(s, 16))
            assert magic == REPLY_MAGIC, f"reply magic {magic:#x}"
            assert handle == r.handle, "reply out of order"
            assert error in ERRNOS, error
            assert error == want, (r, error, want)
            if r.cmd == p.CMD_READ and error == 0:
                image.check(r.offset, recv_exact(s, r.length))
            elif error == 0 and r in pending:
                image.apply(r)
            if r in pending:
                pending.remove(r)
        if trailer == "close":
            expect_nothing_more(s)
        else:
            expect_closed(s)
    except BaseException:
        for r in pending:  # their outcome was not seen
            image.forget(r)
        raise
    finally:
        t.join(TIMEOUT_S)
    assert not t.is_alive(), "the server stopped reading"
    assert not errors, errors


# -- the test --------------------------------------------------------------------------------

def _cli(data_dir, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "archipelago.cli", *args, "--data-dir", str(data_dir)],
                   check=True, capture_output=True, timeout=60)


def _read_export(srv: ServerProcess, name: str, path) -> bytes:
    subprocess.run(["nbdcopy", srv.uri(name), str(path)], check=True, capture_output=True,
                   timeout=60)
    return path.read_bytes()


def test_fuzz_nbd_server(tmp_path):
    data_dir = tmp_path / "data"
    os.makedirs(data_dir)
    _cli(data_dir, "volume", "create", "src", "--size", str(BASE_SIZE))
    log = tmp_path / "serve.log"
    srv = ServerProcess(str(data_dir), args=["--handshake-timeout", "5"], log_path=str(log))
    try:
        image = tmp_path / "image.raw"
        image.write_bytes(random.Random(26).randbytes(BASE_SIZE - 200 * KiB) + bytes(200 * KiB))
        subprocess.run(["nbdcopy", str(image), srv.uri("src")], check=True,
                       capture_output=True, timeout=60)
        _cli(data_dir, "volume", "snapshot", "src", "snap")
        _cli(data_dir, "volume", "clone", "snap", "fz", "--size", str(SIZE))
        model = Model(_read_export(srv, "snap", tmp_path / "snap.raw"))

        @settings(max_examples=150, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(sessions())
        def one_connection(session: Session) -> None:
            with socket.create_connection(("127.0.0.1", srv.port), timeout=TIMEOUT_S) as s:
                export = negotiate(s, session, model)
                if export is not None:
                    transmit(s, session, export, model)
            assert srv.proc.poll() is None, "the server died"

        one_connection()

        assert srv.proc.poll() is None
        proc = subprocess.run(["qemu-io", "-f", "raw", "-r", "-c", "read -P 0 900k 100k",
                               srv.qemu_uri("snap")], capture_output=True, timeout=60)
        assert proc.returncode == 0 and b"verification failed" not in proc.stdout, proc
        for name, image in model.images.items():
            image.check(0, _read_export(srv, name, tmp_path / f"{name}.raw"))
    finally:
        srv.stop()
    text = log.read_text()
    assert "Traceback" not in text and "failed" not in text, text[-3000:]
    with ServerProcess(str(data_dir)) as again:  # and it was all flushed
        for name, image in model.images.items():
            image.check(0, _read_export(again, name, tmp_path / f"{name}.raw"))

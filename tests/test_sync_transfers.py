"""What moves over the wire: a big file edited in the middle sends and fetches only the chunks
around the edit (content-defined chunks; bytes counted by the client), a file changed while it
is uploaded is never stored half old, half new, and a download takes the chunks the folder
already holds."""

from __future__ import annotations

import dataclasses
import os
import random
import threading

import pytest
from sync_helpers import Device, assert_agree, container_files

from pithos.core.hashing import block_hash
from pithos.sync import plan as P
from pithos.sync.engine import Engine, Progress
from pithos.sync.remote import Credentials, FileRanges, FileShrank, Remote
from pithos.sync.state import State
from pithos.sync.upload import Claims

MiB = 1 << 20
BIG = 64 * MiB


def big_data(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def test_a_big_file_edited_in_the_middle_moves_a_few_chunks(pithos_server, tmp_path):
    a = Device(pithos_server, tmp_path / "a", "big")
    b = Device(pithos_server, tmp_path / "b", "big")
    data = big_data(1, BIG)
    a.write("disk.img", data)
    s = a.sync()
    assert s.sent_bytes == BIG
    s = b.sync()
    assert s.fetched_bytes == BIG
    # An insert of 100 bytes in the middle, and a 4 KiB overwrite near the end.
    edited = bytearray(data[:BIG // 2] + b"x" * 100 + data[BIG // 2:])
    edited[BIG - 10 * MiB:BIG - 10 * MiB + 4096] = b"y" * 4096
    a.write("disk.img", bytes(edited))
    s = a.sync()
    assert 0 < s.sent_bytes <= 512 * 1024, s.sent_bytes
    # Besides the chunks, the hashmap (~75 bytes an entry, 4096 entries here); ?missing asked
    # only about the chunks the synced version lacked, not about all 4096.
    entries = len(a.state_chunks("disk.img"))
    assert s.request_bytes - s.sent_bytes <= entries * 80 + 16 * 1024, (s.request_bytes, entries)
    s = b.sync()
    assert 0 < s.fetched_bytes <= 512 * 1024, s.fetched_bytes
    assert s.reused_bytes >= len(edited) - 512 * 1024
    assert b.read("disk.img") == bytes(edited)
    assert_agree(pithos_server, a, b, container="big")


def test_a_copy_under_a_new_name_sends_nothing(pithos_server, tmp_path):
    a = Device(pithos_server, tmp_path / "a", "copies")
    b = Device(pithos_server, tmp_path / "b", "copies")
    data = big_data(2, 4 * MiB)
    small = big_data(5, 20_000)
    a.write("one", data)
    a.write("small", small)
    a.sync()
    b.sync()
    a.write("two/copy", data)
    a.write("copy of small", small)
    s = a.sync()
    # Server-side copies: neither the data nor a hashmap (nor a small file whole) goes up.
    assert s.uploaded == 2 and s.sent_bytes == 0 and s.request_bytes == 0, s
    s = b.sync()
    assert s.downloaded == 2 and s.fetched_bytes == 0  # every chunk from "one" and "small"
    assert_agree(pithos_server, a, b, container="copies")


class EditWhileUploading(Progress):
    """Changes the file at its first progress step: after the scan hashed it, while its
    chunks are being read and sent."""

    def __init__(self, path: str, how: str) -> None:
        self.path = path
        self.how = how
        self.done = False

    def advance(self, n: int) -> None:
        if self.done:
            return
        self.done = True
        new = big_data(4, 3 * MiB)
        if self.how == "delete":  # vanished mid-read
            os.unlink(self.path)
        elif self.how == "truncate":  # shorter than the ranges still to send
            os.truncate(self.path, MiB)
        elif self.how == "replace":  # a new file renamed over it (an editor's save)
            with open(self.path + ".new", "wb") as f:
                f.write(new)
            os.replace(self.path + ".new", self.path)
        else:  # rewritten in place (same inode)
            with open(self.path, "r+b") as f:
                f.seek(2 * MiB)
                f.write(new[2 * MiB:])


def test_a_file_changed_while_uploaded(pithos_server, tmp_path):
    new = big_data(4, 3 * MiB)
    # Each case its own first content: the server holding it already, nothing would be read
    # and sent (the change would land after the upload, not in the middle of its reads).
    first = {"replace": big_data(3, 3 * MiB), "rewrite": big_data(5, 3 * MiB),
             "delete": big_data(6, 3 * MiB), "truncate": big_data(7, 3 * MiB)}
    expected = {"replace": new, "rewrite": first["rewrite"][:2 * MiB] + new[2 * MiB:],
                "delete": None, "truncate": first["truncate"][:MiB]}
    for how, content in expected.items():
        name = f"busy-{how}"
        a = Device(pithos_server, tmp_path / name / "a", name)
        b = Device(pithos_server, tmp_path / name / "b", name)
        a.write("f.bin", first[how])
        a.sync(progress=EditWhileUploading(a.path("f.bin"), how))
        b.sync()
        remote = assert_agree(pithos_server, a, b, container=name)
        assert remote.get("f.bin") == content
        if how in ("rewrite", "truncate"):
            # Chunks read after the edit are not what the scan hashed: the server's hashes
            # of what it stored say so (or the file ends before them), and the file waits
            # for the next pass.
            assert any("changed while being uploaded" in line for line in a.lines), a.lines


class Counting(Progress):
    """Each pass's totals and what was advanced in it."""

    def __init__(self) -> None:
        self.passes: list[list[int]] = []  # [total bytes, total files, advanced, files done]

    def start(self, total_bytes: int, total_files: int) -> None:
        self.passes.append([total_bytes, total_files, 0, 0])

    def add(self, total_bytes: int, total_files: int) -> None:
        self.passes[-1][0] += total_bytes
        self.passes[-1][1] += total_files

    def advance(self, n: int) -> None:
        self.passes[-1][2] += n

    def file_done(self) -> None:
        self.passes[-1][3] += 1


def test_progress_counts_the_uploads_begun_during_the_scan(pithos_server, tmp_path):
    a = Device(pithos_server, tmp_path / "a", "progress")
    sizes = {f"d/f{i}.bin": (i + 1) * 300_000 for i in range(6)} | {"small.txt": 10}
    for i, (rel, n) in enumerate(sizes.items()):
        a.write(rel, big_data(40 + i, n))
    counting = Counting()
    a.sync(progress=counting)
    # The first pass sends every file, most of them as soon as the scan hashed them: each
    # is in the pass's totals, and what was advanced is exactly those totals.
    total_bytes, total_files, advanced, done = counting.passes[0]
    assert (total_bytes, total_files) == (sum(sizes.values()), len(sizes)), counting.passes
    assert (advanced, done) == (total_bytes, total_files), counting.passes


def test_the_bar_shows_early_uploads_from_their_start():
    from pithos.cli.sync import BarProgress

    bar = BarProgress()
    bar.start(0, 0)
    bar.add(5 * MiB, 1)  # under the bar's threshold: not shown yet
    assert bar.bar is None
    bar.advance(MiB)
    bar.add(5 * MiB, 1)
    try:
        (task,) = bar.bar.tasks
        assert (task.completed, task.total) == (MiB, 10 * MiB)
        bar.advance(2 * MiB)
        bar.file_done()
        assert (task.completed, task.fields["files"]) == (3 * MiB, "1/2 files")
    finally:
        bar.stop()


def _text(n_lines: int, seed: int) -> bytes:
    rng = random.Random(seed)
    return b"".join(b"%08d host%02d INFO request served in %d ms\n"
                    % (i, rng.randrange(40), rng.randrange(1000)) for i in range(n_lines))


def _sync_with_rate(server, folder, container: str, rate: float | None):
    """One run of the engine whose Remote has timed its uncompressed batches at `rate`
    bytes/s (None: not yet timed)."""
    state = State(str(folder))
    try:
        assert state.lock()
        remote = Remote(Credentials(server.auth_url, "test:tester", "testing"), container)
        if rate is not None:
            remote.note_rate(8 << 20, (8 << 20) / rate)
        engine = Engine(state, remote, report=lambda _: None)
        assert engine.sync_once(), engine.stats.errors
        return engine.stats
    finally:
        state.close()


def test_compressible_chunks_deflated_unless_the_link_is_fast(pithos_server, tmp_path):
    """Text chunks go deflated on a link not yet timed (an edit's few chunks) or a slow one,
    and as they are on one that carries uncompressed batches fast (a LAN, loopback), where
    deflating costs more CPU than the bytes it saves."""
    for seed, (rate, name) in enumerate(((None, "untimed"), (1e6, "slow"), (1e9, "fast"))):
        folder = tmp_path / name
        os.makedirs(folder)
        text = _text(9000, seed)  # (each its own: no chunk is on the server already)
        (folder / "log.txt").write_bytes(text)
        s = _sync_with_rate(pithos_server, folder, f"deflate-{name}", rate)
        assert s.sent_bytes == len(text), s
        if rate == 1e9:
            assert s.request_bytes >= len(text), (name, s.request_bytes, len(text))
        else:
            assert s.request_bytes < len(text) // 2, (name, s.request_bytes, len(text))
        b = Device(pithos_server, tmp_path / f"{name}-b", f"deflate-{name}")
        b.sync()
        assert b.read("log.txt") == text


def test_link_rate_is_an_average_of_uncompressed_batches():
    remote = Remote(Credentials("http://127.0.0.1:9/auth/v1.0", "a:b", "k"), "c")
    assert not remote.fast_link()  # untimed: deflate
    remote.note_rate(8 << 20, 0.01)  # ~840 MB/s
    assert remote.fast_link()
    for _ in range(10):
        remote.note_rate(8 << 20, 1.0)  # ~8 MB/s, lately
    assert not remote.fast_link()


def test_blocks_sent_from_file_ranges(pithos_server, tmp_path):
    """A batch of chunks sent from ranges of the file by the kernel (sendfile) is stored as
    the same blocks as its bytes; a file shorter than a range abandons the request (nothing
    stored from it) and the next request goes on a new connection."""
    remote = Remote(Credentials(pithos_server.auth_url, "test:tester", "testing"), "ranges")
    remote.ensure_container()
    data = big_data(60, 3 * MiB)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        ranges = [(0, 100_000), (100_000, 50_000), (1_000_000, 70_000), (3 * MiB - 10, 10)]
        stored = remote.put_blocks(FileRanges(fd, ranges), [n for _, n in ranges])
        assert stored == [block_hash(data[o:o + n]) for o, n in ranges]
        assert not remote.missing(stored)
        past_end = block_hash(data[3 * MiB - 10:] + bytes(10))
        with pytest.raises(FileShrank):
            remote.put_blocks(FileRanges(fd, [(3 * MiB - 10, 20)]), [20])
        assert remote.missing([past_end]) == {past_end}
        assert remote.put_blocks(FileRanges(fd, [(5, 7)]), [7]) == [block_hash(data[5:12])]
    finally:
        os.close(fd)


def test_chunks_new_files_share_are_sent_once(pithos_server, tmp_path):
    """Many new files holding the same segments (at unaligned offsets), uploaded side by
    side in one run: each distinct chunk is sent once (groups share one ?missing, uploads
    in flight claim what they send, and what was sent is not sent again), and every file
    is stored whole."""
    shared = [big_data(70 + i, 300_000) for i in range(3)]
    for i in range(40):
        own = big_data(100 + i, 1000 + 37 * i)
        body = own[:500] + shared[i % 3] + own[500:] + shared[(i + 1) % 3]
        (tmp_path / "a").mkdir(exist_ok=True)
        (tmp_path / "a" / f"f{i:02d}.bin").write_bytes(body)
    a = Device(pithos_server, tmp_path / "a", "shared")
    s = a.sync()
    distinct: dict[bytes, int] = {}
    for i in range(40):
        for c in a.state_chunks(f"f{i:02d}.bin"):
            distinct[c.hash] = c.length
    assert s.uploaded == 40
    assert s.sent_bytes == sum(distinct.values()), (s.sent_bytes, sum(distinct.values()))
    b = Device(pithos_server, tmp_path / "b", "shared")
    b.sync()
    assert_agree(pithos_server, a, b, container="shared")


def test_claims_one_sender_per_chunk_and_no_resend():
    """A chunk another thread claimed is not this one's to send, and this one waits for its
    claim to end; a chunk sent (stored) is not claimed again; one given up is."""
    claims = Claims()
    x, y, z = b"x" * 32, b"y" * 32, b"z" * 32
    claimed = threading.Event()
    release = threading.Event()

    def other() -> None:
        assert claims.claim({x, z}) == set()
        claimed.set()
        release.wait(10)
        claims.release([x], sent=True)
        claims.release_all()  # (z given up: not sent)

    t = threading.Thread(target=other)
    t.start()
    assert claimed.wait(10)
    wanted = {x, y}
    assert claims.claim(wanted) == {x}  # x: the other's to send; y: this thread's
    waited = threading.Event()

    def waiter() -> None:
        claims.wait({x})
        waited.set()

    w = threading.Thread(target=waiter)
    w.start()
    assert not waited.wait(0.2)  # (the other still holds x)
    release.set()
    t.join(10)
    w.join(10)
    assert waited.is_set()
    claims.release([y], sent=True)
    again = {x, y, z}
    assert claims.claim(again) == set()
    assert again == {z}  # x and y were sent; z was given up, so this one sends it
    claims.release_all()


class _CountingRemote(Remote):
    """A Remote that counts its POST ?blocks."""
    posts = 0

    def put_blocks(self, *args, **kwargs):
        self.posts += 1
        return super().put_blocks(*args, **kwargs)


def test_a_group_shares_its_batches_and_a_changed_file_fails_alone(pithos_server, tmp_path):
    """A group's files send their chunks in shared batches (random chunks in one, text in
    another, deflated); a file whose bytes changed after the scan, its stat kept (its change
    time unknown to the scan, as in a files cache made before it kept one), is found by the
    hashes the server answers and fails alone: the others are stored and named."""
    folder = tmp_path / "g"
    folder.mkdir()
    for i in range(3):
        (folder / f"r{i}.bin").write_bytes(big_data(80 + i, 200_000))
    (folder / "t.log").write_bytes(_text(4000, 3))
    state = State(str(folder))
    try:
        assert state.lock()
        remote = _CountingRemote(Credentials(pithos_server.auth_url, "test:tester", "testing"),
                                 "groups")
        engine = Engine(state, remote, report=lambda _: None)
        remote.ensure_container()
        result, _ = engine.scan()
        jobs = [engine._prepare_upload(P.Action(P.UPLOAD, rel, local=lf))
                for rel, lf in sorted(result.files.items())]
        jobs = [dataclasses.replace(j, local=dataclasses.replace(j.local, ctime_ns=0),
                                    full=j.full and dataclasses.replace(j.full, ctime_ns=0))
                for j in jobs]
        changed = folder / "r1.bin"
        st = changed.stat()
        changed.write_bytes(big_data(99, 200_000))  # (same size, same inode)
        os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns))
        outcomes = dict(zip([j.action.path for j in jobs], engine._send_group(jobs),
                            strict=True))
        assert remote.posts == 2, remote.posts
        assert "changed while being uploaded" in str(outcomes.pop("r1.bin"))
        for rel, outcome in outcomes.items():
            assert not isinstance(outcome, Exception), (rel, outcome)
            lf, etag = outcome
            assert etag == lf.md5
            assert not remote.missing(list({c.hash for c in lf.chunks}))
    finally:
        state.close()
    assert sorted(container_files(pithos_server, "groups")) == ["r0.bin", "r2.bin", "t.log"]

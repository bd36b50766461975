"""A full disk is recovered online (issue 19): deletes and `pithos gc` get a data directory out
of it, with nothing done by hand.

The server tests run a real `pithos serve` on a small ext4 filesystem of their own, loop-mounted
(root only: CI runs as root; elsewhere they skip, which PITHOS_REQUIRE_ALL=1 turns into a
failure).  The units below them run anywhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest
import swiftclient
from blake3 import blake3
from conftest import PithosServer, free_port
from sqlalchemy.exc import OperationalError

from pithos.blocker import LocalBlockStore
from pithos.catalog import Catalog
from pithos.catalog.space import SpaceReserve, disk_full_as_no_space, release_and_retry
from pithos.core.errors import NoSpace

MiB = 1 << 20
FS_BYTES = 128 * MiB
RESERVE_BYTES = 8 * MiB  # pithos.catalog.space.RESERVE_BYTES, which the CLI uses
# Each test waits for gc at most this long (blocks are swept only once older than its cutoff).
GC_PATIENCE_S = 60


# -- units: errors, the reserve, the retry ------------------------------------------------------


def test_disk_full_errors_become_no_space():
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = sqlite3.SQLITE_FULL  # type: ignore[attr-defined]
    pg_full = psycopg.errors.DiskFull("could not extend file: No space left on device")
    for exc in (full, OperationalError("INSERT ...", {}, full),
                OperationalError("INSERT ...", {}, pg_full)):
        with pytest.raises(NoSpace, match="the catalog is out of space"), \
                disk_full_as_no_space():
            raise exc
    other = sqlite3.OperationalError("database is locked")
    other.sqlite_errorcode = sqlite3.SQLITE_BUSY  # type: ignore[attr-defined]
    with pytest.raises(sqlite3.OperationalError), disk_full_as_no_space():
        raise other


def test_the_reserve_is_made_when_there_is_room_and_given_up_for_one_more_try(tmp_path):
    reserve = SpaceReserve(str(tmp_path / "catalog.sqlite-reserve"), 64 << 10)
    reserve.ensure()
    assert os.stat(reserve.path).st_blocks * 512 >= 64 << 10  # allocated, not sparse
    tries = []

    def step() -> str:
        tries.append(os.path.exists(reserve.path))
        if len(tries) == 1:
            raise NoSpace("full")
        return "done"

    assert release_and_retry(reserve, step) == "done"
    assert tries == [True, False]  # the second try ran with the reserve given up

    def full() -> None:
        tries.append(True)
        raise NoSpace("full")

    tries.clear()
    with pytest.raises(NoSpace):  # without a reserve there is no second try
        release_and_retry(None, full)
    assert len(tries) == 1


def test_a_local_block_store_leaves_keep_free_bytes_free(tmp_path):
    st = os.statvfs(tmp_path)
    store = LocalBlockStore(tmp_path / "blocks", keep_free_bytes=st.f_bavail * st.f_frsize)
    try:
        block = os.urandom(4096)
        with pytest.raises(NoSpace, match="kept for the catalog"):
            store.put_many([(blake3(block).digest(), block)])
        writer = store.open_writer()
        with pytest.raises(NoSpace, match="kept for the catalog"):
            writer.write(block)
        assert store.stale_tmp_files() == []  # nothing was left behind
    finally:
        store.close()


def test_the_server_starts_without_a_new_admin_key_when_the_catalog_is_full(
        tmp_path, monkeypatch, capsys):
    from pithos.cli import serve
    from pithos.config import Storage
    from pithos.identity import Identity

    def full(*args, **kwargs):
        raise NoSpace("the catalog is out of space: database or disk is full")

    monkeypatch.setattr(Identity, "set_initial_key", full)
    storage = Storage(str(tmp_path), f"file://{tmp_path}/blocks",
                      f"sqlite:///{tmp_path}/catalog.sqlite")
    serve.show_initial_key(storage, "127.0.0.1:8080")  # no error: the server goes on
    assert "no new admin key this time: the catalog is out of space" in capsys.readouterr().err


def test_a_catalog_without_reserve_bytes_makes_no_reserve_file(tmp_path):
    catalog = Catalog(f"sqlite:///{tmp_path}/catalog.sqlite")
    try:
        catalog.ensure_account("a")
    finally:
        catalog.close()
    assert not (tmp_path / "catalog.sqlite-reserve").exists()


def test_a_data_directory_catalog_keeps_a_reserve_but_reading_makes_none(pithos_cli):
    data = pithos_cli.data_dir
    pithos_cli("store", "stats")
    pithos_cli("store", "fsck")
    pithos_cli("gc")
    # Commands that only read write nothing: no reserve, no volumes directory.
    assert not (data / "catalog.sqlite-reserve").exists()
    assert not (data / "volumes").exists()
    pithos_cli("user", "add", "a:b", "--key", "k")
    assert (data / "catalog.sqlite-reserve").stat().st_size == RESERVE_BYTES


# -- a small filesystem of its own --------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path):
    """The mount point of an empty FS_BYTES ext4 filesystem, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root to loop-mount a small filesystem (CI runs as root)")
    image, mnt = tmp_path / "fs.img", tmp_path / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(FS_BYTES)
    # -m 0: no blocks kept for root, who runs the server here and would write into them.
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], check=True,
                   capture_output=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True,
                   capture_output=True)
    try:
        yield mnt
    finally:
        for _ in range(50):
            if subprocess.run(["umount", str(mnt)], capture_output=True).returncode == 0:
                break
            time.sleep(0.2)  # a process of the test is still closing its files
        else:
            subprocess.run(["umount", "-l", str(mnt)], check=True, capture_output=True)
        image.unlink()


def _server(fs: Path, tmp_path: Path) -> PithosServer:
    data = fs / "data"
    data.mkdir()
    # The server's log stays off the full filesystem (PithosServer opens DATA/serve.log).
    (data / "serve.log").symlink_to(tmp_path / "serve.log")
    return PithosServer(data)


def _serve(data: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """`pithos serve` on a data directory (making no test user, unlike PithosServer);
    (process, URL) once it answers."""
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pithos.cli.main", "serve", "--data-dir",
                                 str(data), "--listen", f"127.0.0.1:{port}"], stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{url}/info", timeout=2):
                return proc, url
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError("pithos serve did not start: " + log.read_text()[-2000:])
        time.sleep(0.1)


def _connection(url: str) -> swiftclient.Connection:
    return swiftclient.Connection(authurl=f"{url}/auth/v1.0", user="test:tester",
                                  key="testing", retries=0, timeout=60)


def _stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGINT)  # gunicorn's quick shutdown
    proc.wait(timeout=30)


def _free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _pithos(data: Path, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "pithos.cli.main", *args, "--json",
                           "--data-dir", str(data)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"pithos {' '.join(args)}: {proc.stderr}"
    return json.loads(proc.stdout)


def _refused(conn: swiftclient.Connection, name: str, body: bytes) -> str:
    """The reason of the 507 a PUT gets."""
    with pytest.raises(swiftclient.ClientException) as caught:
        conn.put_object("c", name, body)
    assert caught.value.http_status == 507, caught.value
    return caught.value.http_response_content.decode()


def _fill_with_uploads(conn: swiftclient.Connection) -> list[str]:
    """Upload 1 MiB objects until the server answers 507; their names."""
    names: list[str] = []
    for i in range(FS_BYTES // MiB):
        try:
            conn.put_object("c", f"o{i}", os.urandom(MiB))
        except swiftclient.ClientException as exc:
            assert exc.http_status == 507, exc
            assert "cannot store block" in exc.http_response_content.decode()
            return names
        names.append(f"o{i}")
    raise AssertionError("the filesystem never filled up")


def _fill_to_the_last_byte(path: Path) -> None:
    """Another program takes every byte left on the filesystem."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for chunk in (MiB, 64 << 10, 4096, 1):
            zeros = bytes(chunk)
            while True:
                try:
                    os.write(fd, zeros)
                except OSError:
                    break
        os.fsync(fd)
    finally:
        os.close(fd)


def _delete_all(conn: swiftclient.Connection, names: list[str]) -> None:
    """Delete the objects, then their history (the container keeps old versions)."""
    for name in names:
        conn.delete_object("c", name)
    conn.delete_container("c", query_string=f"until={time.time()}")


def _gc_until(data: Path, blocks: int) -> int:
    """Run `pithos gc` until it has reclaimed `blocks` blocks in all (blocks younger than its
    cutoff wait for a later run); the total."""
    deadline = time.monotonic() + GC_PATIENCE_S
    total = 0
    while True:
        report = _pithos(data, "gc")
        total += report["reclaimed_blocks"]
        if total >= blocks:
            return total
        assert time.monotonic() < deadline, f"gc reclaimed {total} of {blocks} blocks: {report}"
        time.sleep(1)


def _top_level(data: Path) -> set[str]:
    return {p.name for p in data.iterdir()} | {f"blocks/{p.name}" for p in
                                              (data / "blocks").iterdir()}


# -- the server on a full disk ------------------------------------------------------------------


def test_uploads_fill_the_disk_then_deletes_and_gc_recover_it(small_fs, tmp_path):
    server = _server(small_fs, tmp_path)
    data = server.data_dir
    try:
        conn = server.connection()
        conn.put_container("c")
        names = _fill_with_uploads(conn)
        assert len(names) >= 32
        assert _refused(conn, "again", os.urandom(MiB))

        # Stats and fsck work while it is full, and write nothing.
        before = _top_level(data)
        assert _pithos(data, "store", "stats")["blocks"] >= 2 * len(names)
        assert _pithos(data, "store", "fsck")["clean"] is True
        assert _top_level(data) == before

        _delete_all(conn, names)
        free = _free_bytes(small_fs)
        # Each object was one block and its map page.
        assert _gc_until(data, 2 * len(names)) >= 2 * len(names)
        assert _free_bytes(small_fs) >= free + len(names) * MiB

        for i in range(8):
            conn.put_object("c", f"after{i}", os.urandom(MiB))
        assert conn.get_object("c", "after7")[1] and len(conn.get_container("c")[1]) == 8
        assert (data / "catalog.sqlite-reserve").stat().st_size == RESERVE_BYTES
    finally:
        server.stop()


def test_a_disk_full_to_the_last_byte_takes_deletes_and_gc(small_fs, tmp_path):
    server = _server(small_fs, tmp_path)
    data = server.data_dir
    reserve = data / "catalog.sqlite-reserve"
    try:
        conn = server.connection()
        conn.put_container("c")
        names = [f"o{i}" for i in range(48)]
        for name in names:
            conn.put_object("c", name, os.urandom(MiB))
        small = os.urandom(4096)
        conn.put_object("c", "small", small)
        names.append("small")
        assert reserve.stat().st_size == RESERVE_BYTES
        _fill_to_the_last_byte(small_fs / "filler")

        # Uploads of new content and of known content (no block to write, only catalog
        # rows) answer 507, and take nothing from the reserve.
        assert "space" in _refused(conn, "new", os.urandom(MiB))
        for i in range(2000):
            try:
                conn.put_object("c", f"copy{i}", small)
            except swiftclient.ClientException as exc:
                assert exc.http_status == 507, exc
                assert "out of space" in exc.http_response_content.decode()
                break
            names.append(f"copy{i}")
        else:
            raise AssertionError("the catalog never filled up")
        assert reserve.exists()

        before = _top_level(data)
        assert _pithos(data, "store", "stats")["blocks"] >= 2 * 48
        assert _pithos(data, "store", "fsck")["clean"] is True
        assert _top_level(data) == before

        # Deleting gives the reserve up, and works; uploads do not get that room.
        _delete_all(conn, names)
        assert not reserve.exists()
        assert "no space left for blocks" in _refused(conn, "meanwhile", os.urandom(MiB))
    finally:
        server.stop()

    # Served on by a new process.  In the one that ran while the catalog was full, an upload
    # whose writer lease row could not be written (WriterLeases.begin raising) stays in flight
    # for ever, and its start holds gc back (pithos/catalog/leases.py); a dead process's row
    # is revoked by gc.
    proc, url = _serve(data, tmp_path / "serve-again.log")
    try:
        conn = _connection(url)
        free = _free_bytes(small_fs)
        assert _gc_until(data, 2 * 48) >= 2 * 48
        assert _free_bytes(small_fs) >= free + 48 * MiB

        # Uploads work again, and the reserve comes back (looked for at most once a second).
        deadline = time.monotonic() + 60
        i = 0
        while not reserve.exists():
            conn.put_object("c", f"after{i}", os.urandom(MiB))
            i += 1
            assert time.monotonic() < deadline, "the reserve never came back"
            time.sleep(0.2)
        assert reserve.stat().st_size == RESERVE_BYTES
    finally:
        _stop(proc)


def test_reading_commands_open_a_full_disk_with_the_server_stopped(small_fs, tmp_path):
    server = _server(small_fs, tmp_path)
    data = server.data_dir
    try:
        conn = server.connection()
        conn.put_container("c")
        for i in range(4):
            conn.put_object("c", f"o{i}", os.urandom(MiB))
    finally:
        server.stop()
    # The last connection to close removes SQLite's WAL and shared-memory files (a server
    # stopped by SIGINT leaves them: close one more).
    Catalog(f"sqlite:///{data}/catalog.sqlite").close()
    assert not (data / "catalog.sqlite-shm").exists()
    _fill_to_the_last_byte(small_fs / "filler")
    # A reader of the WAL database creates the shared-memory file again: opening the catalog
    # gives the reserve up for it.
    assert _pithos(data, "store", "stats")["blocks"] >= 8
    assert _pithos(data, "store", "fsck")["clean"] is True
    assert _pithos(data, "gc")["reclaimed_blocks"] == 0
    assert not (data / "volumes").exists()
    assert not (data / "catalog.sqlite-reserve").exists()


def test_the_server_starts_on_a_full_disk_and_takes_a_login_and_a_delete(small_fs, tmp_path):
    data = small_fs / "data"
    data.mkdir()
    # A first start makes admin:admin with a key shown at every start until it is used.
    proc, url = _serve(data, tmp_path / "serve.log")
    try:
        subprocess.run([sys.executable, "-m", "pithos.cli.main", "user", "add", "test:tester",
                        "--key", "testing", "--admin", "--data-dir", str(data)], check=True,
                       capture_output=True, timeout=60)
        conn = _connection(url)
        conn.put_container("c")
        for i in range(4):
            conn.put_object("c", f"o{i}", os.urandom(MiB))
    finally:
        _stop(proc)  # SIGINT: SQLite's WAL and shared-memory files stay
    _fill_to_the_last_byte(small_fs / "filler")

    # It starts again (storing the admin's next key may find no room: then it shows none).
    proc, url = _serve(data, tmp_path / "serve-again.log")
    try:
        conn = _connection(url)
        conn.delete_object("c", "o0")
        assert [o["name"] for o in conn.get_container("c")[1]] == ["o1", "o2", "o3"]
    finally:
        _stop(proc)


def test_gc_reclaims_after_a_full_catalog_with_no_writer_since(small_fs, tmp_path):
    """A writer lease row whose clearing failed while the catalog was full is cleared by the
    idle timer's next tries once deletes made room, with no new writer: gc is not held back
    by its old start."""
    server = _server(small_fs, tmp_path)
    data = server.data_dir
    try:
        conn = server.connection()
        conn.put_container("c")
        names = [f"o{i}" for i in range(8)]
        for name in names:
            conn.put_object("c", name, os.urandom(MiB))
        _fill_to_the_last_byte(small_fs / "filler")
        for _ in range(2000):  # until the catalog is full, while the writer lease is held
            try:
                conn.put_object("c", "o0", os.urandom(4096))
            except swiftclient.ClientException as exc:
                assert exc.http_status == 507, exc
                break
        time.sleep(2)  # the lease's idle timer fires (and fails) meanwhile
        _delete_all(conn, names)
        assert _gc_until(data, 2 * len(names)) >= 2 * len(names)
    finally:
        server.stop()

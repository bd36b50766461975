"""Fencing of stale lease holders by the OSD blocklist (archipelago/rados/, "Fencing"),
against the real Ceph cluster.

A holder that stalls (SIGSTOP here) may have writes that passed its lease check but were not
sent yet; once its lock expires and another host takes the volume over, those writes must
never land.  The host that takes over blocklists the stalled client instance, so the OSDs
reject them.  Each test takes the clients it made off the blocklist afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import readable

from archipelago import LeaseLost, Volumes
from archipelago.rados import (
    HOLDER_KEY,
    LOCK_NAME,
    RadosHeadStore,
    open_rados_stores,
    volumes_namespace,
)
from pithos.blocker import Blocker, MemoryBlockStore
from pithos.core.errors import BackendError
from tests import test_archipelago_rados as rados_tests
from tests.conftest import CEPH_CONF as CONF
from tests.conftest import CEPH_POOL as POOL
from tests.test_archipelago_rados import BS, LEASE_S, MiB, blocklisted, mon, unblock

# The fixtures of the RADOS volume tests: fresh namespaces, hosts over the cluster (taken off
# the blocklist at the end).
namespace, url, hosts = rados_tests.namespace, rados_tests.url, rados_tests.hosts

KiB = 1 << 10


def holder_record(vols: Volumes, name: str) -> dict[str, str] | None:
    heads = vols.heads
    assert isinstance(heads, RadosHeadStore)
    op = heads.io.create_read_op()
    try:
        it, _ = heads.io.get_omap_vals_by_keys(op, (HOLDER_KEY,))
        heads.io.operate_read_op(op, heads.head_obj(name))
        found = dict(it)
    finally:
        op.release()
    return json.loads(found[HOLDER_KEY]) if HOLDER_KEY in found else None


def break_lock(vols: Volumes, name: str, cookie: str) -> None:
    """The lock goes away without a release (as `rados lock break` would do it)."""
    heads = vols.heads
    assert isinstance(heads, RadosHeadStore)
    heads.io.unlock(heads.lease_obj(name), LOCK_NAME, cookie)


def readline(proc: subprocess.Popen[bytes], timeout_s: float = 60) -> bytes:
    assert proc.stdout is not None
    line = proc.stdout.readline() if readable(proc.stdout, timeout_s) else b""
    if not line:
        assert proc.stderr is not None
        proc.kill()
        raise AssertionError(f"the child said nothing: {proc.stderr.read().decode()[-3000:]}")
    return line


def end(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
    proc.wait(timeout=30)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


# -- a stalled holder ----------------------------------------------------------------------------

STALLED_HOLDER = textwrap.dedent("""
    import json, sys, threading
    from archipelago import Volumes
    from archipelago.rados import open_rados_stores
    from pithos.blocker import Blocker, MemoryBlockStore
    url, lease_s = sys.argv[1], int(sys.argv[2])
    heads, deltas = open_rados_stores(url, lease_s=lease_s)
    vols = Volumes(Blocker(MemoryBlockStore()), heads, deltas)
    vol = vols.open("v")
    vol.write(0, b"A" * 65536)
    vol.flush()
    # A writer that has passed its lease check and stalls before its write is sent (a thread
    # preempted, a GC pause): no check can stop it any more, only the blocklist.
    real_check, passed, go = vol.lease.check, threading.Event(), threading.Event()
    def check():
        real_check()
        if threading.current_thread().name == "late":
            passed.set()
            go.wait()
    vol.lease.check = check
    outcome = {}
    def late():
        try:
            vol.write(0, b"S" * 65536)
            vol.delta._wait_seq(vol.delta._seq)  # until the OSD has answered it
            outcome["late write"] = "sent"
        except Exception as exc:
            outcome["late write"] = f"{type(exc).__name__}: {exc}"
    t = threading.Thread(target=late, name="late")
    t.start()
    passed.wait()
    print("stalled", heads.pool.addr, flush=True)
    sys.stdin.readline()  # stopped, taken over, continued: then this line
    go.set()
    t.join()
    for what, act in [("write", lambda: vol.write(65536, b"S" * 4096)), ("flush", vol.flush),
                      ("sync", vol.delta.sync)]:
        try:
            act()
            outcome[what] = "ok"
        except Exception as exc:
            outcome[what] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(outcome), flush=True)
    sys.stdin.readline()
""")


def test_a_stalled_holder_is_fenced_and_its_late_writes_never_land(hosts, url, cluster,
                                                                   namespace):
    a = hosts(lease_s=LEASE_S)
    a.create("v", 8 * MiB, block_size=BS)
    proc = subprocess.Popen([sys.executable, "-c", STALLED_HOLDER, url, str(LEASE_S)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stale = ""
    try:
        line = readline(proc)
        assert line.startswith(b"stalled "), line
        stale = line.split()[1].decode()
        proc.send_signal(signal.SIGSTOP)
        b = hosts(lease_s=LEASE_S, lease_wait_s=LEASE_S + 10)
        start = time.monotonic()
        vol = b.open("v")  # once the stopped holder's lock has expired
        assert time.monotonic() - start < LEASE_S + 10
        listed = blocklisted(cluster)
        assert stale in listed and b.heads.pool.addr not in listed
        assert holder_record(b, "v")["addr"] == b.heads.pool.addr
        assert vol.read(0, 65536) == b"A" * 65536
        vol.write(0, b"B" * 65536)
        vol.flush()
        proc.send_signal(signal.SIGCONT)
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        outcome = json.loads(readline(proc))
        proc.stdin.write(b"done\n")
        proc.stdin.flush()
        assert vol.read(0, 65536 + 4096) == b"B" * 65536 + bytes(4096)  # nothing landed
        assert outcome["late write"] == "sent", outcome  # it reached the OSD...
        assert outcome["write"].startswith("LeaseLost"), outcome
        assert outcome["flush"].startswith("LeaseLost"), outcome
        # ...which refused it: the delta refuses every later sync.
        # (Blocklisted: the BackendError that names the cause.)
        assert outcome["sync"].startswith("Blocklisted") and "blocklisted" in outcome["sync"]
        vol.close()
    finally:
        end(proc)
        if stale:
            unblock(cluster, stale)
    c = hosts()
    with contextlib.closing(c.open("v")) as again:
        assert again.read(0, 65536 + 4096) == b"B" * 65536 + bytes(4096)
    io = cluster.open_ioctx(POOL)
    try:  # and straight from the object
        io.set_namespace(volumes_namespace(namespace))
        assert io.read("data/v/0/00000000", 65536 + 4096) == b"B" * 65536
    finally:
        io.close()


def test_a_broken_lock_is_fenced_at_once(hosts, cluster):
    """A lock that vanished without a release (broken by an administrator): the next holder
    need not wait, and fences the old one even before it noticed."""
    a, b = hosts(lease_s=LEASE_S), hosts(lease_s=LEASE_S)
    a.create("v", 1 * MiB, block_size=BS)
    old = a.open("v")
    old.write(0, b"old" * 1000)
    old.flush()
    break_lock(a, "v", old.lease.cookie)
    with contextlib.closing(b.open("v")) as vol:
        assert a.heads.pool.addr in blocklisted(cluster)
        vol.write(0, b"new" * 1000)
        vol.flush()
        # A write of the old holder that passed its lease check before the takeover goes
        # straight to its delta: refused by the OSD.
        old.delta.pwrite(b"bad" * 1000, 0)
        with pytest.raises(BackendError, match="blocklisted"):
            old.delta.sync()
        with pytest.raises((BackendError, LeaseLost)):
            old.write(0, b"bad" * 1000)
        assert vol.read(0, 3000) == b"new" * 1000
    with pytest.raises((BackendError, LeaseLost)):
        old.close()  # its flush is refused; the delta and the lease are let go all the same
    with contextlib.closing(hosts().open("v")) as again:
        assert again.read(0, 3000) == b"new" * 1000


def test_a_clean_release_fences_nobody(hosts, cluster):
    a, b = hosts(lease_s=LEASE_S), hosts(lease_s=LEASE_S)
    a.create("v", 1 * MiB, block_size=BS)
    with contextlib.closing(a.open("v")) as vol:
        record = holder_record(a, "v")
        assert record is not None and record["addr"] == a.heads.pool.addr
        assert record["cookie"] == vol.lease.cookie
        vol.write(0, b"first")
    assert holder_record(a, "v") is None  # released: the record went with the lease
    with contextlib.closing(b.open("v")) as vol:
        assert holder_record(b, "v")["addr"] == b.heads.pool.addr
        vol.write(5, b"second")
    assert a.heads.pool.addr not in blocklisted(cluster)
    with contextlib.closing(a.open("v")) as vol:  # a's client still works
        assert vol.read(0, 11) == b"firstsecond"
    listed = blocklisted(cluster)
    assert a.heads.pool.addr not in listed and b.heads.pool.addr not in listed


def test_a_client_never_fences_itself(hosts, cluster):
    """The lock of a volume this very client held went away without a release: taking it
    again blocklists nobody (one client's ops to one object apply in order)."""
    a = hosts(lease_s=LEASE_S)
    a.create("v", 1 * MiB, block_size=BS)
    first = a.open("v")
    first.write(0, b"one")
    first.flush()
    break_lock(a, "v", first.lease.cookie)
    second = a.open("v")
    assert a.heads.pool.addr not in blocklisted(cluster)
    second.write(3, b"two")
    second.flush()
    with pytest.raises(LeaseLost):  # the token moved: the first handle is stale
        first.write(0, b"bad")
    first.delta.close()
    first.lease.release()  # its record is not there any more: the second's stays
    assert holder_record(a, "v")["cookie"] == second.lease.cookie
    second.close()
    with contextlib.closing(a.open("v")) as vol:
        assert vol.read(0, 6) == b"onetwo"


# -- cephx caps ----------------------------------------------------------------------------------

def cephx_user(cluster, tmp_path, name: str, mon_caps: str) -> str:
    """A cephx user with these mon caps and the OSD caps of volume leases; the path of a
    ceph.conf that finds its key."""
    mon(cluster, prefix="auth rm", entity=f"client.{name}")
    code, out = mon(cluster, prefix="auth get-or-create", entity=f"client.{name}",
                    caps=["mon", mon_caps, "osd", f"allow rwx pool={POOL}"], format="plain")
    assert code == 0, out
    keyring = tmp_path / f"{name}.keyring"
    keyring.write_text(out)
    conf = tmp_path / f"{name}.conf"
    with open(CONF) as f:
        conf.write_text(f.read() + f"\n[client.{name}]\nkeyring = {keyring}\n")
    return str(conf)


def test_a_takeover_needs_the_blocklist_cap(hosts, cluster, tmp_path, namespace):
    a = hosts(lease_s=LEASE_S)
    a.create("v", 1 * MiB, block_size=BS)
    users = {"fence-ro": "allow r",
             "fence-ok": 'allow r, allow command "osd blocklist" with blocklistop=add'}
    made: list[Volumes] = []
    try:
        for user, caps in users.items():
            conf = cephx_user(cluster, tmp_path, f"{user}-{os.getpid()}", caps)
            heads, deltas = open_rados_stores(
                f"rados://{POOL}?conf={conf}&namespace={namespace}&id={user}-{os.getpid()}",
                lease_s=LEASE_S)
            made.append(Volumes(Blocker(MemoryBlockStore()), heads, deltas))
        without, with_cap = made
        old = a.open("v")
        old.write(0, b"old")
        old.flush()
        break_lock(a, "v", old.lease.cookie)
        with pytest.raises(BackendError, match="osd blocklist") as exc:
            without.open("v")
        assert not exc.value.transient
        assert a.heads.pool.addr not in blocklisted(cluster)
        assert holder_record(a, "v")["addr"] == a.heads.pool.addr  # nothing moved
        with contextlib.closing(with_cap.open("v")) as vol:  # the lock was let go
            assert a.heads.pool.addr in blocklisted(cluster)
            assert vol.read(0, 3) == b"old"
            vol.write(0, b"new")
    finally:
        for vols in made:
            vols.close()
        for user in users:
            mon(cluster, prefix="auth rm", entity=f"client.{user}-{os.getpid()}")
    listed = blocklisted(cluster)
    assert not {v.heads.pool.addr for v in made} & listed


# -- the NBD server ------------------------------------------------------------------------------

NBD_SERVER = textwrap.dedent("""
    import sys
    from archipelago import Volumes
    from archipelago.nbd.server import NbdServer
    from archipelago.rados import open_rados_stores
    from pithos.blocker import Blocker, MemoryBlockStore
    url, lease_s = sys.argv[1], int(sys.argv[2])
    heads, deltas = open_rados_stores(url, lease_s=lease_s)
    vols = Volumes(Blocker(MemoryBlockStore()), heads, deltas)
    server = NbdServer(vols, port=0)
    try:
        server.serve_forever(lambda addr: print(addr, heads.pool.addr, flush=True))
    finally:
        vols.close()
""")


class QemuIo:
    """An interactive qemu-io on one NBD connection, one command at a time."""

    PROMPT = b"qemu-io> "

    def __init__(self, uri: str) -> None:
        self.proc = subprocess.Popen(["qemu-io", "-f", "raw", uri], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._answer()  # the first prompt: connected (the server has opened the volume)

    def _answer(self, timeout_s: float = 60) -> str:
        assert self.proc.stdout is not None
        out = b""
        deadline = time.monotonic() + timeout_s
        while not out.endswith(self.PROMPT):  # each answer ends with the next prompt
            assert readable(self.proc.stdout, deadline - time.monotonic()), \
                f"qemu-io did not answer: {out!r}"
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            assert chunk, f"qemu-io exited: {out!r}"
            out += chunk
        return out.decode()

    def run(self, command: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()
        return self._answer()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


@pytest.mark.skipif(shutil.which("qemu-io") is None, reason="qemu-utils not installed")
def test_a_stalled_nbd_server_answers_errors(hosts, url, cluster):
    a = hosts(lease_s=LEASE_S)
    a.create("v", 8 * MiB, block_size=BS)
    server = subprocess.Popen([sys.executable, "-c", NBD_SERVER, url, str(LEASE_S)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    client = None
    stale = ""
    try:
        address, stale = readline(server).decode().split()
        client = QemuIo(f"nbd://{address}/v")
        assert "wrote 65536/65536" in client.run("write -P 0xa1 0 64k")
        assert "failed" not in client.run("flush")
        server.send_signal(signal.SIGSTOP)
        b = hosts(lease_s=LEASE_S, lease_wait_s=LEASE_S + 10)
        with contextlib.closing(b.open("v")) as vol:
            assert stale in blocklisted(cluster)
            assert vol.read(0, 64 * KiB) == b"\xa1" * (64 * KiB)
            vol.write(0, b"\xb2" * (64 * KiB))
        server.send_signal(signal.SIGCONT)
        # (qemu sends no FLUSH while no write succeeded since the last one: flushes are
        # checked in process, above.)
        out = client.run("write -P 0xc3 0 64k")
        assert "write failed: Operation not permitted" in out, out
        out = client.run("write -z 64k 64k")
        assert "write failed: Operation not permitted" in out, out
        out = client.run("read 0 4k")  # even reads: the fenced client's are refused
        assert "read failed: Input/output error" in out, out
    finally:
        if client is not None:
            client.close()
        if server.poll() is None:
            server.send_signal(signal.SIGCONT)
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
        end(server)
        if stale:
            unblock(cluster, stale)
    with contextlib.closing(hosts().open("v")) as vol:
        assert vol.read(0, 64 * KiB) == b"\xb2" * (64 * KiB)

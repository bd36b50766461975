"""`pithos store scrub`: every block verified at a bounded rate, a damaged one quarantined and
the maps that need it named; `pithos store fsck` reports the quarantine; the next put of the
content heals it.  Real subprocesses on a real data directory, and the job itself on every
block store the contract suite covers."""

from __future__ import annotations

import contextlib
import json
import os
import random

import pytest

from pithos.blocker import Blocker, LocalBlockStore, MemoryBlockStore
from pithos.core.hashing import block_hash
from pithos.mapper import Mapper
from pithos.mapper.scrub import Pacer, scrub
from tests import block_damage

MiB = 1 << 20


def flip(path, offset: int) -> None:
    """One byte of a stored file flips, as a failing disk would."""
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x10]))


def test_scrub_quarantines_a_flipped_byte_fsck_reports_it_and_a_put_heals(pithos_cli,
                                                                          tmp_path):
    data = random.Random(7).randbytes(9 * MiB + 123)
    src = tmp_path / "f"
    src.write_bytes(data)
    root = pithos_cli("store", "put", str(src)).stdout.decode().split()[0]
    clean = pithos_cli("store", "scrub", "--json")
    assert json.loads(clean.stdout)["clean"] is True
    assert json.loads(clean.stdout)["blocks_checked"] == 4  # three blocks and the map page

    victim = block_hash(data[4 * MiB:8 * MiB]).hex()
    blocks = pithos_cli.data_dir / "blocks"
    flip(blocks / victim[:2] / victim, 2 * MiB + 5)
    found = pithos_cli("store", "scrub", "--rate", "0", "--json", check=False)
    assert found.returncode == 1
    report = json.loads(found.stdout)
    assert report["clean"] is False
    assert report["corrupt"] == [victim] and report["quarantined_now"] == [victim]
    assert report["quarantined"] == [{
        "hash": victim, "healed": False, "roots": [root],
        "named_by": [f"map {root} recorded by pithos store put"]}]
    # Moved aside: no longer under its name, kept in quarantine/ for the operator.
    assert not (blocks / victim[:2] / victim).exists()
    assert (blocks / "quarantine" / victim).read_bytes() != data[4 * MiB:8 * MiB]

    # fsck reports it, a reader gets one line naming it, and scrub again finds it needed.
    fsck = pithos_cli("store", "fsck", "--json", check=False)
    assert fsck.returncode == 1
    checked = json.loads(fsck.stdout)
    assert checked["corrupt"] == [victim] and checked["missing"] == []
    assert checked["quarantined"][0]["roots"] == [root]
    text = pithos_cli("store", "fsck", check=False).stdout.decode()
    assert f"quarantined block {victim}: named by map {root}" in text
    get = pithos_cli("store", "get", root, check=False)
    assert get.returncode == 1 and b"quarantined" in get.stderr and victim.encode() in get.stderr
    assert get.stderr.count(b"\n") == 1
    assert pithos_cli("store", "scrub", check=False).returncode == 1

    # The same content put again is stored afresh: everything reads, and is clean again.
    pithos_cli("store", "put", str(src))
    assert pithos_cli("store", "get", root).stdout == data
    healed = json.loads(pithos_cli("store", "fsck", "--json").stdout)
    assert healed["clean"] is True
    assert healed["quarantined"] == [{"hash": victim, "healed": True, "roots": [],
                                      "named_by": []}]
    again = pithos_cli("store", "scrub")
    assert b"(1 healed)" in again.stdout and again.stdout.endswith(b"clean\n")


def test_scrub_names_the_volumes_and_snapshots_that_need_a_quarantined_block(pithos_cli):
    from archipelago import Volumes

    pithos_cli("store", "stats")  # makes the data directory
    vols = Volumes.local(str(pithos_cli.data_dir))
    try:
        vols.create("disk", 8 * MiB)
        with contextlib.closing(vols.open("disk")) as vol:
            vol.write(0, random.Random(3).randbytes(4 * MiB))
            vol.flush()
        snap = vols.snapshot("disk", "disk-1")
        vols.clone("disk-1", "copy")
        first = next(iter(vols.mapper(4 * MiB).entries(bytes.fromhex(snap.root))))[0]
    finally:
        vols.close()
    flip(pithos_cli.data_dir / "blocks" / first.hex()[:2] / first.hex(), 100)
    found = pithos_cli("store", "scrub", check=False)
    assert found.returncode == 1
    line = next(x for x in found.stdout.decode().splitlines()
                if x.startswith(f"quarantined block {first.hex()}"))
    assert "snapshot disk-1" in line and "volume copy" in line


def test_a_clean_scrub_exits_0_and_a_negative_rate_is_refused(pithos_cli):
    assert pithos_cli("store", "scrub").stdout.endswith(b"clean\n")
    bad = pithos_cli("store", "scrub", "--rate", "-1", check=False)
    assert bad.returncode == 1 and bad.stderr.count(b"\n") == 1


class FakeClock:
    """Time that passes only when the scrub sleeps (or the test says so)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_the_pacer_keeps_the_average_rate_under_its_bound():
    clock = FakeClock()
    pacer = Pacer(1000.0, clock, clock.sleep)
    pacer.account(500)  # 0.5 s of work done at once: wait until it is due
    assert clock.slept == [0.5]
    clock.now += 2.0  # slower than the bound: no wait
    pacer.account(1000)
    assert clock.slept == [0.5]
    pacer.account(2000)  # 3500 bytes due at 3.5 s; it is 2.5 s
    assert clock.slept == [0.5, 1.0]
    unbounded = FakeClock()
    free = Pacer(None, unbounded, unbounded.sleep)
    free.account(10 ** 9)
    assert unbounded.slept == []


@pytest.fixture(params=["memory", "local", "packed"])
def blocker(request, tmp_path):
    # "packed": every small block a record in a pack (pithos.blocker.packs), even alone.
    store = MemoryBlockStore() if request.param == "memory" else \
        LocalBlockStore(tmp_path / "b", pack_min_batch=1 if request.param == "packed" else 5)
    b = Blocker(store)
    yield b
    b.close()


def damage(blocker: Blocker, hash_: bytes) -> None:
    store = blocker.store
    if isinstance(store, MemoryBlockStore):
        stored = store._blobs[hash_]
        store._blobs[hash_] = stored[:1] + bytes([stored[1] ^ 1]) + stored[2:]
    else:
        block_damage.flip(store, hash_, 1)  # (a file of its own, or a record in a pack)


def test_scrub_verifies_every_block_at_the_rate_and_quarantines_the_damaged(blocker):
    mapper = Mapper(blocker, block_size=64 * 1024)
    import io

    data = random.Random(5).randbytes(1 * MiB)
    root, _ = mapper.build(io.BytesIO(data))
    hashes = [h for h, _ in mapper.entries(root)]
    damage(blocker, hashes[3])
    damage(blocker, hashes[9])
    clock = FakeClock()
    report = scrub(blocker, [root], 256 * 1024.0, pacer=Pacer(256 * 1024.0, clock, clock.sleep))
    assert report.blocks == len(hashes) + 1
    assert sorted(report.corrupt) == sorted(report.quarantined) == sorted([hashes[3], hashes[9]])
    assert report.named_by == {hashes[3]: [root], hashes[9]: [root]}
    assert not report.clean
    # Every byte read was paid for at the rate: 1 MiB at 256 KiB/s is 4 s of sleep.
    assert sum(clock.slept) == pytest.approx(report.bytes_checked / (256 * 1024), rel=1e-6)
    assert blocker.store.missing(hashes) == sorted([hashes[3], hashes[9]], key=hashes.index)
    mapper.build(io.BytesIO(data))  # heals
    assert mapper.read_all(root) == data
    after = scrub(blocker, [root])
    assert after.clean and after.corrupt == [] and after.healed == {hashes[3], hashes[9]}

"""Volume heads and deltas in RADOS: every host sharing the Ceph cluster sees the same volumes.

`RadosHeadStore` and `RadosDeltaStore` implement the interfaces of heads.py and delta.py over
one pool and one namespace (by default `<block namespace>.volumes`, beside the block store's
namespace, see `open_rados_stores`).  Layout of the namespace:

    index                     omap: one key per head name (value: the nonce of its creation)
    head/<name>               the head, JSON (as head.json locally); omap `v` = its version
                              (the compare-and-swap guard), `n` = the creation nonce, `holder`
                              = the lease holder's client (JSON: addr, client, cookie, desc)
                              from its acquire until its clean release
    lease/<name>              the writer lease: an exclusive RADOS lock (`archipelago.lease`)
                              with a cookie and a duration
    delta/<name>              omap: one key per delta generation that may exist
    bits/<name>/<gen>         the overlay bitmap of one generation (one bit per 4 KiB sector);
                              omap `c.<chunk>`: chunk objects that may exist, `w.<chunk>`:
                              chunks written since the delta was last opened (to repair)
    data/<name>/<gen>/<chunk> the volume's own data for the 4 MiB chunk `<chunk>` (8 hex
                              digits) of the volume, in place, sparse; absent chunks read zeros

Heads (MUST): a put is one RADOS write op on `head/<name>`: `omap_cmp(v == expected)` then the
new JSON and version; the OSD applies the op atomically or not at all (ECANCELED: the version
moved; ENOENT: the head is gone), and acknowledges it once durable.  A create is an exclusive
create (EEXIST: the name is taken) after the name is put in `index` (so `names` is one omap
listing, not a scan of the pool); a delete removes the head under the same guard, then its index
key if it still carries the head's nonce.  `names` skips index keys whose head does not exist
(left by a crash between the two steps).

Leases (MUST): `acquire` takes the lock of `lease/<name>` with a fresh cookie and a duration of
`lease_s` seconds (a second writer gets EBUSY: Conflict; a holder that dies loses the lock when
the duration runs out), fences the previous holder if it never released (Fencing, below), then
bumps the head's token and records itself as the holder by compare-and-swap.  A thread renews the
locks every `lease_s / 3` (MUST_RENEW: a lock that expired or was taken is lost, never quietly
re-taken).  A holder trusts its lease only until `lease_s` after it sent its last successful
renewal, so it stops writing before the lock can expire on the OSD.  `check` (before every
write, zero and flush) costs nothing while the head is unchanged: the holder watches
`head/<name>`, every put notifies the watchers (and waits for their acks, up to a timeout), and
the first check after a notification re-reads the token: LeaseLost if it moved.  Without a
working watch, every check reads the head.

Fencing (MUST): a check cannot recall a write that a stalled holder (SIGSTOP, a long pause, a
partition) had already checked, or queued in librados: it could land after the next holder's.
So the holder records its RADOS client instance (its address: the one client that sends its
lock, head and delta ops) in the head's omap key `holder`, in the op that bumps the token, and
a release clears it (only while it is still its own) before unlocking, once the holder's writes
are finished (Volume.close closes the delta first).  After taking the lock, `acquire` reads
`holder`: a record left there means the previous holder never released (its lock expired or was
broken).  Unless it is this very client instance (one client's ops to one object apply in
order), `acquire` blocklists that address for `BLOCKLIST_S` (`osd blocklist add`) and waits for
the latest OSD map, then bumps the token under a guard on `holder` too (a record that changed
meanwhile is read again).  The OSDs reject every op of the fenced client from then on, those it
sent before included, and an op of ours makes an OSD first catch up with our map.  The fenced
holder's ops fail with ESHUTDOWN: its lease is lost, its delta poisoned.  A blocklist that fails
(the cephx user may not: docs/ceph.md) fails the acquire: never a takeover unfenced.  Not
covered: a thread stalled between its check and its send for longer than the entry lasts (an
op already queued in librados dies after `op_timeout_s`), and, within one process, a stalled
write of an old handle after the volume was opened again (the NBD server opens a volume again
only after all its connections ended).

Deltas (MUST), the local invariants of delta.py in RADOS terms:
- Writes are asynchronous (up to `MAX_INFLIGHT_OPS` / `MAX_INFLIGHT_BYTES` in flight); RADOS
  applies the writes of one client to one object in order, and a read waits for the writes in
  flight on its chunks.  A failed write poisons the delta: every later write and sync raises.
- Before the first write to a chunk since the delta was opened, `c.<chunk>` and `w.<chunk>` are
  set on the bitmap object (durably, one op): so after a crash the chunks that may hold data of
  unflushed writes are known without listing the pool.  Opening repairs every `w.` chunk (the
  sectors under clear bits are zeroed, a chunk with no set bit is removed), then drops the `w.`
  keys: a clear bit has a hole under it again.
- FLUSH: copy the bitmap pages changed since the last flush, wait until every write submitted
  before the copy is acknowledged (durable), then write the copied pages (one atomic write op
  per 4 MiB of pages).  A bit is never durable before the data it points to.
- Zero/trim: a whole chunk is removed; part of one is zeroed with a `zero` op (which frees the
  space, and truncates when the range reaches the object's end).

Python binding facts this module relies on (python3-rados 16.2):
- `WriteOp.zero(offset, length)` passes its arguments to `rados_write_op_zero` swapped, and a
  zero op of length 0 makes the OSD abort (`ceph_assert(op.extent.length)`).  `RadosPool.zero`
  finds the order the binding uses once per connection with a harmless probe, and never sends a
  zero of length 0.
- `lock_exclusive` creates the locked object if absent; EEXIST means the same client already
  holds the lock with that cookie, EBUSY that another does.
- `Watch.close` whose unwatch fails (ESHUTDOWN once blocklisted, a timeout) raises, but
  librados has freed the watch all the same; the binding then unwatches it again when the
  object is collected: a use after free that kills the process (SIGSEGV, or abort on
  std::bad_alloc).  A watch whose close failed is held by its `RadosPool` until the connection
  is shut down (collected then, it only complains that the connection is shut down).
- `mon_command` of `osd blocklist add` refuses an integer `expire` (EINVAL, "bad or missing
  field 'expire'"): it must be a JSON float.  `osd blocklist ls` in JSON answers two documents
  back to back, the addresses then the (empty) ranges: `[...][]`.
- `Rados.get_addrs()` is the client instance's address as the OSDs and `rados lock info` show
  it (`127.0.0.1:0/<nonce>`); the binding has no `list_lockers`.  Ops of a blocklisted client
  raise `ConnectionShutdown` (errno ESHUTDOWN); once the entry is removed or expires, the same
  connection works again.
"""

from __future__ import annotations

from archipelago.rados.deltas import RadosDelta, RadosDeltaStore
from archipelago.rados.heads import RadosHeadStore, RadosLease
from archipelago.rados.pool import (
    BLOCKLIST_S,
    CHUNK_SIZE,
    DEFAULT_LEASE_S,
    HOLDER_KEY,
    LOCK_NAME,
    MAX_INFLIGHT_BYTES,
    MAX_INFLIGHT_OPS,
    NOTIFY_TIMEOUT_MS,
    WATCH_TIMEOUT_S,
    RadosPool,
    volumes_namespace,
)
from pithos.blocker.rados_io import Blocklisted

__all__ = [
    "BLOCKLIST_S", "Blocklisted", "CHUNK_SIZE", "DEFAULT_LEASE_S", "HOLDER_KEY", "LOCK_NAME",
    "MAX_INFLIGHT_BYTES", "MAX_INFLIGHT_OPS", "NOTIFY_TIMEOUT_MS", "RadosDelta",
    "RadosDeltaStore", "RadosHeadStore", "RadosLease", "RadosPool", "WATCH_TIMEOUT_S",
    "open_rados_stores", "volumes_namespace",
]


def open_rados_stores(blocks_url: str, lease_s: int = DEFAULT_LEASE_S
                      ) -> tuple[RadosHeadStore, RadosDeltaStore]:
    """The head and delta stores that go with a `rados://` block store URL: same cluster and
    pool, namespace `<block namespace>.volumes` (see `volumes_namespace`)."""
    pool, block_ns = RadosPool.from_url(blocks_url)
    try:
        ns = volumes_namespace(block_ns)
        heads = RadosHeadStore(pool, ns, lease_s=lease_s)
        try:
            return heads, RadosDeltaStore(pool, ns)
        except BaseException:
            heads.close()
            raise
    finally:
        pool.close()  # the stores hold their own references


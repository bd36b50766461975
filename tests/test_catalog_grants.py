"""Catalog.granted_blocks / granted_user_blocks read by a statement compiled once, 500
hashes a statement (pithos.catalog.sharing.GRANTED_BATCH): the answer is exact across
batches, for a short last batch (padded), duplicates, and one owner's grants never answer
for another."""

from __future__ import annotations

from pithos.catalog.sharing import GRANTED_BATCH


def h(i: int) -> bytes:
    return i.to_bytes(4, "big") * 8


def test_grants_across_batches(catalog, container):
    acct, _ = container
    other = catalog.ensure_account("other")
    n = 2 * GRANTED_BATCH + 37  # two full batches and a short one
    granted = [h(i) for i in range(n) if i % 3 == 0]
    catalog.grant_blocks(acct, granted)
    catalog.grant_blocks(other, [h(i) for i in range(n) if i % 3 == 1])
    asked = [h(i) for i in range(n)] + [h(0), h(3)]  # duplicates in the question
    assert catalog.granted_blocks(acct, asked) == set(granted)
    assert catalog.granted_blocks(acct, [h(n - 1)]) == ({h(n - 1)} if (n - 1) % 3 == 0
                                                       else set())
    assert catalog.granted_blocks(acct, []) == set()
    # The last batch is padded with its last hash: an ungranted one stays ungranted.
    assert catalog.granted_blocks(acct, [h(0), h(1)]) == {h(0)}


def test_user_grants_across_batches(catalog, container):
    _, _ = container
    u = catalog.add_user("acct", "bob", "hash", admin=False)
    v = catalog.add_user("acct", "eve", "hash", admin=False)
    n = GRANTED_BATCH + 1
    catalog.grant_user_blocks(u.id, [h(i) for i in range(0, n, 2)])
    catalog.grant_user_blocks(v.id, [h(i) for i in range(1, n, 2)])
    assert catalog.granted_user_blocks(u.id, [h(i) for i in range(n)]) == {
        h(i) for i in range(0, n, 2)}
    assert catalog.granted_user_blocks(v.id, [h(n - 1)]) == set()


def test_grants_of_hashes_of_another_length(catalog, container):
    # (SQLite reads grants of 32-byte hashes as one blob cut by the statement: any other
    # length takes the batches, with the same answers.)
    acct, _ = container
    short = [i.to_bytes(4, "big") * 4 for i in range(40)]  # 16 bytes each
    catalog.grant_blocks(acct, short[::2])
    assert catalog.granted_blocks(acct, short) == set(short[::2])
    assert catalog.granted_blocks(acct, [*short[:3], h(1)]) == {short[0], short[2]}


def test_a_grant_is_not_synced_and_the_next_synced_write_makes_it_durable(tmp_path):
    """A POST ?blocks's grants commit without a WAL sync of their own (a grant a crash loses
    only makes the account send the block again); the next durable write syncs the WAL, and
    with it every commit before it: the grant survives a reopen."""
    from pithos.catalog import Catalog

    url = f"sqlite:///{tmp_path}/catalog.sqlite"
    catalog = Catalog(url)
    try:
        acct = catalog.ensure_account("acct")
        wal_sync = catalog._wal_sync
        assert wal_sync is not None
        bob = catalog.add_user("acct", "bob", "x", admin=False)
        syncs: list[int] = []
        fsync = wal_sync.fsync
        wal_sync.fsync = lambda fd: (syncs.append(fd), fsync(fd))[1]
        catalog.grant_blocks(acct, [h(1), h(2)])
        catalog.grant_user_blocks(bob.id, [h(3)])
        assert syncs == []
        catalog.ensure_account("other")  # a durable write: the WAL synced up to it
        assert len(syncs) == 1
    finally:
        catalog.close()
    reopened = Catalog(url)
    try:
        assert reopened.granted_blocks(reopened.ensure_account("acct"), [h(1), h(2)]) == \
            {h(1), h(2)}
    finally:
        reopened.close()

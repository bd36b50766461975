"""The block grants a server worker keeps (pithos/catalog/grant_cache.py): what it wrote or
found is answered without the catalog, what another process grants later is still found, and
an owner deleted and made again under the same id on the machine inherits nothing."""

from __future__ import annotations

import sqlite3

from pithos.catalog import Catalog
from pithos.catalog import grant_cache as gc_mod
from pithos.catalog.grant_cache import GrantCache

A, B, C, D = (bytes([n]) * 32 for n in (1, 2, 3, 4))


def test_kept_grants_answer_and_other_processes_grants_are_still_found(
        catalog_url, worker_offload, tmp_path):
    stamp = str(tmp_path / "stamp")
    worker = Catalog(catalog_url, offload=worker_offload, info_stamp=stamp)
    other = Catalog(catalog_url, offload=worker_offload, info_stamp=stamp)
    try:
        acct = other.ensure_account("acct")
        elsewhere = other.ensure_account("elsewhere")
        worker.grant_blocks(acct, [A, B])
        assert worker.granted_blocks(acct, [A, B, C]) == {A, B}
        other.grant_blocks(acct, [C])  # another worker's grant: not kept here, found anyway
        assert worker.granted_blocks(acct, [C, D, A]) == {C, A}
        assert worker.granted_blocks(elsewhere, [A, B, C]) == set()  # per owner
        if catalog_url.startswith("sqlite"):
            # Kept, not read back: the rows gone behind the catalog's back still answer
            # (rows go only with their owner, whose delete drops what is kept: below).
            with sqlite3.connect(catalog_url.removeprefix("sqlite:///")) as db:
                db.execute("DELETE FROM account_blocks")
            assert worker.granted_blocks(acct, [A, B, C]) == {A, B, C}
            assert other.granted_blocks(elsewhere, [A]) == set()
    finally:
        worker.close()
        other.close()


def test_an_owner_deleted_and_made_again_on_the_machine_inherits_no_grant(
        worker_offload, tmp_path):
    """SQLite reuses the largest id after a delete: a member made after another was deleted
    may get its id.  The delete bumps the machine's info stamp, and the worker drops what it
    kept, so the new member may name nothing the old one sent."""
    url = f"sqlite:///{tmp_path}/catalog.sqlite"
    stamp = str(tmp_path / "stamp")
    worker = Catalog(url, offload=worker_offload, info_stamp=stamp)
    cli = Catalog(url, info_stamp=stamp)  # no event loop: keeps nothing, but bumps the stamp
    try:
        cli.ensure_account("acct")
        old = cli.add_user("acct", "old", "x" * 64, admin=False)
        worker.grant_user_blocks(old.id, [A, B])
        assert worker.granted_user_blocks(old.id, [A, B]) == {A, B}
        assert cli.delete_user("acct", "old")
        new = cli.add_user("acct", "new", "x" * 64, admin=False)
        assert new.id == old.id  # (what makes this matter)
        assert worker.granted_user_blocks(new.id, [A, B]) == set()
    finally:
        worker.close()
        cli.close()


def test_outside_a_server_worker_nothing_is_kept(tmp_path):
    url = f"sqlite:///{tmp_path}/catalog.sqlite"
    cat = Catalog(url)
    try:
        acct = cat.ensure_account("acct")
        cat.grant_blocks(acct, [A])
        with sqlite3.connect(f"{tmp_path}/catalog.sqlite") as db:
            db.execute("DELETE FROM account_blocks")
        assert cat.granted_blocks(acct, [A]) == set()
    finally:
        cat.close()


def test_the_cache_drops_everything_on_a_new_tag_with_age_and_past_its_bound(monkeypatch):
    tag = [(1, 0)]
    cache = GrantCache(lambda: tag[0])
    cache.keep("account", 1, [A, B], cache.tag())
    assert cache.known("account", 1, [A, B, C], cache.tag()) == {A, B}
    assert cache.known("user", 1, [A], cache.tag()) == set()
    tag[0] = (2, 0)  # a write somewhere on the machine
    assert cache.known("account", 1, [A], cache.tag()) == set()
    cache.keep("account", 1, [A], (1, 0))  # read before that write: kept under the old tag,
    assert cache.known("account", 1, [A], cache.tag()) == set()  # and not trusted now
    cache.keep("account", 1, [A], cache.tag())
    assert cache.known("account", 1, [A], cache.tag()) == {A}
    monkeypatch.setattr(gc_mod, "GRANTS_MAX", 3)
    cache.keep("account", 2, [B, C, D], cache.tag())  # 4 kept: past the bound, all dropped
    assert cache.known("account", 1, [A], cache.tag()) == set()
    monkeypatch.setattr(gc_mod, "GRANTS_TTL_S", 0.0)
    tag[0] = (3, 0)  # (kept from now on for no time at all)
    cache.keep("account", 1, [A], cache.tag())
    assert cache.known("account", 1, [A], cache.tag()) == set()  # aged out

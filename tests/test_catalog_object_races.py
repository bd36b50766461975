"""A write that finds an object by joining its row to its current version sees it while an
overwrite of it commits (PostgreSQL).

A join locked FOR UPDATE that waits for another transaction's new version re-checks the join
on the object's newer row against the old version row; they no longer join and the object is
dropped: a DELETE or POST racing an overwrite answered 404 for an object that always existed
(found through the HTTP API by tests/test_batched_commit_adversarial.py; batched commits hold
the row longer).  The object's row is now locked by a statement of its own first
(CatalogEngine._lock_object).  Here a session plays the overwrite, holding the row with a new
current version not yet committed, and each write must wait for it and then find the object."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text

from tests.pg_writers import box, pg_catalog, pg_url, put, start_blocked

__all__ = ["pg_catalog", "pg_url"]  # (fixtures)

WRITES = {
    "delete": lambda cat, cid: cat.delete_object(cid, "o"),
    "post": lambda cat, cid: cat.update_object_meta(cid, "o", {"user": {"k": "v"}},
                                                    delete_at=None),
    "delete-marker": lambda cat, cid: cat.put_delete_marker(cid, "o", "application/x-deleted"),
    "copy": lambda cat, cid: put(cat, cid, "copy", source=cat.object(cid, "o")),
}


@pytest.mark.parametrize("write", sorted(WRITES))
def test_a_write_racing_an_overwrite_finds_the_object(pg_catalog, pg_url, write):
    cat = pg_catalog
    cid = box(cat)
    first = put(cat, cid, "o")
    source = cat.object(cid, "o") if write == "copy" else None
    other = create_engine(pg_url)
    try:
        with other.connect() as overwrite:
            newer = overwrite.execute(text(
                "INSERT INTO versions (object_id, vid, root, size, etag, content_type, "
                "created, deleted) VALUES (:o, 'newer', :r, 5, :e, 'text/plain', 1, false) "
                "RETURNING id"), {"o": first.object_id, "r": b"\x02" * 32, "e": "f" * 32}
            ).scalar_one()
            overwrite.execute(text("UPDATE objects SET current_id = :v WHERE id = :o"),
                              {"v": newer, "o": first.object_id})
            outcome: list[object] = []
            if write == "copy":
                # The copy names the version it read: the overwrite makes it stale (Conflict,
                # retry), never "the source object is gone".
                thread, errors = start_blocked(
                    overwrite, lambda: outcome.append(put(cat, cid, "copy", source=source)),
                    "the object's row")
            else:
                thread, errors = start_blocked(
                    overwrite, lambda: outcome.append(WRITES[write](cat, cid)),
                    "the object's row")
            overwrite.commit()
        thread.join(60)
        assert not thread.is_alive()
        if write == "copy":
            assert len(errors) == 1 and "changed meanwhile" in str(errors[0]), errors
            return
        assert not errors, errors
        if write == "delete":
            assert outcome == [True]
        if write == "post":
            assert outcome[0].meta["user"] == {"k": "v"} and outcome[0].size == 5
        assert (cat.object(cid, "o") is None) == (write != "post")
    finally:
        other.dispose()


def test_a_delete_marker_racing_the_first_put_of_a_name_counts_what_it_deletes(
        pg_catalog, pg_url):
    """No row to lock yet: the marker's write waits for the first PUT's insert of the
    object's row and must then delete the object that PUT made visible, counted (an
    uncounted marker over it left the container counting one object more than it lists)."""
    cat = pg_catalog
    cid = box(cat)
    other = create_engine(pg_url)
    try:
        with other.connect() as first_put:
            obj = first_put.execute(text(
                "INSERT INTO objects (container_id, name, uuid) VALUES (:c, 'o', 'u') "
                "RETURNING id"), {"c": cid}).scalar_one()
            version = first_put.execute(text(
                "INSERT INTO versions (object_id, vid, root, size, etag, content_type, "
                "created, deleted) VALUES (:o, 'first', :r, 5, :e, 'text/plain', 1, false) "
                "RETURNING id"), {"o": obj, "r": b"\x02" * 32, "e": "f" * 32}).scalar_one()
            first_put.execute(text("UPDATE objects SET current_id = :v WHERE id = :o"),
                              {"v": version, "o": obj})
            first_put.execute(text("UPDATE container_stats SET objects = objects + 1, "
                                   "bytes = bytes + 5 WHERE container_id = :c AND shard = 0"),
                              {"c": cid})
            outcome: list[object] = []
            thread, errors = start_blocked(
                first_put, lambda: outcome.append(
                    cat.put_delete_marker(cid, "o", "application/x-deleted")),
                "the first PUT's object row")
            first_put.commit()
        thread.join(60)
        assert not thread.is_alive() and not errors, errors
        assert outcome[0].existed
        assert cat.object(cid, "o") is None
        counted = cat.container(cat.container_account(cid), "c")
        assert (counted.objects, counted.bytes) == (0, 0), counted
    finally:
        other.dispose()

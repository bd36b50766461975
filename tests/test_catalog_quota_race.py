"""A container's or an account's byte quota is exact under concurrent commits on PostgreSQL.

Its usage is a sum over the container's stat shards, read in READ COMMITTED: two commits on
two connections each missed the other's growth and both passed (seen through the HTTP API:
forty concurrent 1000-byte PUTs against a 10,000-byte quota stored more than ten).  A commit
that checks a quota now first locks the row the quota lives on (pg_functions.py, migration
15; Catalog._check_quota for the Python path).  Here a session plays a committing writer that
took that lock and grew the usage, and the test's put must wait for it and then see its
growth: without the lock it reads the old sum and passes."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text

from pithos.core.errors import QuotaExceeded
from tests.pg_writers import box, pg_catalog, pg_url, put, start_blocked

__all__ = ["pg_catalog", "pg_url"]  # (fixtures)


@pytest.mark.parametrize("path", ["one-call", "python"])
@pytest.mark.parametrize("quota", ["container", "account"])
def test_a_writer_waits_for_the_quota_row_and_sees_the_growth_before_it(
        pg_catalog, pg_url, quota, path):
    cat = pg_catalog
    if quota == "container":
        cid = box(cat, quota_bytes=1500)
    else:
        cid = box(cat)
        cat.set_account_quota("acct", 1500)
    source = put(cat, cid, "source", size=0)  # (a copy takes the Python path)
    kw = {"source": source} if path == "python" else {}
    other = create_engine(pg_url)
    try:
        with other.connect() as writer:
            # A writer that checked the quota and grew the usage by 1000, not yet committed.
            table, row = (("containers", cid) if quota == "container" else
                          ("accounts", cat.container_account(cid)))
            writer.execute(text(f"SELECT 1 FROM {table} WHERE id = :i FOR NO KEY UPDATE"),
                           {"i": row})
            writer.execute(text("UPDATE container_stats SET bytes = bytes + 1000 "
                                "WHERE container_id = :c AND shard = 0"), {"c": cid})
            thread, errors = start_blocked(
                writer, lambda: put(cat, cid, "second", size=1000, **kw),
                f"the {quota}'s row")
            writer.commit()
        thread.join(60)
        assert not thread.is_alive()
        assert len(errors) == 1 and isinstance(errors[0], QuotaExceeded), errors
        assert cat.object(cid, "second") is None
    finally:
        other.dispose()

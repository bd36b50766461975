"""The confirmer's scan for declared ETags' marks (Catalog.declared_etags, run by every server
worker: pithos/objects/declared_etags.py) reads the marks' own index, on SQLite and on
PostgreSQL, not every version's metadata after its cursor.

The statement checked is the one the catalog runs (caught as it goes to the driver), with its
parameters.  On PostgreSQL it is planned as a generic plan too: psycopg prepares a statement
run five times, and a plan made for no parameter values in particular must still find the
index (a partial index whose predicate only a parameter matched would be left out)."""

from __future__ import annotations

import re

from sqlalchemy import event, text

from pithos.catalog import schema as s
from pithos.objects.declared_etags import declared

ROOT = b"r" * 32
INDEX = "version_meta_etag_marks"


def _scan_statement(catalog) -> tuple[str, object]:
    """(SQL, parameters) of the scan as the catalog sends it to the driver."""
    seen: list[tuple[str, object]] = []

    def catch(conn, cursor, statement, parameters, context, executemany):
        if "version_meta" in statement:
            seen.append((statement, parameters))

    event.listen(catalog.engine, "before_cursor_execute", catch)
    try:
        catalog.declared_etags(10, 0)
    finally:
        event.remove(catalog.engine, "before_cursor_execute", catch)
    assert len(seen) == 1, seen
    return seen[0]


def _literal(value: object) -> str:
    if isinstance(value, int):
        return str(value)
    assert isinstance(value, str)
    return "'" + value.replace("'", "''") + "'"


def _plans(catalog) -> list[str]:
    """The scan's query plans: SQLite's; PostgreSQL's as run and as a generic plan."""
    statement, parameters = _scan_statement(catalog)
    with catalog.engine.connect() as conn:
        if catalog.is_sqlite:
            rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)
            return ["\n".join(str(r[-1]) for r in rows)]
        # Few rows: the planner's choice must not hang on the table sizes of a test.
        conn.exec_driver_sql("SET enable_seqscan = off")
        conn.exec_driver_sql("ANALYZE version_meta")
        custom = "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + statement,
                                                              parameters))
        assert isinstance(parameters, dict)
        names = re.findall(r"%\((\w+)\)s", statement)
        numbered = statement
        for n, name in enumerate(names, 1):
            numbered = numbered.replace(f"%({name})s", f"${n}", 1)
        conn.exec_driver_sql(f"PREPARE marks_scan AS {numbered}".replace("%%", "%"))
        conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
        arguments = ", ".join(_literal(parameters[name]) for name in names)
        generic = "\n".join(r[0] for r in conn.execute(
            text(f"EXPLAIN EXECUTE marks_scan({arguments})")))
        conn.exec_driver_sql("DEALLOCATE marks_scan")
        conn.rollback()
        return [custom, generic]


def test_the_scan_for_declared_etags_uses_the_marks_index(catalog, container):
    _, info = container
    # Versions with metadata of their own before and among the marked ones: a scan by the
    # metadata's primary key would walk them all.
    for i in range(60):
        meta = {"user": {f"k{j}": "v" for j in range(3)}}
        if i % 20 == 7:
            meta.update(declared("e" * 32))
        catalog.put_version(info.id, f"o{i}", root=ROOT, size=1, etag="e" * 32,
                            content_type="application/octet-stream", meta=meta)
    assert len(catalog.declared_etags(10, 0)) == 3
    for plan in _plans(catalog):
        assert INDEX in plan, plan


def test_the_marks_index_is_made_by_its_migration(tmp_path):
    """A catalog from before the index gets it when opened (the migration's own step)."""
    from pithos.catalog import Catalog

    url = f"sqlite:///{tmp_path}/catalog.sqlite"
    cat = Catalog(url)
    with cat.engine.begin() as conn:
        conn.exec_driver_sql(f"DROP INDEX {INDEX}")
        conn.execute(s.schema_version.update().values(version=s.MIGRATION_ETAG_MARKS - 1))
    cat.close()
    cat = Catalog(url)
    with cat.engine.connect() as conn:
        names = {r[0] for r in conn.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE type = 'index'")}
    cat.close()
    assert INDEX in names

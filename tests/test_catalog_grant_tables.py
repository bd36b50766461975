"""The catalog's block grants (account_blocks, user_blocks) as SQLite stores them: WITHOUT
ROWID tables, each row written once in its key's B-tree, in a new catalog and, by
migration 17, in one made before (its grants kept, its foreign keys still cascading)."""

from __future__ import annotations

import os
import sqlite3

from pithos.catalog import Catalog

# The tables as migrations 2 and 4 made them: rowid tables, their key an index beside.
_OLD_TABLES = {
    "account_blocks": "CREATE TABLE account_blocks (account_id INTEGER NOT NULL, "
                      "hash BLOB NOT NULL, PRIMARY KEY (account_id, hash), "
                      "FOREIGN KEY(account_id) REFERENCES accounts (id) ON DELETE CASCADE)",
    "user_blocks": "CREATE TABLE user_blocks (user_id INTEGER NOT NULL, hash BLOB NOT NULL, "
                   "PRIMARY KEY (user_id, hash), "
                   "FOREIGN KEY(user_id) REFERENCES users (id) ON DELETE CASCADE)",
}


def table_sql(path, name: str) -> str:
    with sqlite3.connect(path) as db:
        return str(db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?",
                              (name,)).fetchone()[0])


def test_a_new_catalog_keeps_its_grants_without_rowid(tmp_path):
    path = tmp_path / "new.sqlite"
    Catalog(f"sqlite:///{path}").close()
    for name in _OLD_TABLES:
        assert "WITHOUT ROWID" in table_sql(path, name).upper()


def test_migration_17_rebuilds_older_grant_tables_keeping_every_grant(tmp_path):
    path = tmp_path / "old.sqlite"
    cat = Catalog(f"sqlite:///{path}")
    alice = cat.ensure_account("alice")
    bob = cat.ensure_account("bob")
    carol = cat.add_user("alice", "carol", "hash", admin=False)
    mine = [os.urandom(32) for _ in range(3000)]
    theirs = [os.urandom(32) for _ in range(50)]
    cat.grant_blocks(alice, mine)
    cat.grant_blocks(bob, theirs)
    cat.grant_user_blocks(carol.id, mine[:100])
    cat.close()
    # Back to the tables of a catalog made before migration 17, rows and all.
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN")
    for name, made in _OLD_TABLES.items():
        db.execute(f"ALTER TABLE {name} RENAME TO {name}_x")
        db.execute(made)
        db.execute(f"INSERT INTO {name} SELECT * FROM {name}_x")
        db.execute(f"DROP TABLE {name}_x")
    db.execute("UPDATE schema_version SET version = 16")
    db.execute("COMMIT")
    db.close()
    assert "WITHOUT ROWID" not in table_sql(path, "account_blocks").upper()

    cat = Catalog(f"sqlite:///{path}")
    try:
        assert cat.schema_found == 16
        for name in _OLD_TABLES:
            assert "WITHOUT ROWID" in table_sql(path, name).upper()
        assert cat.granted_blocks(alice, mine + theirs) == set(mine)
        assert cat.granted_blocks(bob, mine + theirs) == set(theirs)
        assert cat.granted_user_blocks(carol.id, mine) == set(mine[:100])
        cat.grant_blocks(alice, theirs[:1])  # (and it takes new ones)
        assert cat.granted_blocks(alice, theirs) == {theirs[0]}
    finally:
        cat.close()
    # The foreign keys came along: an account's or a user's grants go with it.
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("DELETE FROM accounts WHERE id = ?", (bob,))
        db.execute("DELETE FROM users WHERE id = ?", (carol.id,))
        assert db.execute("SELECT COUNT(*) FROM account_blocks WHERE account_id = ?",
                          (bob,)).fetchone()[0] == 0
        assert db.execute("SELECT COUNT(*) FROM user_blocks").fetchone()[0] == 0
        assert db.execute("SELECT COUNT(*) FROM account_blocks").fetchone()[0] == 3001
    finally:
        db.close()

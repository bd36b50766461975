"""The three-way decision table of the sync client (pithos.sync.plan), path by path: pure,
no server."""

from __future__ import annotations

import hashlib

import pytest

from pithos.sync import plan as P
from pithos.sync.state import BaseEntry, Chunk, LocalFile, RemoteEntry


def md5(text: str | None) -> str | None:
    return None if text is None else hashlib.md5(text.encode()).hexdigest()


def sides(path: str, b: str | None, lo: str | None, r: str | None):
    base = {path: BaseEntry(path, len(b), md5(b), 1, 1)} if b is not None else {}
    local = ({path: LocalFile(path, len(lo), 1, 1, md5(lo), (Chunk(b"\0" * 32, len(lo)),))}
             if lo is not None else {})
    remote = {path: RemoteEntry(path, len(r), md5(r))} if r is not None else {}
    return base, local, remote


@pytest.mark.parametrize(("b", "lo", "r", "kind"), [
    (None, "x", None, P.UPLOAD),            # new here
    (None, None, "x", P.DOWNLOAD),          # new there
    (None, "x", "x", P.AGREE),              # the same new content on both sides
    (None, "x", "y", P.CONFLICT),           # both created the name differently
    ("x", "x", "x", None),                  # nothing changed
    ("x", "y", "x", P.UPLOAD),              # edited here
    ("x", "x", "y", P.DOWNLOAD),            # edited there
    ("x", "y", "y", P.AGREE),               # the same edit on both sides
    ("x", "y", "z", P.CONFLICT),            # both edited
    ("x", None, "x", P.DELETE_REMOTE),      # deleted here
    ("x", "x", None, P.DELETE_LOCAL),       # deleted there
    ("x", None, None, P.FORGET),            # deleted on both sides
    ("x", None, "y", P.DOWNLOAD),           # deleted here, edited there: the edit wins
    ("x", "y", None, P.UPLOAD),             # edited here, deleted there: the edit wins
])
def test_decision_table(b, lo, r, kind):
    actions = P.plan(*sides("f", b, lo, r))
    assert [a.kind for a in actions] == ([kind] if kind else [])
    if kind == P.UPLOAD:
        # Conditional: If-Match the remote ETag we saw, If-None-Match: * when there was none.
        assert (actions[0].remote.md5 if actions[0].remote else None) == md5(r)


def test_unknown_paths_are_left_alone():
    # A file that could not be read this pass is not a deletion.
    base, local, remote = sides("f", "x", None, "x")
    assert P.plan(base, local, remote, unknown={"f"}) == []


def test_renames_both_ways():
    base = {"old": BaseEntry("old", 1, md5("a"), 1, 1),
            "gone": BaseEntry("gone", 1, md5("b"), 1, 1)}
    local = {"new": LocalFile("new", 1, 1, 1, md5("a"), ()),
             "gone": LocalFile("gone", 1, 1, 1, md5("b"), ())}
    remote = {"old": RemoteEntry("old", 1, md5("a")), "moved": RemoteEntry("moved", 1, md5("b"))}
    actions = P.plan(base, local, remote)
    assert sorted((a.kind, a.source, a.path) for a in actions) == [
        (P.MOVE_LOCAL, "gone", "moved"), (P.MOVE_REMOTE, "old", "new")]


def test_remote_names_that_cannot_be_files_are_skipped():
    remote = {n: RemoteEntry(n, 1, md5("a")) for n in
              ("ok", "dir/", "../up", "a//b", "./x", ".pithos-sync/state.sqlite", "ignored.tmp")}
    actions = P.plan({}, {}, remote, ignored=lambda p: p.endswith(".tmp"))
    assert [a.path for a in actions] == ["ok"]


def test_new_name_of_remote_content_is_a_copy():
    # A duplicate of a synced file is copied on the server (no data, no hashmap), from an
    # object this plan leaves alone; a source being deleted is not used.
    base = {"a": BaseEntry("a", 1, md5("a"), 1, 1), "b": BaseEntry("b", 1, md5("b"), 1, 1)}
    local = {"a": LocalFile("a", 1, 1, 1, md5("a"), ()),
             "copy-of-a": LocalFile("copy-of-a", 1, 1, 1, md5("a"), ()),
             "copy-of-b": LocalFile("copy-of-b", 1, 1, 1, md5("b"), ()),
             "new": LocalFile("new", 1, 1, 1, md5("n"), ())}
    remote = {"a": RemoteEntry("a", 1, md5("a")), "b": RemoteEntry("b", 1, md5("b")),
              "old-b": RemoteEntry("old-b", 1, md5("b"))}
    base["old-b"] = BaseEntry("old-b", 1, md5("b"), 1, 1)
    local["b"] = LocalFile("b", 1, 1, 1, md5("changed"), ())
    actions = P.plan(base, local, remote)
    got = sorted((a.kind, a.source, a.path) for a in actions)
    # copy-of-b pairs with old-b's delete as a move; copy-of-a copies a; b is uploaded.
    assert got == [(P.COPY_REMOTE, "a", "copy-of-a"), (P.MOVE_REMOTE, "old-b", "copy-of-b"),
                   (P.UPLOAD, None, "b"), (P.UPLOAD, None, "new")]

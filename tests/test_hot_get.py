"""Pieces of the small GET's path kept per worker (issue 27): transaction ids drawn in
batches stay distinct, also across a fork; the title-cased header names kept by the API are
never system metadata, which still goes to the layers and never to the client."""

from __future__ import annotations

import os

from pithos.api import swift
from pithos.api.app import _title
from pithos.api.subrequest import SYSMETA_KEY, sysmeta_out


def test_transaction_ids_are_distinct_and_a_forked_worker_draws_its_own() -> None:
    ids = [swift._txid() for _ in range(2000)]  # (several batches)
    assert len(set(ids)) == len(ids)
    assert all(len(t) == 26 and t.startswith("tx") and int(t[2:], 16) >= 0 for t in ids)
    assert swift._txids  # (what the parent has left: a child must not serve it)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first ids are none of its parent's
        try:
            left = len(swift._txids)
            os.write(write, f"{left} {swift._txid()}".encode())
        finally:
            os._exit(0)
    os.close(write)
    left, child_id = os.read(read, 100).decode().split()
    os.close(read)
    os.waitpid(pid, 0)
    assert left == "0"
    assert child_id not in swift._txids and child_id not in ids


def test_system_metadata_never_reaches_the_client_whatever_names_came_before() -> None:
    titled: dict[str, str] = {}
    headers = [("etag", "e"), ("x-object-sysmeta-symlink-target", "c/o"),
               ("x-object-meta-color", "red"), ("x-container-sysmeta-a", "1")]
    for _ in range(3):  # (the names kept after the first response)
        env: dict = {}
        out = sysmeta_out(env, headers, lambda k: titled.setdefault(k, _title(k)), titled)
        assert out == [("Etag", "e"), ("X-Object-Meta-Color", "red")]
        assert env[SYSMETA_KEY] == {"x-object-sysmeta-symlink-target": "c/o",
                                    "x-container-sysmeta-a": "1"}
    assert set(titled) == {"etag", "x-object-meta-color"}
    # An answer of known names only: titled in one pass, values and order as given.
    plain = [("x-object-meta-color", "blue"), ("etag", "f"), ("etag", "g")]
    env = {}
    assert sysmeta_out(env, plain, lambda k: "never called", titled) == [
        ("X-Object-Meta-Color", "blue"), ("Etag", "f"), ("Etag", "g")]
    assert SYSMETA_KEY not in env


def test_the_gatekeeper_drops_a_clients_system_metadata_and_nothing_else() -> None:
    from pithos.api.subrequest import Gatekeeper

    seen: list[dict] = []
    gate = Gatekeeper(lambda env, start_response: seen.append(dict(env)) or [])
    plain = {"PATH_INFO": "/v1/a/c/o", "HTTP_X_OBJECT_META_A_SYSMETA_B": "kept",
             "HTTP_X_AUTH_TOKEN": "t", SYSMETA_KEY: {"stale": "1"}}
    gate(dict(plain), None)
    assert seen[-1] == {k: v for k, v in plain.items() if k != SYSMETA_KEY}
    gate({**plain, "HTTP_X_OBJECT_SYSMETA_SYMLINK_TARGET": "c/x",
          "HTTP_X_CONTAINER_SYSMETA_Y": "1"}, None)
    assert seen[-1] == {k: v for k, v in plain.items() if k != SYSMETA_KEY}

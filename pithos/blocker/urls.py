"""Choosing a block store by URL, in one place (the entry points call it at start-up).

    file:///srv/pithos/blocks    LocalBlockStore (a plain path works too)
    rados://POOL?conf=/etc/ceph/ceph.conf&namespace=NS&id=admin
                                 RadosBlockStore (rados imported only then)
    memory://                    MemoryBlockStore (tests, experiments)
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from pithos.blocker.local import LocalBlockStore
from pithos.blocker.memory import MemoryBlockStore
from pithos.blocker.store import BlockStore
from pithos.core.errors import InvalidArgument
from pithos.core.offload import Offload


def open_block_store(url: str, offload: Offload | None = None,
                     keep_free_bytes: int = 0) -> BlockStore:
    """The store at `url`; `keep_free_bytes` is LocalBlockStore's (other stores ignore it)."""
    parts = urlsplit(url)
    if parts.scheme in ("", "file"):
        path = unquote(parts.path if parts.scheme else url)
        if not path:
            raise InvalidArgument(f"no path in block store URL {url!r}")
        return LocalBlockStore(path, offload=offload, keep_free_bytes=keep_free_bytes)
    if parts.scheme == "memory":
        return MemoryBlockStore()
    if parts.scheme == "rados":
        from pithos.blocker.rados import RadosBlockStore
        from pithos.blocker.rados_io import parse_rados_url

        pool, conf, namespace, client_id = parse_rados_url(url)
        return RadosBlockStore(pool, conf, namespace=namespace, client_id=client_id,
                               offload=offload)
    raise InvalidArgument(f"unknown block store URL {url!r} (file://, rados://, memory://)")

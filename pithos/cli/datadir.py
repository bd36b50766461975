"""The embedded data directory: what lives where under `--data-dir`.

    blocks/         the LocalBlockStore (blocks and map pages)
    catalog.sqlite  the object catalog (SQLite, WAL); catalog.sqlite-reserve, room kept for
                    getting out of a full disk (pithos/catalog/space.py)
    roots.log   maps stored with `pithos store put`, one "<root-hex> <size>" line each; the
                roots fsck walks (the catalog replaces it for the object API)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

from pithos.blocker import DEFAULT_BLOCK_SIZE, Blocker
from pithos.blocker.urls import open_block_store
from pithos.catalog import Catalog, local_url
from pithos.catalog.space import RESERVE_BYTES
from pithos.config import Storage
from pithos.core.errors import BackendError
from pithos.core.hashing import from_hex, to_hex
from pithos.core.offload import Offload
from pithos.mapper import Mapper

# A local block store leaves this much of its filesystem free (its writes fail with NoSpace,
# 507, below it): room for the catalog's writes when they share it.  More than the catalog's
# reserve, so that uploads never take the room a delete gave up on a full disk.
KEEP_FREE_BYTES = 2 * RESERVE_BYTES


class DataDir:
    """The storage an entry point works on: the block store and catalog named by `storage`
    (by default both inside the data directory) and the data directory's local files."""

    def __init__(self, storage: Storage | str, block_size: int = DEFAULT_BLOCK_SIZE,
                 offload: Offload | None = None) -> None:
        if isinstance(storage, str):
            storage = Storage(storage, "file://" + os.path.abspath(
                os.path.join(storage, "blocks")), local_url(storage))
        self.storage = storage
        path = self.path = storage.data_dir
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise BackendError(f"cannot create data directory {path}: {exc.strerror}") from exc
        self.store = open_block_store(storage.blocks, offload=offload,
                                      keep_free_bytes=KEEP_FREE_BYTES)
        self.blocker = Blocker(self.store, block_size=max(block_size, DEFAULT_BLOCK_SIZE),
                               offload=offload)
        self.mapper = Mapper(self.blocker, block_size=block_size)
        self._roots_path = os.path.join(path, "roots.log")
        self._offload = offload
        self._catalog: Catalog | None = None

    @property
    def catalog_url(self) -> str:
        return self.storage.catalog

    def catalog(self) -> Catalog:
        if self._catalog is None:
            # An SQLite catalog keeps room for deletes on a full disk (pithos/catalog/space.py).
            # Every process of this data directory (server workers, the CLI) shares the
            # stamp that drops the workers' cached lookups when one of them writes.
            self._catalog = Catalog(self.catalog_url, offload=self._offload,
                                    reserve_bytes=RESERVE_BYTES,
                                    info_stamp=os.path.join(self.path, "catalog.stamp"))
        return self._catalog

    def record_roots(self, roots: Iterable[tuple[bytes, int]]) -> None:
        """Append roots to the log, durably (the maps they name are already durable)."""
        lines = "".join(f"{to_hex(r)} {size}\n" for r, size in roots)
        if not lines:
            return
        fd = os.open(self._roots_path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                     0o644)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                lines = "\n" + lines  # end a line torn by a killed writer
            os.write(fd, lines.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def roots(self) -> Iterator[bytes]:
        """Recorded roots; a torn last line (a put killed while logging) is skipped."""
        try:
            with open(self._roots_path, "rb") as f:
                text = f.read().decode("ascii", "replace")
        except FileNotFoundError:
            return
        for line in text.split("\n")[:-1]:
            parts = line.split()
            if len(parts) == 2:
                try:
                    yield from_hex(parts[0])
                except Exception:
                    continue

    def close(self) -> None:
        if self._catalog is not None:
            self._catalog.close()
        self.blocker.close()

"""Block-level transfer (the Pithos hashmap protocol) and in-place updates, over the object
service.

Dedup without leaking: blocks are stored once for everybody, but an account may name a block
by hash only if it sent that block's bytes or read a map naming it (the catalog's
account_blocks).  To everyone else the block is "missing", so no account learns what another
stores, and nobody can claim data by knowing its hash.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, BinaryIO

from pithos.catalog import ContainerInfo, Expect, ObjectVersion, UserInfo
from pithos.catalog.changes import check_expect
from pithos.core.binary_hashes import unpack_hashmap
from pithos.core.errors import Conflict, InvalidArgument, TooLarge
from pithos.core.hashing import HASH_NAME, from_hex, to_hex
from pithos.mapper.inline import inline_entries, verified
from pithos.mapper.streams import read_chunks
from pithos.objects.block_body import BlockBody
from pithos.objects.declared_etags import EtagConfirmer
from pithos.objects.declared_etags import declared as declared_meta
from pithos.objects.service import BodyReader, ObjectService

HASHMAP_PAGE = 10000  # hashes per page of a hashmap GET
# Blocks of a POST ?blocks stored per put_many (one data sync and one index commit each):
# up to this many, or this many bytes, whichever comes first: 8 blocks of 4 MiB as before,
# and a sync client's whole batch of content-defined chunks (8 MiB, ~500 chunks) in one
# (256 instead of 8 took the sync bench's first sync at --scale 0.25 from 11.5 s to 9.7 s).
STORE_BATCH_BLOCKS = 1024
STORE_BATCH_BYTES = 32 * 1024 * 1024


class MissingBlocks(Conflict):
    """A hashmap names blocks the account may not (or can no longer) name."""

    def __init__(self, hashes: Sequence[bytes]) -> None:
        super().__init__(f"{len(hashes)} block(s) missing")
        self.hashes = list(hashes)


class Hashmaps:
    def __init__(self, objects: ObjectService) -> None:
        self.objects = objects
        self.catalog = objects.catalog
        self.mapper = objects.mapper
        self.confirmer = EtagConfirmer(objects)  # of the ETags hashmap uploads declare

    # -- reading -------------------------------------------------------------------------------

    def hashmap(self, account_id: int, v: ObjectVersion, start: int = 0,
                limit: int = HASHMAP_PAGE, user: UserInfo | None = None) -> dict[str, Any]:
        """The object's block list (a page of it), and a grant to name those blocks: whoever
        reads the hashmap can read the data anyway.  (A `user` who is not its account's admin
        gets the grant for itself alone: see `missing`.)"""
        if v.root is None:
            raise InvalidArgument("this object has no content map (a manifest?)")
        if v.inline is not None:
            # The entries its content has as blocks (none stored: a hashmap PUT naming
            # them finds them missing and sends them).
            every = inline_entries(verified(v.root, v.inline))
            entries, count = every[start:start + limit], len(every)
        else:
            entries = list(self.mapper.entries(v.root, start, start + limit))
            count = self.mapper.stat(v.root).entries
        self._grant(account_id, [h for h, _ in entries], user)
        bs = self.mapper.block_size
        doc: dict[str, Any] = {
            "block_size": bs, "block_hash": HASH_NAME, "bytes": v.size,
            "hashes": [to_hex(h) for h, _ in entries],
        }
        lengths = [n for _, n in entries]
        last = start + len(entries) >= count
        if any(n != bs for n in (lengths[:-1] if last else lengths)):
            doc["lengths"] = lengths  # blocks of varying size (e.g. an assembled SLO)
        if not last:
            doc["next"] = start + len(entries)
        return doc

    # -- uploading -----------------------------------------------------------------------------

    def _grant(self, account_id: int, hashes: Sequence[bytes], user: UserInfo | None) -> None:
        if _member(user):
            assert user is not None
            self.catalog.grant_user_blocks(user.id, hashes)
        else:
            self.catalog.grant_blocks(account_id, hashes)

    def missing(self, account_id: int, hashes: Sequence[bytes],
                user: UserInfo | None = None) -> list[bytes]:
        """The blocks the account must send: those it may not name, and those absent.  Present
        blocks it may name are refreshed, so a running collector spares them.  A `user` who
        is not its account's admin may name only the blocks it sent or read itself: what
        the rest of its account holds (say in containers it cannot read) is "missing" to it,
        as another account's blocks are."""
        return self._named(account_id, hashes, user, False)[0]

    def _named(self, account_id: int, hashes: Sequence[bytes], user: UserInfo | None,
               sizes: bool) -> tuple[list[bytes], dict[bytes, int]]:
        """(`missing`'s answer, and if `sizes` the size of every other block, found by the
        same touch: one look-up of each block, not a touch and then a look-up of sizes)."""
        if _member(user):
            assert user is not None
            allowed = self.catalog.granted_user_blocks(user.id, hashes)
        else:
            allowed = self.catalog.granted_blocks(account_id, hashes)
        unique = list(dict.fromkeys(hashes))
        refused = [h for h in unique if h not in allowed]
        named = [h for h in unique if h in allowed]
        blocker = self.mapper.blocker
        # (The chunks an upload sent a moment before are only found, not rewritten.)
        fresh_since = self.objects.fresh_since() if named else None
        if not sizes:
            absent = set(blocker.touch_many(named, fresh_since))
            return refused + [h for h in named if h in absent], {}
        found = dict(zip(named, blocker.touch_sizes(named, fresh_since), strict=True))
        present = {h: n for h, n in found.items() if n is not None}
        return refused + [h for h in named if h not in present], present

    def store_blocks(self, account_id: int, body: BinaryIO, length: int | None,
                     lengths: Sequence[int] | None = None,
                     user: UserInfo | None = None) -> list[bytes]:
        """Raw blocks sent in one body (cut at the block size, or at `lengths`); returns their
        hashes, which the account may name from now on."""
        self.confirmer.uploading()
        bs = self.mapper.block_size
        reader = BlockBody(body, length, self.objects.limits.max_file_size)
        hashes: list[bytes] = []
        if lengths is not None:
            if any(not 0 < n <= bs for n in lengths):
                raise InvalidArgument(f"block lengths must be in (0, {bs}]")
            if length is not None and sum(lengths) != length:
                raise InvalidArgument("block lengths do not add up to the body's length")
            # Each batch read into one buffer, its blocks views of it (BlockBody.batches).
            for views in reader.batches(lengths, STORE_BATCH_BLOCKS, STORE_BATCH_BYTES):
                hashes.extend(self._put_and_grant(views, account_id, user))
        else:
            batch: list[bytes] = []
            batch_bytes = 0
            for chunk in reader.blocks(bs):
                batch.append(chunk)
                batch_bytes += len(chunk)
                if len(batch) >= STORE_BATCH_BLOCKS or batch_bytes >= STORE_BATCH_BYTES:
                    hashes.extend(self._put_and_grant(batch, account_id, user))
                    batch, batch_bytes = [], 0
            if batch:
                hashes.extend(self._put_and_grant(batch, account_id, user))
        reader.finish()
        return hashes

    def _put_and_grant(self, blocks: Sequence[bytes | memoryview], account_id: int,
                       user: UserInfo | None) -> list[bytes]:
        """Store `blocks` and grant them to the account (and to `user`, a member), the grant's
        commit beside the store's syncs rather than after them (under a server: a greenlet of
        the worker's loop, while the store's work waits on the pool).  Safe in either order:
        a grant only lets the account name a block it has sent, and a hashmap PUT that names
        one finds it present or answers that it is missing (`_named`'s touch); a grant of a
        block whose store then failed is one the account may send again."""
        blocker = self.mapper.blocker
        staged = blocker.stage_many(blocks)
        hashes = [b.hash for b in staged]
        offload = self.objects.offload
        if offload is None:
            blocker.put_staged(staged)
            self._grant_sent(account_id, hashes, user)
            return hashes
        granted = offload.spawner.submit(self._grant_sent, account_id, hashes, user)
        try:
            blocker.put_staged(staged)
        finally:
            failed = granted.exception()  # (waits for it; the store's error comes first)
        if failed is not None:
            raise failed
        return hashes

    def _grant_sent(self, account_id: int, hashes: Sequence[bytes],
                    user: UserInfo | None) -> None:
        """The grants of blocks sent: to the account, and to `user` too if a member."""
        self.catalog.grant_blocks(account_id, hashes)
        if _member(user):
            assert user is not None
            self.catalog.grant_user_blocks(user.id, hashes)

    def parse(self, body: bytes) -> tuple[list[bytes], list[int], int]:
        """A hashmap document -> (hashes, lengths, size).  Every number is a whole number in
        its range (no negative, fractional or infinite sizes; each length in (0, block size]),
        checked before anything is built from it."""
        try:
            doc = json.loads(body)
            hashes = [from_hex(h) for h in doc["hashes"]]
            size = _whole(doc["bytes"], "bytes")
        except (ValueError, KeyError, TypeError, RecursionError):
            raise InvalidArgument("a hashmap is JSON with 'bytes' and 'hashes' (hex)") from None
        if doc.get("block_hash", HASH_NAME) != HASH_NAME:
            raise InvalidArgument(f"block hashes here are {HASH_NAME}")
        if size > self.objects.limits.max_file_size:
            raise TooLarge("object too large")
        bs = _whole(doc.get("block_size", self.mapper.block_size), "block_size")
        if bs != self.mapper.block_size and "lengths" not in doc:
            raise InvalidArgument(f"block size here is {self.mapper.block_size}")
        if "lengths" in doc:
            if not isinstance(doc["lengths"], list):
                raise InvalidArgument("lengths is a list of whole numbers")
            lengths = [_whole(n, "lengths") for n in doc["lengths"]]
            if any(not 0 < n <= self.mapper.block_size for n in lengths):
                raise InvalidArgument(f"each length is in (0, {self.mapper.block_size}]")
            if len(lengths) != len(hashes) or sum(lengths) != size:
                raise InvalidArgument("lengths must match hashes and add up to bytes")
        else:
            n = len(hashes)
            if not (n - 1) * bs < size <= n * bs and not (n == 0 and size == 0):
                raise InvalidArgument(f"{n} blocks of {bs} bytes cannot hold {size} bytes")
            lengths = [bs] * (n - 1) + [size - (n - 1) * bs] if n else []
        return hashes, lengths, size

    def parse_binary(self, body: bytes) -> tuple[list[bytes], list[int], int]:
        """A binary hashmap (pithos.core.binary_hashes) -> (hashes, lengths, size), each
        length in (0, block size], the size within the limit."""
        try:
            hashes, lengths = unpack_hashmap(body)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        bs = self.mapper.block_size
        if any(not 0 < n <= bs for n in lengths):
            i = next(i for i, n in enumerate(lengths) if not 0 < n <= bs)
            raise InvalidArgument(f"each length is in (0, {bs}]: entry {i} has {lengths[i]}")
        size = sum(lengths)
        if size > self.objects.limits.max_file_size:
            raise TooLarge("object too large")
        return hashes, lengths, size

    def put(self, account_id: int, container: ContainerInfo, name: str, body: bytes, *,
            etag: str | None, content_type: str, meta: Mapping[str, Mapping[str, str]],
            modified_by: str | None, delete_at: float | None,
            user: UserInfo | None = None, expect: Expect | None = None,
            binary: bool = False) -> ObjectVersion:
        """Create an object from blocks the server has and the account (or `user`, see
        `missing`) may name; else raise
        MissingBlocks listing what to send.  `body`: a JSON hashmap, or a binary one if
        `binary` (pithos.core.binary_hashes).  `expect`: the precondition on the object
        (If-Match / If-None-Match), checked in the commit's transaction (PreconditionFailed;
        checked first too, before the blocks).  The blocks are checked again after the commit:
        if a collector removed one meanwhile, the version is undone and MissingBlocks
        raised, never a dangling map."""
        hashes, lengths, size = self.parse_binary(body) if binary else self.parse(body)
        self.confirmer.uploading()
        if expect is not None:
            # Early, so a client told 412 sends no blocks; the commit checks again.
            current = self.catalog.object(container.id, name)
            check_expect(expect, None if current is None else current.etag)
        missing, stored = self._named(account_id, hashes, user, True)
        if missing:
            raise MissingBlocks(missing)
        # Each entry is its whole block: a length over the block's size made a GET promise
        # bytes it never sent, and one short of it let a small hashmap name one big block
        # thousands of times (each piece of a GET verifies the whole block).  (The sizes are
        # those the touch found.)
        wrong = [i for i, (h, n) in enumerate(zip(hashes, lengths, strict=True))
                 if stored[h] != n]
        if wrong:
            i = wrong[0]
            raise InvalidArgument(f"entry {i} claims {lengths[i]} bytes of a block of "
                                  f"{stored[hashes[i]]} ({len(wrong)} entries are wrong)")
        root = self.mapper.store_entries(hashes, lengths) if hashes else self.mapper.empty()
        declared = _md5_hex(etag)
        if declared is not None:
            # Declared, confirmed after the upload (pithos.objects.declared_etags): the
            # blocks were verified as they came; reading them all back for the MD5 the
            # client computed cost the server as much as receiving them.
            md5 = declared
            meta = {**meta, **declared_meta(declared)}
            self.confirmer.uploading(declared=True)
        else:
            digest = hashlib.md5(usedforsecurity=False)
            for piece in self.objects.read([(root, size)], 0, size):
                digest.update(piece)
            md5 = digest.hexdigest()
            if etag is not None and etag.strip('"').lower() != md5:
                raise InvalidArgument("ETag does not match the content the hashmap names")
        v = self.objects.commit_version(container.id, name, root=root, size=size,
                                     etag=md5, content_type=content_type, meta=meta,
                                     modified_by=modified_by, delete_at=delete_at,
                                     expect=expect)
        gone = self.mapper.blocker.missing(list(dict.fromkeys(hashes)))
        if gone:
            self.catalog.drop_version(v.version_id)
            raise MissingBlocks(gone)
        return v


def check_updatable(v: ObjectVersion) -> None:
    """Conflict unless `v` has content of its own to update in place (a large object's
    manifest has not)."""
    if v.root is None or v.dlo_manifest or v.slo_manifest:
        raise Conflict("a large object manifest cannot be updated in place")


def update_content(hm: Hashmaps, container: ContainerInfo, v: ObjectVersion, *,
                   offset: int | None, length: int | None, body: BinaryIO | None,
                   source: ObjectVersion | None, truncate: int | None,
                   modified_by: str | None) -> ObjectVersion:
    """A new version of `v` with a range updated in place (copy-on-write at the map):
    `offset` None appends; the data comes from `body` (`length` bytes) or from the start of
    `source` without copying it; then `truncate` cuts or extends the result.  Inside an
    upload lease: a version kept inline (`v` or `source`) has its content stored as blocks
    first, and the result is stored as blocks."""
    check_updatable(v)
    mapper = hm.mapper
    assert v.root is not None
    root, size = hm.objects.stored_root(v), v.size
    start = size if offset is None else offset
    # Sizes first, before any map is built: a gap up to a far offset (or a far truncation) is
    # filled with zero blocks, which must never be more than an object may hold.
    limit = hm.objects.limits.max_file_size
    if min(start, length or 0, truncate or 0) < 0:
        raise InvalidArgument("offsets, lengths and sizes are not negative")
    reach = start + (length if length is not None else
                     source.size if source is not None else 0)
    if max(reach, truncate or 0) > limit:
        raise TooLarge(f"the object would exceed the maximum object size ({limit} bytes)")
    if source is not None:
        src_root, src_size = hm.objects.stored_root(source), source.size
        n = src_size if length is None else min(length, src_size)
        if start > size:
            root, size = mapper.truncate(root, start), start
        root, size = mapper.concat([(root, 0, start), (src_root, 0, n),
                                    (root, min(start + n, size), None)])
    elif body is not None and length is not None:
        reader = BodyReader(body, length, hm.objects.limits.max_file_size, None,
                            lanes=hm.objects.md5_lanes)
        root = mapper.write_stream(root, start, read_chunks(reader, mapper.block_size),  # type: ignore[arg-type]
                                   length)
        reader.finish()
        size = max(size, start + length)
    if truncate is not None:
        root, size = mapper.truncate(root, truncate), truncate
    if size > hm.objects.limits.max_file_size:
        raise TooLarge("the object would exceed the maximum object size")
    md5 = hashlib.md5(usedforsecurity=False)
    for piece in hm.objects.read([(root, size)], 0, size):
        md5.update(piece)
    return hm.objects.commit_version(
        container.id, v.name, root=root, size=size, etag=md5.hexdigest(),
        content_type=v.content_type, meta=v.meta, modified_by=modified_by,
        delete_at=v.delete_at, grant=(container.account_id, hm.objects.block_hashes(root)),
        sources=[v.version_id])


def _md5_hex(etag: str | None) -> str | None:
    """An ETag header that is an MD5 (32 hex digits, quoted or not), lowercased; else None
    (then the server computes the MD5 itself, and checks the header against it)."""
    if etag is None:
        return None
    text = etag.strip().strip('"').lower()
    return text if len(text) == 32 and all(c in "0123456789abcdef" for c in text) else None


def _member(user: UserInfo | None) -> bool:
    """A user acting in its account without being its admin: its block grants are its own."""
    return user is not None and not user.admin


def _whole(value: Any, what: str) -> int:
    """A JSON number (or a string of digits) that must be a whole number >= 0."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument(f"{what} must be whole numbers, not negative")
    return value

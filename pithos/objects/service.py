"""The object service: stores request bodies as maps, commits versions, resolves large
objects, copies without copying data.

Write ordering: a body is stored (blocks and map pages durable) before the catalog row that
names its root is committed; if anything fails first (a checksum mismatch, a short body, a
client gone), no version is created and the stored blocks are garbage for the collector.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, BinaryIO, NamedTuple

from pithos.catalog import (
    AccountInfo,
    Catalog,
    ContainerInfo,
    ContainerSummary,
    ListingEntry,
    ObjectVersion,
    UserInfo,
    VersionSummary,
)
from pithos.catalog.declared_etags import DOMAIN as DECLARED
from pithos.catalog.leases import Ticket, WriterLeases
from pithos.catalog.records import Expect
from pithos.core import cdc
from pithos.core.errors import (
    ChecksumMismatch,
    Conflict,
    IncompleteBody,
    IntegrityError,
    InvalidArgument,
    NotFound,
    QuotaExceeded,
    TooLarge,
)
from pithos.core.offload import Offload
from pithos.mapper import Mapper, Piece
from pithos.mapper.inline import inline_entries, inline_object_hash, inline_root, verified
from pithos.mapper.mapper import STREAM_PIECE
from pithos.objects import changes
from pithos.objects.acl import Action, parse_account_acl, validate_container_acl
from pithos.objects.authz import Authz
from pithos.objects.bulk import BulkDeletes
from pithos.objects.changes import Feed
from pithos.objects.digest import LanePolicy, StreamDigest
from pithos.objects.images import Images
from pithos.objects.large_objects import LargeObjects, Part
from pithos.objects.names import Limits
from pithos.objects.quotas import SwiftQuotas
from pithos.objects.sharing import Sharing
from pithos.objects.tempurl import TempURLKeys

# The pieces an upload streams in: the size of the receive buffers the HTTP layer keeps.
UPLOAD_PIECE_BYTES = STREAM_PIECE
# Objects of at most this many bytes (and whose content is one block) are kept in their
# version row, not as blocks: a small PUT is then one catalog transaction and a small GET
# one statement, with no block or map page round trip to the block store (docs/design.md,
# "Small objects inline").  At most INLINE_LIMIT (a row is no place for big values).
INLINE_MAX_BYTES = 16 * 1024
INLINE_LIMIT = 1024 * 1024


@dataclass(frozen=True)
class Stored:
    root: bytes
    size: int
    md5: str
    # The content itself, to keep in the version row (a small object; nothing was stored).
    inline: bytes | None = None


class CopyContent(NamedTuple):
    """What a copy of a large object, or of a part of an object, names (`copy`'s
    `content`): a map built for it, or the bytes to keep inline."""
    root: bytes
    size: int
    etag: str
    inline: bytes | None = None


class BodyReader:
    """A request body as a file: counts bytes, refuses more than `max_size`, and computes the
    MD5 on `executor`, behind the reads (`StreamDigest`), in lanes beside the other uploads of
    `lanes` (the object service's `md5_lanes`; without it, alone)."""

    def __init__(self, stream: BinaryIO, length: int | None, max_size: int,
                 executor: Executor | None,
                 lanes: LanePolicy | None = None) -> None:
        self._stream = stream
        self._length = length
        self._max = max_size
        self._digest = StreamDigest(executor, length=length, lanes=lanes)
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        if self._length is not None:
            left = self._length - self.count
            if left <= 0:
                return b""
            n = left if n < 0 else min(n, left)
        data = self._stream.read(n) if n >= 0 else self._stream.read()
        if not data:
            return b""
        self.count += len(data)
        if self.count > self._max:
            raise TooLarge(f"object larger than {self._max} bytes")
        self._digest.update(data)
        return data

    def finish(self) -> str:
        """The MD5 (hex) of everything read; IncompleteBody if less than announced."""
        md5 = self._digest.hexdigest()
        if self._length is not None and self.count != self._length:
            raise IncompleteBody(f"got {self.count} of {self._length} bytes")
        return md5

    def abandon(self) -> None:
        """Stop hashing (the upload failed)."""
        self._digest.abandon()


# The writer the current request (greenlet or thread) is, set by upload_lease.
_WRITER: ContextVar[Ticket | None] = ContextVar("pithos_writer", default=None)


class ObjectService(LargeObjects):
    def __init__(self, catalog: Catalog, mapper: Mapper, offload: Offload | None = None,
                 limits: Limits | None = None, read_batch_blocks: int = 2,
                 md5_lanes: LanePolicy | None = None, spool_dir: str | None = None,
                 inline_max_bytes: int = INLINE_MAX_BYTES) -> None:
        """`offload` (pithos.core.offload): its pool runs an upload's MD5 beside the upload
        and its spawner a read's read-ahead (without one: MD5 inline, no read-ahead);
        `md5_lanes` groups the MD5s of concurrent uploads (the entry point makes one per
        event loop; default: one of this service's own); `spool_dir`: where image uploads
        are converted (pithos.objects.image_import; default the system's temporary
        directory); `inline_max_bytes`: objects up to this size are kept in their version
        row (0: none; at most INLINE_LIMIT; and the block size, so that the content is one
        block)."""
        if not 0 <= inline_max_bytes <= INLINE_LIMIT:
            raise InvalidArgument(f"objects kept inline are at most {INLINE_LIMIT} bytes")
        self.inline_max_bytes = min(inline_max_bytes, mapper.block_size)
        self.catalog = catalog
        self.leases = WriterLeases(catalog)
        self.mapper = mapper
        self.offload = offload
        self.md5_lanes = md5_lanes if md5_lanes is not None else LanePolicy()
        self.limits = limits or Limits()
        # Per-request memory: an upload's pieces in flight (Mapper.build_stream), two read
        # batches.
        self.read_batch_blocks = read_batch_blocks
        self.authz = Authz(catalog)
        self.sharing = Sharing(catalog, self.authz)
        self.bulk = BulkDeletes(catalog, self.authz, self.limits)
        self.tempurl = TempURLKeys(catalog)
        self.swift_quotas = SwiftQuotas(catalog)
        self.images = Images(catalog, self.authz, self, spool_dir=spool_dir)

    # -- accounts ------------------------------------------------------------------------------

    def account_id(self, name: str) -> int:
        """The id of account `name`, made if it does not exist yet (the account of a user
        who logged in: it names the blocks that user may reference)."""
        found = self.catalog.account(name, detail=False)
        return found.id if found is not None else self.catalog.ensure_account(name)

    def list_containers(self, account_id: int, *, limit: int, marker: str = "",
                        end_marker: str = "", prefix: str = "", reverse: bool = False,
                        until: float | None = None,
                        delimiter: str = "") -> list[ContainerSummary]:
        """The account's containers with their usage, in name order; with a delimiter, names
        that continue past it after the prefix collapse into one pseudo-directory entry
        (`subdir`), never the marker itself (as Swift's, and as object listings)."""
        page = self.catalog.list_containers
        if not delimiter:
            return page(account_id, prefix=prefix, marker=marker, end_marker=end_marker,
                        limit=limit, reverse=reverse, until=until)
        out: list[ContainerSummary] = []
        cursor = marker
        while len(out) < limit:
            rows = page(account_id, prefix=prefix, marker=cursor, end_marker=end_marker,
                        limit=limit - len(out), reverse=reverse, until=until)
            for row in rows:
                cut = row.name.find(delimiter, len(prefix))
                if cut >= 0:
                    sub = row.name[:cut + len(delimiter)]
                    if sub != marker and (not out or out[-1].name != sub):
                        out.append(ContainerSubdir(sub, 0, 0, 0.0))
                    # Skip every other name under it: the next page starts past it.
                    cursor = sub if reverse else sub + _MAX_CHAR
                    break
                out.append(row)
                cursor = row.name
            else:
                return out  # the page ended without a pseudo-directory: nothing more
        return out[:limit]

    def update_account(self, user: UserInfo | None, account: AccountInfo,
                       meta: Mapping[str, str | None], *, acl: str | None = None,
                       groups: Mapping[str, str] | None = None) -> None:
        """Set metadata (a None value removes a key), the account ACL (`acl`, JSON; only an
        account admin) and groups (name -> comma-separated accounts; only an account admin).
        The caller was allowed ACCOUNT_WRITE."""
        if acl is not None:
            self.authz.require(user, account.name, account.acl, Action.ACCOUNT_ADMIN)
            # Kept as Swift's tempauth keeps it (compact, sorted; "{}" clears it), and shown
            # back so.
            parsed = parse_account_acl(acl)
            acl = json.dumps(parsed, separators=(",", ":"), sort_keys=True) if parsed else ""
        self.sharing.set_groups(user, account, groups or {})
        self.catalog.update_account(account.id, meta, acl=acl, set_acl=acl is not None)

    def reap_expired(self) -> int:
        """Delete the objects whose X-Delete-At has passed (a batch); returns how many."""
        return self.catalog.reap_expired()

    # -- containers ----------------------------------------------------------------------------

    def container_policy(self, user: UserInfo | None, account: AccountInfo, *,
                         versioning: str | None = None, quota: str | None = None,
                         read_acl: str | None = None, write_acl: str | None = None,
                         chunking: str | None = None, project: str | None = None
                         ) -> dict[str, object]:
        """A container's policy from its headers' values (None: unchanged; an empty ACL
        removes it): InvalidArgument for bad values, and only an account admin may change
        who gets in (the ACLs).  `project` (X-Container-Policy-Project): the project its
        usage is charged to, one the user is a member of (NotFound otherwise: projects
        cannot be probed); a container created without it is charged to the project the
        user acts in."""
        policy: dict[str, object] = {}
        if project is not None:
            found = self.catalog.project(project) if user is not None else None
            if found is None or user is None or not self.catalog.is_member(user, found.id):
                raise NotFound("no such project")
            policy["project_id"] = None if found.id == account.name else found.id
        elif user is not None and user.project is not None:
            policy["new_project_id"] = user.project  # (a creation's default only)
        if versioning is not None:
            if versioning.lower() not in ("auto", "none"):
                raise InvalidArgument("X-Container-Policy-Versioning is auto or none")
            policy["versioning"] = versioning.lower()
        if chunking is not None:
            # Which blocks new objects are cut into: objects already stored keep theirs.
            if chunking.strip().lower() not in ("cdc", "fixed"):
                raise InvalidArgument("X-Container-Policy-Chunking is cdc or fixed")
            policy["chunking"] = "cdc" if chunking.strip().lower() == "cdc" else None
        if quota is not None:
            try:
                policy["quota_bytes"] = int(quota) or None
                if not 0 <= int(quota) < 2**63:  # (the catalog's BIGINT)
                    raise ValueError
            except ValueError:
                raise InvalidArgument("X-Container-Policy-Quota is a number of bytes "
                                      "(0: none)") from None
        for value, column, for_read in ((read_acl, "read_acl", True),
                                        (write_acl, "write_acl", False)):
            if value is not None:
                self.authz.require(user, account.name, account.acl, Action.ACCOUNT_ADMIN)
                policy[column] = validate_container_acl(value, for_read) or None
        return policy

    def create_container(self, account: AccountInfo, name: str,
                         meta: Mapping[str, str | None], policy: Mapping[str, object]
                         ) -> bool:
        """Create a container, or update an existing one; returns whether it was created.
        The caller was allowed CONTAINER_WRITE in `account`."""
        if "/" in name:
            raise InvalidArgument("container names cannot contain '/'")
        return self.catalog.create_container(account.id, name, meta, **policy)

    def update_container(self, container: ContainerInfo, meta: Mapping[str, str | None],
                         policy: Mapping[str, object]) -> None:
        self.catalog.update_container(container.id, meta, **policy)

    def delete_container(self, container: ContainerInfo) -> None:
        """Delete an empty container; Conflict if it holds an object."""
        try:
            self.catalog.delete_container(container.id)
        except Conflict:
            raise Conflict("There was a conflict when trying to complete your request: the "
                           "container is not empty.") from None

    def purge_history(self, container: ContainerInfo, name: str | None, until: float) -> int:
        """Drop the versions older than `until` of object `name` (None: of every object of
        the container) that are no longer current; returns how many."""
        return self.catalog.purge_history(container.id, name, until)

    def container_detail(self, container: ContainerInfo) -> ContainerInfo:
        """The container with its counters and metadata (Authz's comes without them)."""
        return self.catalog.container(container.account_id, container.name) or container

    def list_objects(self, container_id: int, *, limit: int, marker: str = "",
                     end_marker: str = "", prefix: str = "", reverse: bool = False,
                     delimiter: str = "", until: float | None = None) -> list[ListingEntry]:
        return self.catalog.list_objects(container_id, prefix=prefix, marker=marker,
                                         end_marker=end_marker, limit=limit, reverse=reverse,
                                         delimiter=delimiter, until=until)

    # -- objects and versions ------------------------------------------------------------------

    def find_object(self, container: ContainerInfo, name: str) -> ObjectVersion | None:
        """The current version of an object, None if there is none."""
        return self.catalog.object(container.id, name)

    def get_object(self, container: ContainerInfo, name: str) -> ObjectVersion:
        """The current version of an object; NotFound if there is none."""
        version = self.catalog.object(container.id, name)
        if version is None:
            raise NotFound("The resource could not be found.")
        return version

    def chosen_version(self, container: ContainerInfo, name: str, *, vid: str | None,
                       until: float | None, with_token: bool = False
                       ) -> tuple[ObjectVersion, str | None]:
        """The current version, or the one named `vid` (of this object only), or the one
        current at `until`; NotFound if there is none.  With `with_token`, also the object's
        public token (else None): the current version comes with it in one statement."""
        catalog = self.catalog
        token = None
        if vid:
            v = catalog.object_version(container.id, name, vid)
        elif until is not None:
            v = catalog.object_at(container.id, name, until)
        else:
            found = catalog.object_and_public_token(container.id, name)
            v, token = (found.version, found.public_token) if found is not None else (None, None)
        if v is None:
            raise NotFound("The resource could not be found.")
        if not with_token:
            return v, None
        current = not vid and until is None
        return v, token if current else catalog.public_token(v.object_id)

    def object_version(self, container: ContainerInfo, name: str, vid: str
                       ) -> ObjectVersion | None:
        return self.catalog.object_version(container.id, name, vid)

    def versions(self, container: ContainerInfo, name: str) -> list[VersionSummary]:
        """The object's retained versions, oldest first; NotFound when there is no such
        object."""
        versions = self.catalog.versions(container.id, name)
        if not versions and self.catalog.object(container.id, name) is None:
            raise NotFound("The resource could not be found.")
        return versions

    def update_meta(self, container: ContainerInfo, name: str,
                    meta: Mapping[str, Mapping[str, str]], *, delete_at: float | None,
                    content_type: str | None, expect: Expect | None = None,
                    replace_dlo: bool = False, dlo_manifest: str | None = None) -> None:
        """Replace the current version's metadata (a POST: no new content); `expect`: its
        precondition, checked in the same transaction (PreconditionFailed).  `replace_dlo`:
        X-Object-Manifest too, which a Swift POST replaces with the rest (`dlo_manifest`,
        None to make a DLO a plain object again)."""
        self.catalog.update_object_meta(container.id, name, meta, delete_at=delete_at,
                                        content_type=content_type, expect=expect,
                                        replace_dlo=replace_dlo, dlo_manifest=dlo_manifest)

    def delete_object(self, container: ContainerInfo, name: str,
                      modified_by: str | None, expect: Expect | None = None) -> None:
        """Delete an object (its versions stay, as the container's policy says); NotFound
        if there is none; `expect`: its precondition, checked in the same transaction
        (PreconditionFailed)."""
        if not self.catalog.delete_object(container.id, name, modified_by, expect=expect):
            raise NotFound("The resource could not be found.")

    def changes(self, container: ContainerInfo, cursor: str, limit: int) -> Feed:
        """The container's change feed after `cursor` (pithos.objects.changes).  The caller
        was allowed to list the container."""
        return changes.feed(self.catalog, container, cursor, limit)

    def check_quota(self, container: ContainerInfo, name: str, size: int) -> None:
        """QuotaExceeded if writing `size` bytes as `name` cannot fit the container's or its
        account's quota: a refusal before the body is read.  The commit checks again,
        atomically, for bodies of unknown length and concurrent writers."""
        if container.quota_bytes is not None:  # (Swift's quotas set one: see there)
            self.swift_quotas.check(container, size)
        usage = self.catalog.usage(container.id)
        cquota, aquota = usage.container_quota_bytes, usage.account_quota_bytes
        if not cquota and not aquota:
            return
        current = self.catalog.object(container.id, name)
        growth = size - (current.size if current else 0)
        if growth > 0 and ((cquota and usage.container_bytes + growth > cquota) or
                           (aquota and usage.account_bytes + growth > aquota)):
            raise QuotaExceeded("quota exceeded")

    def object_hash(self, root: bytes, inline: bytes | None = None) -> bytes:
        """The object hash (Pithos' X-Object-Hash) of the map `root`, or of a version's
        `inline` content (whose root names nothing stored)."""
        if inline is not None:
            return inline_object_hash(inline)
        return self.mapper.object_hash(root)

    # -- storing -------------------------------------------------------------------------------

    @contextmanager
    def upload_lease(self) -> Iterator[None]:
        """Be a writer (pithos.catalog.leases) while blocks are stored or touched and until the
        version naming them is committed: the garbage collector spares every block a writer
        in flight put or touched.  The versions committed inside are guarded: a writer whose
        lease was lost fails with LeaseLost instead of committing."""
        with self.leases.held() as ticket:
            reset = _WRITER.set(ticket)
            try:
                yield
            finally:
                _WRITER.reset(reset)

    def fresh_since(self) -> float | None:
        """For the writer in flight that names blocks it did not put: blocks stamped at or
        after this time need no touch (WriterLeases.pin); None outside a writer, or when
        its lease promises nothing (then every block is touched)."""
        ticket = _WRITER.get()
        return None if ticket is None else self.leases.pin(ticket)

    def commit_version(self, container_id: int, name: str, **version: Any) -> ObjectVersion:
        """catalog.put_version, inside the commit guard of the writer in flight (if any)."""
        ticket = _WRITER.get()
        if ticket is None or version.get("inline") is not None:
            # A version kept inline names no stored block: a collector can take nothing it
            # needs, so its commit needs no guard (and saves the guard's round trip).
            return self.catalog.put_version(container_id, name, **version)
        # On PostgreSQL the guard's check runs inside the commit's own statement.
        return self.leases.guarded_commit(ticket, lambda guard: self.catalog.put_version(
            container_id, name, guard=guard, **version))

    def store(self, body: BinaryIO, length: int | None, chunking: str | None = None,
              inline: bool = True) -> Stored:
        """Store a request body as a map (durable on return): in fixed blocks, or with
        `chunking` "cdc" (a container's X-Container-Policy-Chunking) in content-defined
        chunks (pithos.core.cdc), each a block of its own length.  A small body (at most
        `inline_max_bytes`, of a known length) is only read, to be kept in its version row
        (`Stored.inline`; `create` commits it so), unless `inline` is False."""
        if length is not None and length > self.limits.max_file_size:
            raise TooLarge(f"object larger than {self.limits.max_file_size} bytes")
        if inline and length is not None and length <= self.inline_max_bytes:
            return self._store_small(body, length, chunking)
        reader = BodyReader(body, length, self.limits.max_file_size,
                            self.offload.pool if self.offload is not None else None,
                            lanes=self.md5_lanes)
        try:
            root, size = self.mapper.build_stream(
                reader, chunker=cdc.Chunker() if chunking == "cdc" else None)
        except BaseException:
            reader.abandon()
            raise
        md5 = reader.finish()
        return Stored(root, size, md5)

    def _store_small(self, body: BinaryIO, length: int, chunking: str | None) -> Stored:
        """A body of at most inline_max_bytes: read whole (its MD5 on this thread: pool
        hand-offs cost more than hashing a few KiB) and kept inline, unless a CDC container
        would cut it in more than one chunk (then stored as those chunks, as before)."""
        reader = BodyReader(body, length, self.limits.max_file_size, None)
        pieces = []
        while piece := reader.read(length - reader.count):
            pieces.append(piece)
        md5 = reader.finish()  # IncompleteBody if short
        data = b"".join(pieces)
        if chunking == "cdc" and len(data) > 1:
            chunker = cdc.Chunker()
            if len(chunker.update(data)) + len(chunker.finish()) > 1:
                root, size = self.mapper.build_stream(io.BytesIO(data), chunker=cdc.Chunker())
                return Stored(root, size, md5)
        return Stored(inline_root(data), len(data), md5, data)

    def stored_root(self, v: ObjectVersion) -> bytes:
        """The root of `v`'s map with its pages and blocks stored: a version kept inline has
        its content stored as blocks now (the same root), for a consumer that needs a real
        map (a concatenation, an image, an update in place, a clone).  Call it inside an
        upload lease that lasts until what names the root is committed (the collector
        spares what a writer in flight put)."""
        if v.root is None:
            raise InvalidArgument("this version has no content map")
        if v.inline is None:
            return v.root
        root, _ = self.mapper.build(io.BytesIO(verified(v.root, v.inline)))
        if root != v.root:  # (the canonical tree: the same content, the same root)
            raise IntegrityError(f"stored inline content as {root.hex()}, named {v.root.hex()}",
                                 [v.root])
        return root

    def create(self, container: ContainerInfo, name: str, stored: Stored, *,
               etag: str | None, content_type: str, meta: Mapping[str, Mapping[str, str]],
               modified_by: str | None, delete_at: float | None,
               dlo_manifest: str | None = None,
               uploader: UserInfo | None = None, expect: Expect | None = None
               ) -> ObjectVersion:
        """A new version from a stored body.  Its blocks may be named by hash from now on by
        the account, and by `uploader` if that user is not its account's admin (who has
        only the grants it earns itself: pithos.objects.hashmaps.Hashmaps.missing)."""
        if etag is not None and etag.strip('"').lower() != stored.md5:
            raise ChecksumMismatch(f"ETag {etag} does not match the content's MD5 {stored.md5}")
        if stored.inline is not None:
            # No block grant: nothing is stored that the account could name by hash (a
            # hashmap naming this content sends its block, as for any block absent).
            return self.commit_version(
                container.id, name, root=stored.root, size=stored.size, etag=stored.md5,
                content_type=content_type, meta=meta, modified_by=modified_by,
                delete_at=delete_at, dlo_manifest=dlo_manifest, expect=expect,
                inline=stored.inline)
        hashes = self.block_hashes(stored.root)
        v = self.commit_version(
            container.id, name, root=stored.root, size=stored.size, etag=stored.md5,
            content_type=content_type, meta=meta, modified_by=modified_by, delete_at=delete_at,
            dlo_manifest=dlo_manifest, grant=(container.account_id, hashes), expect=expect)
        if uploader is not None and not uploader.admin:
            self.catalog.grant_user_blocks(uploader.id, hashes)
        return v

    def block_hashes(self, root: bytes, inline: bytes | None = None) -> list[bytes]:
        if inline is not None:
            return [h for h, _ in inline_entries(inline)]
        return [h for h, _ in self.mapper.entries(root)]

    def touch_map(self, root: bytes) -> int:
        """Refresh every page and block of map `root`, which a writer in flight is about to
        name without having put them (an image over a snapshot's map): a collector that did
        not take the map as a root then spares them.  Returns the map's size; NotFound if
        the map is not whole."""
        from pithos.mapper.gc import refresh_map

        try:
            size = self.mapper.stat(root).size
        except NotFound:
            raise NotFound("no such map") from None
        refresh_map(self.mapper.blocker, root)
        return size

    def max_file_size(self) -> int:
        return self.limits.max_file_size

    def copy(self, source: ObjectVersion, container: ContainerInfo, name: str, *,
             meta: Mapping[str, Mapping[str, str]], content_type: str,
             modified_by: str | None, delete_at: float | None,
             content: CopyContent | None = None,
             keep_manifest: bool = False, expect: Expect | None = None,
             source_expect: Expect | None = None, move: bool = False) -> ObjectVersion:
        """A new version naming the source's map: no data is copied.  `content` overrides
        (root, size, etag) for a large object copied as its concatenated content.

        `expect`: the precondition on the target (If-Match / If-None-Match).  With
        `source_expect` or `move`, the source must still be its object's current version,
        checked in the commit's transaction (PreconditionFailed when `source_expect` fails
        there, Conflict when the source changed otherwise); `move` deletes the source in the
        same transaction (PUT with X-Move-From).  A source kept inline is copied as its bytes
        (inline again)."""
        root, size, etag, inline = content or CopyContent(
            source.root or self.mapper.empty(), source.size, source.etag, source.inline)
        if inline is not None:
            verified(root, inline)
        if content is None and DECLARED in source.meta:
            # The source's ETag awaits confirmation: the copy's is the same declaration
            # (pithos.objects.declared_etags).
            meta = {**meta, DECLARED: dict(source.meta[DECLARED])}
        return self.commit_version(
            container.id, name, root=root, size=size, etag=etag, content_type=content_type,
            meta=meta, modified_by=modified_by, delete_at=delete_at,
            dlo_manifest=source.dlo_manifest if keep_manifest else None,
            slo_manifest=source.slo_manifest if keep_manifest else None,
            grant=None if inline is not None else (container.account_id,
                                                   self.block_hashes(root)),
            sources=[] if content or inline is not None else [source.version_id],
            expect=expect, inline=inline,
            source=source if (move or source_expect is not None) else None,
            source_expect=source_expect, move=move)

    def large_content(self, src: ObjectVersion, account: AccountInfo | None,
                      may_read: Callable[[ContainerInfo | None], bool] = lambda _: True,
                      span: tuple[int, int] | None = None) -> CopyContent | None:
        """What a copy of `src` names when `src` is a large object (`copy`'s `content`): one
        map naming its segments' blocks (read with `may_read`), and the MD5 of that content
        as the ETag (the data is read, not written); None for any other object.  `span`
        (offset, length): that part of an SLO or of any other object only (a copy of one
        part, or of a range).  Inside the writer's upload lease: the new map is garbage until
        the copy commits."""
        if not (src.dlo_manifest or src.slo_manifest) and span is None:
            return None
        if src.dlo_manifest:
            assert account is not None
            segs = self.dlo_segments(account.id, src.dlo_manifest, may_read)
            parts = [(self.stored_root(s), 0, None) for s in segs if s.root is not None]
        else:
            offset, length = span or (0, src.size)
            if src.inline is not None:
                # A part of a small object is a small object: its bytes, inline.
                data = verified(src.root or b"", src.inline)[offset:offset + length]
                return CopyContent(inline_root(data), len(data),
                                   hashlib.md5(data, usedforsecurity=False).hexdigest(), data)
            parts = [(src.root, offset, length)] if src.root is not None and length else []
        root, size = self.mapper.concat(parts)
        md5 = hashlib.md5(usedforsecurity=False)
        for piece in self.read([Part(root, size)], 0, size):
            md5.update(piece)
        return CopyContent(root, size, md5.hexdigest())

    # -- reading -------------------------------------------------------------------------------

    def read(self, parts: Sequence[Part | tuple[bytes, int]], offset: int, length: int
             ) -> Iterator[bytes]:
        """Bytes `[offset, offset + length)` of the concatenation of maps `(root, size)`
        (`Part`s: the content of one kept inline is served from it, verified), with
        read-ahead.  Raises NotFound / IntegrityError for a bad map before returning."""
        pieces: list[Iterator[Piece] | bytes] = []
        start = 0
        for part in parts:
            root, size = part[0], part[1]
            inline = part.inline if isinstance(part, Part) else None
            lo, hi = max(offset - start, 0), min(offset + length - start, size)
            if hi > lo:
                if inline is not None:
                    pieces.append(verified(root, inline)[lo:hi])
                else:
                    pieces.append(self.mapper.pieces(root, lo, hi - lo))
            start += size
        if len(pieces) == 1 and isinstance(pieces[0], bytes):
            return iter(pieces)  # type: ignore[arg-type]  # (a small object's GET)
        prefetch = self.offload.spawner if self.offload is not None else None
        if not any(isinstance(p, bytes) for p in pieces):
            return self.mapper.read_pieces(_chain(pieces), self.read_batch_blocks,  # type: ignore[arg-type]
                                           prefetch)
        return _mixed(pieces, lambda p: self.mapper.read_pieces(p, self.read_batch_blocks,
                                                                prefetch))

    # -- listings ------------------------------------------------------------------------------

    def list_path(self, container_id: int, path: str, *, limit: int, marker: str = "",
                  end_marker: str = "", reverse: bool = False, prefix: str = ""
                  ) -> list[ListingEntry]:
        """Swift's `path=`: the objects directly under the pseudo-directory `path`, in name
        order, with the directory marker objects directly under it ("path/sub/", as Swift
        lists them).  Deeper names are skipped (no subdir entries) and so is the marker
        object `path/` itself; `prefix` is ignored, as Swift ignores it with a path."""
        under = path.rstrip("/") + "/" if path else ""
        out: list[ListingEntry] = []
        while len(out) < limit:
            want = limit - len(out)
            page = self.catalog.list_objects(container_id, prefix=under, marker=marker,
                                             end_marker=end_marker, limit=want,
                                             reverse=reverse, delimiter="/")
            for e in page:
                if e.name == under:
                    continue
                if e.subdir:
                    # The pseudo-directory stands for its marker object too, if there is one.
                    found = self.catalog.object(container_id, e.name)
                    if found is None:
                        continue
                    e = ListingEntry(e.name, found.size, found.etag, found.content_type,
                                     found.created, slo_manifest=found.slo_manifest)
                out.append(e)
            if len(page) < want:
                break
            last = page[-1]
            # Past a pseudo-directory: every name under it sorts after it (before, reversed).
            marker = last.name + _MAX_CHAR if last.subdir and not reverse else last.name
        return out


# Sorts after every name that follows a given prefix (as the catalog's listings use it).
_MAX_CHAR = "\U0010ffff"


class ContainerSubdir(ContainerSummary):
    """A pseudo-directory of an account listing with a delimiter (its name ends in it)."""

    __slots__ = ()


def _mixed(pieces: Sequence[Iterator[Piece] | bytes],
           read: Callable[[Iterator[Piece]], Iterator[bytes]]) -> Iterator[bytes]:
    """The bytes of `pieces`: runs of map pieces read together (`read`, with its
    read-ahead), the inline contents between them as they are.  Every map's root was
    resolved already (bad ones raised before this starts)."""
    run: list[Iterator[Piece]] = []
    for p in pieces:
        if isinstance(p, bytes):
            if run:
                yield from read(_chain(run))
                run = []
            yield p
        else:
            run.append(p)
    if run:
        yield from read(_chain(run))


def _chain(iterators: Sequence[Iterator[Piece]]) -> Iterator[Piece]:
    for it in iterators:
        yield from it


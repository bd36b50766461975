"""Large objects over the object service: what a read of a version serves (a DLO's segments,
an SLO's assembled map, a small object's inline content) and the assembly of a static large
object from its manifest.  A mixin of ObjectService (pithos.objects.service), which provides
the catalog, the mapper, the limits and the commit."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from pithos.catalog import Catalog, ContainerInfo, ObjectVersion
from pithos.core.errors import ChecksumMismatch, Conflict, Forbidden, InvalidArgument, TooLarge
from pithos.mapper import Mapper
from pithos.objects import slo, symlinks
from pithos.objects.names import Limits


class Part(NamedTuple):
    """One map a read concatenates: its root and size, and the content itself when its
    version keeps it inline (the root then names nothing stored)."""
    root: bytes
    size: int
    inline: bytes | None = None


class Content(NamedTuple):
    """What a read of a version serves: the maps it concatenates, its size and ETag, and
    whether it is a large object's (DLO or SLO) content."""
    parts: list[Part]
    size: int
    etag: str
    large: bool


class LargeObjects:
    """The large-object half of ObjectService."""

    catalog: Catalog
    mapper: Mapper
    limits: Limits

    def stored_root(self, v: ObjectVersion) -> bytes:
        raise NotImplementedError  # (ObjectService's)

    def commit_version(self, container_id: int, name: str, **version: Any) -> ObjectVersion:
        raise NotImplementedError  # (ObjectService's)

    # -- large objects -------------------------------------------------------------------------

    def content(self, v: ObjectVersion, account_id: int,
                may_read: Callable[[ContainerInfo | None], bool] = lambda _: True, *,
                manifest: bool = False) -> Content:
        """What a read of version `v` (of account `account_id`) serves: a DLO's content is
        its segments' (read with `may_read`, Forbidden otherwise) and its ETag the MD5 of
        their ETags, as Swift's; with `manifest`, a DLO is its manifest object alone (its own
        content)."""
        if v.dlo_manifest and not manifest:
            return _joined(self.dlo_segments(account_id, v.dlo_manifest, may_read))
        return Content([Part(v.root, v.size, v.inline)] if v.root is not None else [], v.size,
                       v.etag, bool(v.slo_manifest))

    def check_slo_segments(self, v: ObjectVersion, account_id: int,
                           may_read: Callable[[ContainerInfo | None], bool]) -> None:
        """Conflict unless the first segment of SLO `v` is there and readable by the reader
        (`may_read`), as Swift's SLO fetches it with the reader's rights before it answers
        a GET (409 otherwise); a first segment that is a manifest itself (through symlinks)
        is asked in turn, down to SLO_RECURSION_MAX manifests, as Swift's recursion.  The
        content itself is the map assembled at the PUT."""
        manifest = v.slo_manifest
        for _ in range(slo.SLO_RECURSION_MAX):
            assert manifest is not None
            first = slo.first_segment(manifest)
            if first is None:
                return
            container = self.catalog.container(account_id, first[0])
            path = f"/{first[0]}/{first[1]}"
            if not may_read(container):
                raise Conflict(f"got 403 while retrieving {path}")
            found = (self.catalog.object(container.id, first[1])
                     if container is not None else None)
            if found is None:
                raise Conflict(f"got 404 while retrieving {path}")
            found = symlinks.resolve(self.catalog, account_id, found, may_read)
            if found is None or not found.slo_manifest:
                return  # (a broken link fails the read as it did)
            manifest = found.slo_manifest
        # No words of our own: Swift answers its plain 409 page here, and its tests read it.
        raise Conflict("")

    def public_content(self, v: ObjectVersion, account_id: int) -> Content:
        """What a public link to version `v` serves: as `content`, but a DLO joins only its
        segments that are published themselves, the others left out (whoever may write a
        published object may point its manifest anywhere in the owner's account: the link
        must not reach further than the owner's publishing), and an SLO is its content,
        never its manifest.  Left out without a word: a refusal when some were not
        published told such a writer, prefix by prefix, which names the owner's private
        containers hold."""
        if v.dlo_manifest:
            return _joined([s for s in self.dlo_segments(account_id, v.dlo_manifest)
                            if self.catalog.public_token(s.object_id) is not None])
        return self.content(v, account_id)

    def dlo_segments(self, account_id: int, manifest: str,
                     may_read: Callable[[ContainerInfo | None], bool] = lambda _: True
                     ) -> list[ObjectVersion]:
        """The segments of a DLO: the objects under "container/prefix", in name order.
        Forbidden when the reader may not read the segments' container (`may_read`), as a
        Swift proxy lists it with the reader's rights: a manifest is no way around an ACL."""
        container_name, _, prefix = manifest.partition("/")
        container = self.catalog.container(account_id, container_name)
        # Asked of a missing container too (may_read(None): could the reader read one there
        # without an ACL?): a reader who may not read it is refused the same way whether it
        # exists or not, or a manifest would tell which container names the account holds
        # (issue 26, finding 14).
        if not may_read(container):
            raise Forbidden(f"the segments of this large object are in {container_name!r}, "
                            "which you may not read")
        if container is None:
            return []
        out: list[ObjectVersion] = []
        marker = ""
        while True:
            page = self.catalog.list_objects(container.id, prefix=prefix, marker=marker,
                                             limit=1000)
            for entry in page:
                version = self.catalog.object(container.id, entry.name)
                if version is not None:
                    out.append(version)
            if len(page) < 1000:
                return out
            marker = page[-1].name

    # -- static large objects ------------------------------------------------------------------

    def put_slo(self, account_id: int, container: ContainerInfo, name: str, manifest: bytes,
                *, content_type: str, meta: Mapping[str, Mapping[str, str]],
                modified_by: str | None, delete_at: float | None,
                may_read: Callable[[ContainerInfo | None], bool] = lambda _: True,
                etag: str | None = None) -> ObjectVersion:
        """Assemble an SLO from its manifest into one map that names the segments' blocks
        (no data copied but the edges of ranged segments).  Swift's checks apply: every
        segment exists and is readable by the uploader (`may_read` of its container), its
        ETag and size match when given (InvalidArgument listing every problem, as Swift's
        400), and `etag`, when given, is the SLO's ETag (ChecksumMismatch)."""
        if len(manifest) > self.limits.max_manifest_size:
            raise TooLarge("manifest too large")
        try:
            segments = json.loads(manifest)
        except (ValueError, RecursionError):
            raise InvalidArgument("Manifest must be valid JSON.") from None
        if not isinstance(segments, list) or not segments:
            raise InvalidArgument("Manifest must be a non-empty list of segments.")
        if len(segments) > self.limits.max_manifest_segments:
            raise InvalidArgument(f"Too many segments (max {self.limits.max_manifest_segments})")
        # Swift's parse checks come first and list every bad segment (unknown keys, itself).
        bad = [p for i, seg in enumerate(segments)
               if (p := slo.segment_problem(i, seg, f"{container.name}/{name}")) is not None]
        if bad:
            raise InvalidArgument("\n".join(bad))
        parts: list[tuple[bytes, int, int | None]] = []
        sources: list[int] = []  # the segments' versions, which must outlive the commit
        stored: list[dict[str, Any]] = []
        etags = hashlib.md5(usedforsecurity=False)
        total = 0
        problems: list[tuple[str, str]] = []  # (the segment's path as given, what is wrong)
        for i, seg in enumerate(segments):
            if isinstance(seg, dict) and "data" in seg:
                # Swift's inline segment: base64 bytes stored with the manifest's object.
                data = _inline_data(i, seg)
                if data:
                    root, length = self.mapper.build(io.BytesIO(data))
                    parts.append((root, 0, length))
                    total += length
                etags.update(hashlib.md5(data, usedforsecurity=False).hexdigest().encode())
                stored.append({"data": seg["data"]})
                continue
            if not isinstance(seg, dict) or not isinstance(seg.get("path"), str):
                raise InvalidArgument(f"Index {i}: segment needs a 'path'")
            path = seg["path"].lstrip("/")
            cname, _, oname = path.partition("/")
            seg_container = self.catalog.container(account_id, cname) if oname else None
            version = self.catalog.object(seg_container.id, oname) if seg_container else None
            if oname and not may_read(seg_container):
                # The same answer whether the container (or the object) exists or not: a
                # missing container is asked about too (may_read(None)), or 403 against 404
                # would tell which container names the account holds (issue 26, finding 14).
                problems.append((seg["path"], "403 Forbidden"))
                continue
            if version is not None and version.sys_meta():
                # A symlink as a segment: its target's content (as Swift's SLO reads it).
                version = symlinks.resolve(self.catalog, account_id, version, may_read)
            if version is None:
                problems.append((seg["path"], "404 Not Found"))
                continue
            want_etag = seg.get("etag")
            want_size = seg.get("size_bytes")
            if want_etag not in (None, "") and str(want_etag).strip('"').lower() != version.etag:
                problems.append((seg["path"], "Etag Mismatch"))
            if want_size is not None and _int_or_none(want_size) != version.size:
                problems.append((seg["path"], "Size Mismatch"))
            offset, length = 0, version.size
            if seg.get("range"):
                offset, length = _segment_range(str(seg["range"]), version.size)
            if length < self.limits.min_segment_size and i < len(segments) - 1:
                problems.append((seg["path"], "Too Small"))
            if version.root is not None and length:
                parts.append((self.stored_root(version), offset, length))
                sources.append(version.version_id)
            total += length
            etags.update(version.etag.encode()
                         + (f":{offset}-{offset + length - 1};".encode()
                            if seg.get("range") else b""))
            entry: dict[str, Any] = {
                "name": "/" + path, "hash": version.etag, "bytes": version.size,
                "content_type": version.content_type,
                "last_modified": _iso(version.created)}
            if seg.get("range"):
                entry["range"] = f"{offset}-{offset + length - 1}"
            stored.append(entry)
        if problems:
            raise slo.SegmentErrors(problems)
        if total > self.limits.max_file_size:
            raise TooLarge("the large object would exceed the maximum object size")
        root, size = self.mapper.concat(parts) if parts else (self.mapper.empty(), 0)
        assert size == total
        if etag is not None and etag.strip('"').lower() != etags.hexdigest():
            raise ChecksumMismatch(f"ETag {etag} does not match the manifest's "
                                   f"{etags.hexdigest()}")
        return self.commit_version(
            container.id, name, root=root, size=size, etag=etags.hexdigest(),
            content_type=content_type, meta=meta, modified_by=modified_by,
            delete_at=delete_at, slo_manifest=json.dumps(stored), sources=sources)


def _inline_data(index: int, seg: Mapping[str, Any]) -> bytes:
    """The bytes of an inline SLO segment ({"data": base64}), refused as Swift's are."""
    if set(seg) != {"data"}:
        raise InvalidArgument(f"Index {index}: a data segment takes no other key")
    try:
        return base64.b64decode(str(seg["data"]), validate=True)
    except ValueError:
        raise InvalidArgument(f"Index {index}: bad base64 in 'data'") from None


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):  # (1e999 is a JSON number too)
        return None


def _segment_range(text: str, size: int) -> tuple[int, int]:
    first, _, last = text.partition("-")
    try:
        if first == "":
            n = min(int(last), size)
            return size - n, n
        start = int(first)
        end = size - 1 if last == "" else min(int(last), size - 1)
    except ValueError:
        raise InvalidArgument(f"bad segment range {text!r}") from None
    if start > end or start >= size:
        raise InvalidArgument(f"unsatisfiable segment range {text!r}")
    return start, end - start + 1


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e6):06d}"


def _joined(segments: list[ObjectVersion]) -> Content:
    """A DLO's content from its segments, its ETag the MD5 of theirs (as Swift's)."""
    joined = "".join(s.etag for s in segments).encode()
    return Content([Part(s.root, s.size, s.inline) for s in segments if s.root is not None],
                   sum(s.size for s in segments),
                   hashlib.md5(joined, usedforsecurity=False).hexdigest(), True)

"""Static large objects: what Swift's SLO middleware knows about a manifest besides its
assembly (pithos.objects.service.ObjectService.put_slo): the keys a segment may have, the
parts a stored manifest names (?part-number=N), and the manifest in the form it was PUT
(?multipart-manifest=get&format=raw)."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from pithos.core.errors import InvalidArgument

# How many manifests deep a static large object's GET follows its first segment (Swift's
# SloGetContext.max_slo_recursion_depth): a deeper one is 409 there.
SLO_RECURSION_MAX = 10
# A segment is an object ("path", with optional checks and a range) or inline "data"; any
# other key is refused, as Swift's (a typo such as "teag" would otherwise skip the check).
SEGMENT_KEYS = {"path": {"path", "etag", "size_bytes", "range"}, "data": {"data"}}


class SegmentErrors(InvalidArgument):
    """A manifest PUT refused for its segments (Swift's 400): `problems` lists each as
    (its path as the manifest names it, what is wrong: "404 Not Found", "Etag Mismatch"...),
    as Swift's SLO reports them."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("Errors:\n" + "\n".join(f"/{path.lstrip('/')}: {why}"
                                                 for path, why in problems))
        self.problems = problems


def segment_problem(index: int, seg: Any, manifest_path: str) -> str | None:
    """Why segment `seg` (number `index`) of a manifest PUT to `manifest_path`
    ("container/object") is refused, in Swift's words; None when it is not."""
    if not isinstance(seg, dict):
        return f"Index {index}: not a JSON object"
    kind = "path" if "path" in seg else "data" if "data" in seg else None
    if kind is None:
        return f"Index {index}: expected keys to include one of 'path' or 'data'"
    extraneous = sorted(k for k in seg if k not in SEGMENT_KEYS[kind])
    if extraneous:
        return f"Index {index}: extraneous keys " + ", ".join(json.dumps(k) for k in extraneous)
    if kind == "path" and isinstance(seg["path"], str) \
            and seg["path"].lstrip("/") == manifest_path:
        return f"Index {index}: manifest must not include itself as a segment"
    return None


def _entries(manifest: str) -> list[dict[str, Any]]:
    entries = json.loads(manifest)
    return entries if isinstance(entries, list) else []


def first_segment(manifest: str) -> tuple[str, str] | None:
    """(container, object) of a stored manifest's first object segment (data segments are
    skipped); None when it has none."""
    for entry in _entries(manifest):
        container, _, obj = str(entry.get("name") or "").lstrip("/").partition("/")
        if obj:
            return container, obj
    return None


def part_lengths(manifest: str) -> list[int]:
    """The length of each part (segment) of a stored manifest, in order."""
    out = []
    for entry in _entries(manifest):
        if "data" in entry:
            out.append(len(base64.b64decode(entry["data"])))
        elif entry.get("range"):
            first, _, last = str(entry["range"]).partition("-")
            out.append(int(last) - int(first) + 1)
        else:
            out.append(int(entry.get("bytes", 0)))
    return out


def manifest_etag(manifest: str) -> str:
    """The MD5 of the manifest as ?multipart-manifest=get serves it (Swift's
    X-Manifest-Etag, and the object's hash in listings)."""
    return hashlib.md5(manifest.encode(), usedforsecurity=False).hexdigest()


def raw_manifest(manifest: str) -> bytes:
    """The stored manifest in the form a ?multipart-manifest=put takes (path, etag,
    size_bytes, range; data segments as they are): what format=raw answers, so that a
    client can PUT it back."""
    out = []
    for entry in _entries(manifest):
        if "data" in entry:
            out.append(entry)
            continue
        raw = {"path": entry.get("name"), "etag": entry.get("hash"),
               "size_bytes": entry.get("bytes")}
        if entry.get("range"):
            raw["range"] = entry["range"]
        out.append(raw)
    return json.dumps(out, sort_keys=True).encode()

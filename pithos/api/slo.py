"""Swift's SLO reads beyond the content: ?multipart-manifest=get (and &format=raw) and
?part-number=N (one segment of the large object, as a 206)."""

from __future__ import annotations

import falcon

from pithos.api.errors import HTTPStatusError
from pithos.api.http import ByteRange
from pithos.objects import ObjectVersion, slo

PART_NOT_SATISFIABLE = b"The requested part number is not satisfiable"


def manifest_body(req: falcon.Request, v: ObjectVersion) -> tuple[bytes, str]:
    """(body, content type) of ?multipart-manifest=get: the stored manifest as JSON, or with
    format=raw the manifest as it is PUT, typed as the large object is (so that a copy of it
    stays what it was), as Swift's."""
    assert v.slo_manifest is not None
    if req.get_param("format") == "raw":
        return slo.raw_manifest(v.slo_manifest), v.content_type
    return v.slo_manifest.encode(), "application/json; charset=utf-8"


def part_number(req: falcon.Request) -> int | None:
    """?part-number=N of a read of an SLO: N, checked as Swift's; None without it."""
    text = req.get_param("part-number")
    if text is None:
        return None
    try:
        n = int(text)
        if n <= 0:
            raise ValueError
    except ValueError:
        raise HTTPStatusError(400, "Part number must be an integer greater than 0") from None
    if req.get_header("Range") is not None:
        raise HTTPStatusError(400, "Range requests are not supported with part number queries")
    return n


def part_range(req: falcon.Request, resp: falcon.Response, v: ObjectVersion, n: int,
               size: int) -> ByteRange | None:
    """The bytes of part `n` of SLO `v` (X-Parts-Count set); None when there is no such part,
    `resp` then being Swift's 416 (its reason as the body of a GET, none for a HEAD)."""
    assert v.slo_manifest is not None
    lengths = slo.part_lengths(v.slo_manifest)
    resp.set_header("X-Parts-Count", str(len(lengths)))
    if n > len(lengths):
        resp.status = falcon.HTTP_416
        resp.set_header("Content-Range", f"bytes */{size}")
        resp.content_type = "text/plain; charset=utf-8"
        body = b"" if req.method == "HEAD" else PART_NOT_SATISFIABLE
        resp.content_length = len(body)
        resp.data = body
        return None
    start = sum(lengths[:n - 1])
    return ByteRange(start, start + lengths[n - 1] - 1)


def read_headers(resp: falcon.Response, v: ObjectVersion) -> None:
    """What a read of an SLO's content says of its manifest: X-Manifest-Etag (the MD5 of what
    ?multipart-manifest=get serves)."""
    assert v.slo_manifest is not None
    resp.set_header("X-Manifest-Etag", slo.manifest_etag(v.slo_manifest))


def part_span(v: ObjectVersion, n: int) -> tuple[int, int]:
    """(offset, length) of part `n` of SLO `v`, for a copy of that part (?part-number=N on
    a COPY or an X-Copy-From PUT); 416 when there is no such part."""
    assert v.slo_manifest is not None
    lengths = slo.part_lengths(v.slo_manifest)
    if n > len(lengths):
        raise HTTPStatusError(416, PART_NOT_SATISFIABLE.decode(),
                              {"Content-Range": f"bytes */{v.size}"})
    return sum(lengths[:n - 1]), lengths[n - 1]


def raw_body(v: ObjectVersion) -> bytes:
    """SLO `v`'s manifest as a ?multipart-manifest=put takes it."""
    assert v.slo_manifest is not None
    return slo.raw_manifest(v.slo_manifest)

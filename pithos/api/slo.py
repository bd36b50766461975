"""Swift's SLO reads beyond the content: ?multipart-manifest=get (and &format=raw) and
?part-number=N (one segment of the large object, as a 206)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from urllib.parse import quote

import falcon

from pithos.api.bulk import report
from pithos.api.errors import EXPLANATIONS, REASONS, HTTPStatusError, status_of
from pithos.api.http import ByteRange, http_date
from pithos.core.errors import ChecksumMismatch, PithosError
from pithos.core.offload import Offload
from pithos.objects import ObjectVersion, slo

log = logging.getLogger("pithos.api")

# Seconds between two heartbeats of a manifest PUT with ?heartbeat=on (/info's slo
# yield_frequency, Swift's default).
YIELD_FREQUENCY_S = 10

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


def put_with_heartbeat(req: falcon.Request, resp: falcon.Response,
                       put: Callable[[], ObjectVersion], offload: Offload | None) -> None:
    """A manifest PUT with ?heartbeat=on, as Swift's SLO answers it: 202 at once, a space
    every YIELD_FREQUENCY_S while `put` (the assembly and its commit) runs, so that a client
    waiting on a long manifest sees the connection alive, then a blank line and the outcome
    as a report (JSON, XML or text as Accept asks: Response Status, Response Body, Errors,
    and Etag and Last Modified when it was made).  `put` runs as a task of `offload`'s
    spawner (in-line without one)."""
    resp.status = falcon.HTTP_202
    resp.content_type = report(req, {"Errors": []}, "upload")[0]

    def body() -> Iterator[bytes]:
        yield b" "  # (the status and headers go out with it)
        summary: dict[str, object]
        try:
            if offload is None:
                v = put()
            else:
                task = offload.spawner.submit(put)
                while True:
                    try:
                        v = task.result(timeout=YIELD_FREQUENCY_S)
                        break
                    except FutureTimeout:
                        yield b" "
        except PithosError as exc:
            status = status_of(exc)
            reason = REASONS.get(status, "Error")
            # Swift's words for a segment's problems and a wrong ETag; ours otherwise.
            swift_words = isinstance(exc, (slo.SegmentErrors, ChecksumMismatch))
            summary = {"Response Status": f"{status} {reason}",
                       "Response Body": f"{reason}\n" + (
                           EXPLANATIONS.get(status, "") if swift_words else str(exc)),
                       "Errors": [[quote(path), why] for path, why in
                                  getattr(exc, "problems", [])]}
        except Exception:
            log.exception("%s %s (heartbeat) failed", req.method, req.path)
            summary = {"Response Status": "500 Internal Server Error",
                       "Response Body": "internal error", "Errors": []}
        else:
            summary = {"Response Status": "201 Created", "Etag": f'"{v.etag}"',
                       "Last Modified": http_date(v.created), "Response Body": "",
                       "Errors": []}
        yield b"\r\n\r\n" + report(req, summary, "upload")[1].encode()

    resp.stream = body()

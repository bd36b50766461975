"""Swift's archive extraction (the `bulk` middleware's extract-archive): a PUT to
/v1/ACCOUNT, /v1/ACCOUNT/CONTAINER or /v1/ACCOUNT/CONTAINER/PREFIX with
`?extract-archive=tar|tar.gz|tar.bz2` stores each regular file of the archive as an object
(its path below the URL's; at the account's level the first component names the container,
made if missing).  Each object is written as its own PUT would be: the caller's rights, the
container's quotas, names checked.  The answer is 200 with Swift's summary (plain text, or
JSON when accepted): "Number Files Created", "Response Status" (201 Created, or 400 Bad
Request when something failed) and the errors, one [path, status] each.

The archive is read as a stream, one member at a time (tarfile's "r|" modes, decompressed on
the fly), each file's bytes going straight into the block store: memory does not grow with
the archive.  A member header (a long name, pax attributes) larger than MAX_HEADER_BYTES ends
the extraction (400): tarfile would read it whole into memory.
"""

from __future__ import annotations

import mimetypes
import tarfile
import zlib
from typing import Any
from urllib.parse import quote

import falcon

from pithos.api.body import refuse_body
from pithos.api.bulk import send_report
from pithos.api.context import Services
from pithos.api.errors import REASONS, HTTPStatusError, status_of
from pithos.core.errors import (
    Conflict,
    Forbidden,
    InvalidArgument,
    PithosError,
    QuotaExceeded,
    TooLarge,
    Unauthenticated,
)
from pithos.objects import UserInfo
from pithos.objects.acl import Action
from pithos.objects.names import check_names

MODES = {"tar": "r|", "tar.gz": "r|gz", "tgz": "r|gz", "tar.bz2": "r|bz2", "tbz": "r|bz2"}
MAX_CONTAINERS_PER_EXTRACTION = 10000
MAX_FAILED_EXTRACTIONS = 1000
MAX_HEADER_BYTES = 1 << 20
# What one file's store may fail with and be listed for; anything else (a full disk, a
# backend down) ends the whole extraction.
_LISTED = (Unauthenticated, Forbidden, Conflict, InvalidArgument, QuotaExceeded, TooLarge)
_LONG_HEADERS = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE,
                 tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)


def info() -> dict[str, int]:
    """/info's "bulk_upload", with the keys Swift's middleware registers."""
    return {"max_containers_per_extraction": MAX_CONTAINERS_PER_EXTRACTION,
            "max_failed_extractions": MAX_FAILED_EXTRACTIONS}


class _TooManyContainers(Exception):
    pass


class _BoundedTarInfo(tarfile.TarInfo):
    """A header whose extension (long name, pax records) tarfile would read whole into
    memory is refused past MAX_HEADER_BYTES."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> Any:
        if self.type in _LONG_HEADERS and self.size > MAX_HEADER_BYTES:
            raise tarfile.HeaderError("an archive header larger than "
                                      f"{MAX_HEADER_BYTES} bytes")
        return super()._proc_member(tarfile_)  # type: ignore[misc]


def wanted(req: falcon.Request) -> str | None:
    """The archive format a PUT asks to extract, or None (not an extraction)."""
    value = req.get_param("extract-archive")
    return None if value is None else value.strip().lower().strip(".")


def extract(services: Services, req: falcon.Request, resp: falcon.Response, account: str,
            container: str | None, prefix: str | None) -> None:
    fmt = wanted(req) or ""
    user = req.context.user
    if fmt not in MODES:
        refuse_body(req.env)
        raise HTTPStatusError(400, "Unsupported archive format")
    if user is None:
        refuse_body(req.env)
        raise HTTPStatusError(401, "authentication required")
    if req.content_length is None and "chunked" not in (
            req.get_header("Transfer-Encoding") or "").lower():
        refuse_body(req.env)
        raise HTTPStatusError(411, "Missing Content-Length header.")
    created, errors = 0, []
    failure: str | None = None
    made: set[str] = set()
    try:
        with tarfile.open(mode=MODES[fmt], fileobj=req.stream,  # type: ignore[call-overload]
                          tarinfo=_BoundedTarInfo) as archive:
            for member in archive:
                if not member.isreg():
                    continue
                path = "/".join(p for p in member.name.split("/") if p not in ("", "."))
                if container is None:
                    cname, _, obj = path.partition("/")
                else:
                    cname, obj = container, f"{prefix.rstrip('/')}/{path}" if prefix else path
                try:
                    _store(services, user, account, cname, obj, member, archive, made)
                    created += 1
                except _LISTED as exc:
                    errors.append([quote(f"/{cname}/{obj}"),
                                   f"{status_of(exc)} {REASONS.get(status_of(exc), '')}"])
                    if len(errors) >= MAX_FAILED_EXTRACTIONS:
                        break
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        failure = f"Invalid Tar File: {exc}"
    except _TooManyContainers as exc:
        failure = str(exc)
    status = "201 Created" if not errors and failure is None else "400 Bad Request"
    send_report(req, resp, {"Number Files Created": created, "Response Body": failure or "",
                            "Response Status": status, "Errors": errors}, "extract")


def _store(services: Services, user: UserInfo, account: str, cname: str, obj: str,
           member: tarfile.TarInfo, archive: tarfile.TarFile, made: set[str]) -> None:
    """One file of the archive as object `obj` of container `cname` (made when missing)."""
    if not cname or not obj:
        raise InvalidArgument("Invalid path")
    objects, authz = services.objects, services.objects.authz
    check_names(services.limits, account, cname, obj)
    try:
        _, c = authz.container(user, account, cname, Action.OBJECT_WRITE)
    except PithosError as exc:
        if status_of(exc) != 404 or cname in made:
            raise
        if len(made) >= MAX_CONTAINERS_PER_EXTRACTION:
            raise _TooManyContainers(f"More than {MAX_CONTAINERS_PER_EXTRACTION} containers "
                                     "to create from tar.") from None
        info = authz.account(user, account, Action.CONTAINER_WRITE)
        objects.create_container(info, cname, {}, objects.container_policy(user, info))
        made.add(cname)
        _, c = authz.container(user, account, cname, Action.OBJECT_WRITE)
    objects.check_quota(c, obj, member.size)
    body = archive.extractfile(member)
    assert body is not None
    guessed, _ = mimetypes.guess_type(obj, strict=False)
    with objects.upload_lease():
        stored = objects.store(body, member.size, chunking=c.chunking)  # type: ignore[arg-type]
        objects.create(c, obj, stored, etag=None,
                       content_type=guessed or "application/octet-stream",
                       meta={"user": {}, "sys": {}}, modified_by=f"{user.account}:{user.name}",
                       delete_at=None, uploader=user)

"""The request headers an object keeps as its system metadata, and X-Object-Manifest: what
a PUT, a copy or a POST stores of them, and how they are answered (pithos.api.objects)."""

from __future__ import annotations

from urllib.parse import quote, unquote

import falcon

from pithos.api.http import utf8_header
from pithos.core.errors import InvalidArgument
from pithos.objects import names

# X-Object-Manifest as the client sent it, kept in the "sys" domain beside the decoded
# manifest (not answered as a header of its own: `manifest_header`).
MANIFEST_SENT = "x-object-manifest"
# Response headers kept as object metadata, in the "sys" domain (replaced by POST, as Swift).
SYS_HEADERS = ("Content-Disposition", "Content-Encoding", "Content-Language",
               "Cache-Control", "Expires")


def sys_meta_sent(req: falcon.Request) -> dict[str, str]:
    """What a write keeps of its request's headers as the object's system metadata."""
    meta = {h.lower(): v for h in SYS_HEADERS if (v := req.get_header(h)) is not None}
    # System metadata of our Swift middleware (symlinks, versioned writes); clients cannot
    # send it (pithos.api.subrequest.Gatekeeper removes it from their requests).
    meta.update((k.lower(), v) for k, v in req.headers.items()
                if k.startswith("X-OBJECT-SYSMETA-"))
    manifest = req.get_header("X-Object-Manifest")
    if manifest is not None:
        # As sent, percent-encoded or not: Swift answers the header it stored
        # (`manifest_header`); the catalog keeps the decoded "container/prefix".
        meta[MANIFEST_SENT] = manifest
    return meta


def manifest_header(manifest: str, sent: str | None = None) -> str:
    """X-Object-Manifest as Swift answers it: the header as the client sent it (`sent`, as
    WSGI carries it) when that names this manifest (a POST or a copy may have changed the
    manifest since), else the UTF-8 bytes of "container/prefix" (latin-1 characters), or
    percent-encoded when the name holds a control character that a header cannot carry."""
    if sent is not None:
        try:
            if names.dlo_manifest(unquote(utf8_header(sent))) == manifest:
                return sent
        except InvalidArgument:
            pass  # (not what a manifest was made of: the decoded one answers)
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in manifest):
        return quote(manifest)
    return manifest.encode("utf-8").decode("latin-1")


def dlo_manifest_sent(req: falcon.Request) -> str | None:
    """X-Object-Manifest of a PUT or POST: "container/prefix", percent-decoded UTF-8."""
    text = req.get_header("X-Object-Manifest")
    return None if text is None else names.dlo_manifest(unquote(utf8_header(text)))

"""Swift's symlinks: an object PUT with X-Symlink-Target (and -Account) and an empty body is a
link; GET and HEAD follow it (`?symlink=get` reads the link itself), up to SYMLOOP_MAX links
in a row.  A static link (X-Symlink-Target-Etag) is checked against its target when made and
when followed.  POST to a link answers 307 to its target; a copy of a link copies its target
(the link itself with `?symlink=get`); JSON container listings name each link's target.

The link lives in the object's system metadata (X-Object-Sysmeta-Symlink-*), as Swift keeps
it.  Every request this layer makes carries the caller's credentials: a link never lets
anyone read what they could not read by its target's own name."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

from pithos.api.subrequest import (
    Response,
    WsgiApp,
    call,
    error,
    new_env,
    send,
    split_v1,
    wsgi_path,
)
from pithos.objects.symlinks import ACCOUNT, BYTES, ETAG, SLO_ETAG, SYMLOOP_MAX, TARGET

MD5_OF_EMPTY = "d41d8cd98f00b204e9800998ecf8427e"
# Client header -> system metadata, both ways.
CLIENT_NAMES = (("X-Symlink-Target", TARGET), ("X-Symlink-Target-Account", ACCOUNT),
                ("X-Symlink-Target-Etag", ETAG), ("X-Symlink-Target-Bytes", BYTES))
# What may make a GET of a link fail before its metadata is seen (the link's own empty body
# and MD5 answer them): asked again without them.
CONDITIONAL = ("HTTP_RANGE", "HTTP_IF_MATCH", "HTTP_IF_NONE_MATCH", "HTTP_IF_MODIFIED_SINCE",
               "HTTP_IF_UNMODIFIED_SINCE")
TARGET_FORM = "X-Symlink-Target header must be of the form <container name>/<object name>"


class LinkError(Exception):
    def __init__(self, status: str, text: str,
                 headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(text)
        self.status, self.text, self.headers = status, text, headers or []


def info() -> dict[str, Any]:
    return {"symloop_max": SYMLOOP_MAX, "static_links": True}


def _etag(value: str | None) -> str | None:
    return value.strip().strip('"') if value else value


def _query(env: dict[str, Any]) -> dict[str, str]:
    qs = env.get("QUERY_STRING", "")
    return dict(parse_qsl(qs, keep_blank_values=True)) if qs else {}


class Symlinks:
    def __init__(self, app: WsgiApp) -> None:
        self.app = app

    def __call__(self, env: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
        parts = split_v1(env.get("PATH_INFO", ""))
        if parts is None or parts[1] is None:
            return self.app(env, start_response)
        method = env.get("REQUEST_METHOD", "GET")
        try:
            if parts[2] is None:
                if method == "GET":
                    return send(self._listing(env, parts[0]), start_response)
                return self.app(env, start_response)
            if method in ("GET", "HEAD"):
                if _query(env).get("symlink") == "get":
                    resp = call(self.app, env)
                    _to_client_headers(resp)
                    return send(resp, start_response)
                return send(self._follow(env, parts[0]), start_response)
            if method == "PUT" and "HTTP_X_SYMLINK_TARGET" in env:
                return send(self._put(env, parts), start_response)
            if method == "POST":
                return send(self._post(env, parts[0]), start_response)
            if method == "COPY" or (method == "PUT" and "HTTP_X_COPY_FROM" in env):
                if _query(env).get("symlink") != "get":
                    return self.app(self._copy_env(env, parts), start_response)
                # The link itself copied; X-Symlink-Target-Account may point it elsewhere.
                account = env.pop("HTTP_X_SYMLINK_TARGET_ACCOUNT", None)
                if account is not None:
                    env["HTTP_X_OBJECT_SYSMETA_SYMLINK_TARGET_ACCOUNT"] = account
            return self.app(env, start_response)
        except LinkError as exc:
            return error(start_response, exc.status, exc.text, exc.headers,
                         head=method == "HEAD")

    # -- GET / HEAD ----------------------------------------------------------------------------

    def _follow(self, env: dict[str, Any], account: str, target_etag: str | None = None,
                softlinks: bool = True) -> Response:
        """The response for the object at env's path, links followed (static ones only
        without `softlinks`); `target_etag`: the ETag a static link expects there."""
        resp = call(self.app, env)
        if target_etag is None and TARGET not in resp.sysmeta:
            if resp.ok or not any(k in env for k in CONDITIONAL):
                return resp  # not a link: the hot path ends here
            # A link's own empty body fails a Range or a precondition meant for its target.
            probe = call(self.app, new_env(env, "HEAD", _path(env),
                                           _strip_symlink_query(env)))
            probe.drain()
            if TARGET in probe.sysmeta:
                resp.drain()
                resp = probe
        loops = 0
        last_path: str | None = None
        while True:
            target = resp.header(TARGET)
            link_etag = _etag(resp.header(ETAG))
            if target is None or not (link_etag or softlinks):
                break
            resp.drain()
            found = link_etag or _object_etag(resp)
            if target_etag and target_etag != found:
                raise LinkError("409 Conflict", "X-Symlink-Target-Etag headers do not match",
                                [("Content-Location", last_path or "")])
            if loops >= SYMLOOP_MAX:
                raise LinkError("409 Conflict", "Too many levels of symbolic links, maximum "
                                f"allowed is {SYMLOOP_MAX}")
            loops += 1
            account = unquote(resp.header(ACCOUNT) or "") or account
            path = f"/v1/{account}/{unquote(target)}"
            last_path = quote(path)
            env = dict(env)
            env["PATH_INFO"] = wsgi_path(path)
            # A version of the link (object versioning's ?version-id) names its target,
            # whose current version is read.
            env["QUERY_STRING"] = "&".join(
                p for p in env.get("QUERY_STRING", "").split("&")
                if p.split("=", 1)[0] != "version-id")
            env["RAW_URI"] = last_path + ("?" + env["QUERY_STRING"]
                                          if env.get("QUERY_STRING") else "")
            env.pop("REQUEST_URI", None)
            target_etag = link_etag
            resp = call(self.app, env)
        final = _object_etag(resp)
        if final and target_etag and target_etag != final:
            resp.drain()
            raise LinkError("409 Conflict", f"Object Etag {final!r} does not match "
                            f"X-Symlink-Target-Etag header {target_etag!r}",
                            [("Content-Location", last_path or "")])
        if last_path is not None:
            resp.add_header("Content-Location", last_path)
        return resp

    # -- PUT -----------------------------------------------------------------------------------

    def _put(self, env: dict[str, Any], parts: tuple[str, str | None, str | None]
             ) -> Response:
        if env.get("CONTENT_LENGTH") not in (None, "", "0") or (
                not env.get("CONTENT_LENGTH") and env["wsgi.input"].read(1)):
            raise LinkError("400 Bad Request", "Symlink requests require a zero byte body")
        raw = _header_text(env, "HTTP_X_SYMLINK_TARGET")
        target = unquote(raw)
        if target.startswith("/"):
            raise LinkError("412 Precondition Failed", TARGET_FORM)
        container, _, obj = target.partition("/")
        if not container or not obj:
            raise LinkError("412 Precondition Failed", TARGET_FORM)
        env["HTTP_X_OBJECT_SYSMETA_SYMLINK_TARGET"] = quote(f"{container}/{obj}")
        account = parts[0]
        if "HTTP_X_SYMLINK_TARGET_ACCOUNT" in env:
            account = unquote(_header_text(env, "HTTP_X_SYMLINK_TARGET_ACCOUNT"))
            if not account or "/" in account:
                raise LinkError("412 Precondition Failed",
                                "Account name cannot contain slashes" if account else
                                "Account name cannot be empty")
            env["HTTP_X_OBJECT_SYSMETA_SYMLINK_TARGET_ACCOUNT"] = quote(account)
        if (account, container, obj) == parts:
            raise LinkError("400 Bad Request", "Symlink cannot target itself")
        etag = _etag(env.get("HTTP_X_SYMLINK_TARGET_ETAG"))
        if etag and any(c in etag for c in ';"\\'):
            raise LinkError("400 Bad Request", "Bad X-Symlink-Target-Etag format")
        if etag:
            self._static(env, f"/v1/{account}/{container}/{obj}", etag)
        elif not env.get("CONTENT_TYPE"):
            env["CONTENT_TYPE"] = "application/symlink"
        for key in ("HTTP_X_SYMLINK_TARGET", "HTTP_X_SYMLINK_TARGET_ACCOUNT",
                    "HTTP_X_SYMLINK_TARGET_ETAG", "HTTP_X_SYMLINK_TARGET_BYTES"):
            env.pop(key, None)
        env["CONTENT_LENGTH"] = "0"
        return call(self.app, env)

    def _static(self, env: dict[str, Any], path: str, etag: str) -> None:
        """A static link's target checked (it exists, static links on the way to it hold,
        its ETag is `etag`); its size and ETag kept in the link's system metadata."""
        head = new_env(env, "HEAD", path)
        resp = self._follow(head, path.split("/")[2], target_etag=etag, softlinks=False)
        resp.drain()
        location = [("Content-Location", quote(path))]
        if resp.code == 404:
            raise LinkError("409 Conflict", "X-Symlink-Target does not exist", location)
        if not resp.ok:
            raise LinkError(resp.status, resp.status[4:])
        env["HTTP_X_OBJECT_SYSMETA_SYMLINK_TARGET_ETAG"] = etag
        env["HTTP_X_OBJECT_SYSMETA_SYMLINK_TARGET_BYTES"] = resp.header("content-length") or "0"
        if resp.header("x-manifest-etag") is not None:
            env["HTTP_X_OBJECT_SYSMETA_SYMLINK_TARGET_SLO_ETAG"] = resp.header("etag") or ""
        if not env.get("CONTENT_TYPE"):
            env["CONTENT_TYPE"] = resp.header("content-type") or "application/octet-stream"

    # -- POST, copies, listings ----------------------------------------------------------------

    def _post(self, env: dict[str, Any], account: str) -> Response:
        if "HTTP_X_SYMLINK_TARGET" in env:
            raise LinkError("400 Bad Request",
                            "A PUT request is required to set a symlink target")
        resp = call(self.app, env)
        target = resp.header(TARGET)
        if not resp.ok or target is None:
            return resp
        resp.drain()
        location = f"/v1/{resp.header(ACCOUNT) or quote(account)}/{target}"
        headers = [("Location", location)]
        if resp.header(ETAG):
            headers.append(("X-Symlink-Target-Etag", resp.header(ETAG) or ""))
        raise LinkError("307 Temporary Redirect", "The requested POST was applied to a "
                        "symlink. POST directly to the target to apply requested metadata.",
                        headers)

    def _copy_env(self, env: dict[str, Any], parts: tuple[str, str | None, str | None]
                  ) -> dict[str, Any]:
        """A copy of a link is a copy of what it links to: the request rewritten to copy
        from the last target (a map shared, as any copy).  Not a link: unchanged."""
        if env["REQUEST_METHOD"] == "COPY":
            source = f"/v1/{parts[0]}/{parts[1]}/{parts[2]}"
        else:
            src_account = unquote(_header_text(env, "HTTP_X_COPY_FROM_ACCOUNT") or parts[0])
            source = f"/v1/{src_account}/" + unquote(
                _header_text(env, "HTTP_X_COPY_FROM")).lstrip("/")
        resp = self._follow(new_env(env, "HEAD", source), source.split("/")[2])
        resp.drain()
        location = resp.header("content-location")
        if not resp.ok or location is None or unquote(location.split("?")[0]) == source:
            # (Not a link; an object of a versioned container names its own version there.)
            return env
        _, _, account, target = unquote(location).split("/", 3)
        if env["REQUEST_METHOD"] == "COPY":
            dest_account = _header_text(env, "HTTP_DESTINATION_ACCOUNT") or parts[0]
            dest = unquote(_header_text(env, "HTTP_DESTINATION")).lstrip("/")
            env = dict(env)
            env["REQUEST_METHOD"] = "PUT"
            path = f"/v1/{unquote(dest_account)}/{dest}"
            env["PATH_INFO"] = wsgi_path(path)
            env["RAW_URI"] = quote(path)
            env.pop("REQUEST_URI", None)
            env["CONTENT_LENGTH"] = "0"
        env["HTTP_X_COPY_FROM"] = quote(target)
        env["HTTP_X_COPY_FROM_ACCOUNT"] = quote(account)
        return env

    def _listing(self, env: dict[str, Any], account: str) -> Response:
        resp = call(self.app, env)
        if resp.code != 200 or not (resp.header("content-type") or "").startswith(
                "application/json"):
            return resp
        raw = resp.read()
        rows = json.loads(raw)
        if not isinstance(rows, list):  # the change feed (?changes_since) is an object
            resp.body_iter = [raw]
            return resp
        container = split_v1(env["PATH_INFO"])[1]  # type: ignore[index]
        for row in rows:
            # A link is an empty object: only those are asked about.
            if row.get("bytes") != 0 or row.get("hash") != MD5_OF_EMPTY or "name" not in row:
                continue
            head = call(self.app, new_env(env, "HEAD", f"/v1/{account}/{container}/"
                                          f"{row['name']}", "symlink=get"))
            head.drain()
            target = head.header(TARGET)
            if target is None:
                continue
            row["symlink_path"] = f"/v1/{head.header(ACCOUNT) or quote(account)}/{target}"
            if head.header(ETAG):
                row["symlink_etag"] = head.header(ETAG)
                row["symlink_bytes"] = int(head.header(BYTES) or 0)
            if head.header(SLO_ETAG):
                row["slo_etag"] = head.header(SLO_ETAG)
        body = json.dumps(rows).encode()
        resp.headers = [(k, str(len(body)) if k.lower() == "content-length" else v)
                        for k, v in resp.headers]
        resp.body_iter = [body]
        return resp


def _to_client_headers(resp: Response) -> None:
    """A link read as itself shows its target under the client's header names."""
    resp.headers += [(client, resp.sysmeta[sys]) for client, sys in CLIENT_NAMES
                     if sys in resp.sysmeta]


def _object_etag(resp: Response) -> str | None:
    """The ETag a static link names: a static large object's is its manifest's (Swift's
    symlinks sit below its SLO middleware and see the manifest object)."""
    return _etag(resp.header("x-manifest-etag") or resp.header("etag"))


def _header_text(env: dict[str, Any], key: str) -> str:
    """A header's value as the client's UTF-8 (WSGI hands over latin-1 characters)."""
    value = env.get(key, "")
    try:
        return str(value.encode("latin-1").decode("utf-8"))
    except (UnicodeEncodeError, UnicodeDecodeError):
        raise LinkError("412 Precondition Failed", "Invalid UTF8 or contains NULL") from None


def _path(env: dict[str, Any]) -> str:
    return str(env["PATH_INFO"].encode("latin-1").decode("utf-8"))


def _strip_symlink_query(env: dict[str, Any]) -> str:
    return "symlink=get"

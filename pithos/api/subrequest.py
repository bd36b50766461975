"""WSGI plumbing for the Swift middleware we offer (symlinks, versioned writes): they sit
between the client and the Swift API as Swift's own do, and make their own requests to the
layer below them with the caller's credentials (so a symlink's target or an archive container
is authorized as the caller, never behind its back).

System metadata (`X-Object-Sysmeta-*`, `X-Container-Sysmeta-*`) is what those middleware
keep on objects and containers; `Gatekeeper`, the outermost layer, removes it from what a
client sends and from what it receives, as Swift's gatekeeper does."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from operator import itemgetter
from typing import Any
from urllib.parse import quote

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
SYSMETA_ENV = ("HTTP_X_OBJECT_SYSMETA_", "HTTP_X_CONTAINER_SYSMETA_")
# As falcon names them (lower case): the API's answer hands them to the layers in the
# request's environment (SYSMETA_KEY), never as headers (pithos.api.app.App).
SYSMETA_HEADERS = ("x-object-sysmeta-", "x-container-sysmeta-")
SYSMETA_KEY = "pithos.sysmeta"
# Request headers a middleware's own request carries over from the client's: who it is, and
# the page it comes from (a container's referrer ACL may let it read: a link's target is read
# with the caller's rights, as Swift's subrequests copy HTTP_REFERER).
CREDENTIALS = ("HTTP_X_AUTH_TOKEN", "HTTP_X_STORAGE_TOKEN", "HTTP_REFERER")
_name_of, _value_of = itemgetter(0), itemgetter(1)


class Response:
    """A response of the layer below, read whole (middleware requests have small bodies),
    or with its body left to stream (`body_iter`) when it is handed to the client as is."""

    def __init__(self, status: str, headers: list[tuple[str, str]],
                 body_iter: Iterable[bytes]) -> None:
        self.status = status
        self.headers = headers
        self.body_iter = body_iter
        self._by_name: dict[str, str] | None = None
        # The system metadata of what was asked (lower-case names): SYSMETA_KEY.
        self.sysmeta: dict[str, str] = {}

    @property
    def code(self) -> int:
        return int(self.status[:3])

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    def header(self, name: str) -> str | None:
        """A header, or system metadata, by its lower-case name."""
        if name in self.sysmeta:
            return self.sysmeta[name]
        if self._by_name is None:
            self._by_name = {k.lower(): v for k, v in self.headers}
        return self._by_name.get(name)

    def add_header(self, name: str, value: str) -> None:
        self.headers.append((name, value))
        self._by_name = None

    def read(self) -> bytes:
        try:
            return b"".join(self.body_iter)
        finally:
            close(self.body_iter)

    def drain(self) -> None:
        self.read()


def close(body: Iterable[bytes]) -> None:
    closer = getattr(body, "close", None)
    if closer is not None:
        closer()


def call(app: WsgiApp, env: dict[str, Any]) -> Response:
    """Run `env` through `app`; the response with its body not yet read."""
    got: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Callable[[bytes], None]:
        got[:] = [status, list(headers)]
        return lambda _data: None

    env.pop(SYSMETA_KEY, None)
    body = app(env, start_response)
    if not got:  # a WSGI app may call start_response at its first chunk only
        body = list(body)
    resp = Response(got[0], got[1], body)
    resp.sysmeta = env.pop(SYSMETA_KEY, None) or {}
    return resp


def send(resp: Response, start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response(resp.status, resp.headers)
    return resp.body_iter


def wsgi_path(path: str) -> str:
    """A path (str) as WSGI's PATH_INFO holds it: latin-1 characters carrying UTF-8 bytes."""
    return path.encode("utf-8").decode("latin-1")


def new_env(env: dict[str, Any], method: str, path: str, query: str = "",
            headers: dict[str, str] | None = None, body: bytes = b"",
            keep_headers: bool = False) -> dict[str, Any]:
    """A request of the middleware's own, from the client's `env`: `path` a str (UTF-8
    names), the caller's credentials (and, with `keep_headers`, every other header of the
    client's request), `headers` as given."""
    import io

    out = {k: v for k, v in env.items() if not k.startswith("HTTP_")
           and k not in ("CONTENT_TYPE", "CONTENT_LENGTH")}
    for k in (env if keep_headers else CREDENTIALS):
        if k.startswith("HTTP_") and k in env and k != "HTTP_TRANSFER_ENCODING":
            out[k] = env[k]
    if keep_headers and "CONTENT_TYPE" in env:
        out["CONTENT_TYPE"] = env["CONTENT_TYPE"]
    out["REQUEST_METHOD"] = method
    out["PATH_INFO"] = wsgi_path(path)
    out["QUERY_STRING"] = query
    out["RAW_URI"] = quote(path, safe="/") + ("?" + query if query else "")
    out.pop("REQUEST_URI", None)
    out["CONTENT_LENGTH"] = str(len(body))
    out["wsgi.input"] = io.BytesIO(body)
    for name, value in (headers or {}).items():
        key = name.upper().replace("-", "_")
        if key == "CONTENT_TYPE":
            out["CONTENT_TYPE"] = value
        else:
            out["HTTP_" + key] = value
    return out


def split_v1(path: str) -> tuple[str, str | None, str | None] | None:
    """/v1/a[/c[/o]] (PATH_INFO, WSGI str) -> (account, container, object) as str, or None."""
    if not path.startswith("/v1/"):
        return None
    if not path.isascii():
        try:
            path = path.encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            return None
    parts = path.split("/", 4)[2:]
    account = parts[0]
    container = parts[1] if len(parts) > 1 and parts[1] else None
    obj = parts[2] if len(parts) > 2 and parts[2] else None
    if not account or (obj is not None and container is None):
        return None
    return account, container, obj


def error(start_response: Callable[..., Any], status: str, text: str,
          headers: list[tuple[str, str]] | None = None, head: bool = False) -> list[bytes]:
    """An answer of a layer's own: `text` as its body (announced only, for a HEAD)."""
    body = text.encode()
    start_response(status, [("Content-Type", "text/plain"),
                            ("Content-Length", str(len(body))), *(headers or [])])
    return [] if head else [body]


class Gatekeeper:
    """Outermost: no client sets system metadata (as Swift's gatekeeper); none reaches a
    client either, as the API hands it to the layers beside its headers (`sysmeta_out`)."""

    def __init__(self, app: WsgiApp) -> None:
        self.app = app

    def __call__(self, env: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
        try:
            # (One search over all the names: most requests carry no system metadata.)
            suspect = "_SYSMETA_" in "\n".join(env)
        except TypeError:  # (a name that is not a str: each looked at, as before)
            suspect = True
        if suspect:
            for key in [k for k in env if k.startswith(SYSMETA_ENV)]:
                del env[key]
        env.pop(SYSMETA_KEY, None)
        return self.app(env, start_response)


def sysmeta_out(env: dict[str, Any], headers: list[tuple[str, str]],
                title: Callable[[str], str],
                titled: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """The API's answer: its headers (names through `title`) without system metadata, which
    goes to env[SYSMETA_KEY] for the layer that asked.  `titled`: names seen before, none of
    them system metadata, with what `title` made of them (one look-up for each of those)."""
    if titled is not None:
        # Most answers name only headers seen before: one look-up each, by calls over all
        # of them (a comprehension costs ~11 bytecodes a header).
        names = list(map(titled.get, map(_name_of, headers)))
        if None not in names:
            return list(zip(names, map(_value_of, headers), strict=True))
    out = []
    seen = titled if titled is not None else {}
    for k, v in headers:
        name = seen.get(k)
        if name is not None:
            out.append((name, v))
        elif k.startswith(SYSMETA_HEADERS):
            env.setdefault(SYSMETA_KEY, {})[k] = v
        else:
            out.append((title(k), v))
    return out


def chunks(data: bytes) -> Iterator[bytes]:
    yield data

"""Swift's static web sites (the `staticweb` middleware of a Swift proxy): a container with
X-Container-Meta-Web-Index and/or -Web-Listings is served as a web site to anonymous readers
(a `.r:*` container; `.rlistings` for its listings), to temporary URLs, and to anyone who
sends `X-Web-Mode: true`:

- a directory (the container, or a path ending in "/") serves its index object
  (Web-Index), else an HTML listing (Web-Listings: true; styled by Web-Listings-CSS), else 404;
- a directory named without its "/" is redirected (301) to the name with it;
- a pseudo-directory marker (an object of Web-Directory-Type, default
  application/directory, of at most one byte) is a directory, not an object;
- an error of status N is served with the body of the object "N" + Web-Error when there is one.

Everything is read with the caller's own rights, as Swift's subrequests are: a listing needs
the right to list (`.rlistings`), an index the right to read.  Requests by a container's
owner without X-Web-Mode, and every write, go to the API as they are.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from urllib.parse import quote

import falcon

from pithos.api.context import Services
from pithos.api.errors import HTTPStatusError
from pithos.api.http import decode_path, iso_date, path_info
from pithos.api.listing import truthy
from pithos.api.objects import ObjectHandlers
from pithos.api.paths import Target
from pithos.core.errors import NotFound
from pithos.objects import ContainerInfo
from pithos.objects.acl import Action, ScopedUser

DIRECTORY_TYPE = "application/directory"
STYLE = ("  <style type=\"text/css\">\n"
         "   h1 {font-size: 1em; font-weight: bold;}\n"
         "   th {text-align: left; padding: 0px 1em 0px 1em;}\n"
         "   td {padding: 0px 1em 0px 1em;}\n"
         "   a {text-decoration: none;}\n"
         "  </style>\n")


def applies(req: falcon.Request) -> bool:
    """Whether a GET/HEAD is a web request: anonymous, a temporary URL's, or X-Web-Mode."""
    user = req.context.user
    return user is None or isinstance(user, ScopedUser) or truthy(req.get_header("X-Web-Mode"))


def _text(value: str) -> str:
    """A metadata value as the text the client meant: metadata keeps header values as WSGI
    hands them over (latin-1 characters, one per byte of the UTF-8 sent)."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


def _status(resp: falcon.Response) -> int:
    return resp.status if isinstance(resp.status, int) else int(str(resp.status)[:3])


def human_readable(value: int) -> str:
    """Swift's sizes in listings (1048576 -> "1Mi")."""
    n = float(value)
    index = -1
    while n >= 1024 and index + 1 < len("KMGTPEZY"):
        index += 1
        n = round(n / 1024)
    return f"{int(n)}" if index == -1 else f"{round(n)}{'KMGTPEZY'[index]}i"


class Web:
    """The settings of one container's site (its X-Container-Meta-Web-* metadata)."""

    def __init__(self, meta: dict[str, str]) -> None:
        get = {k.lower(): _text(v).strip() for k, v in meta.items()}.get
        self.index = get("web-index", "")
        self.error = get("web-error", "")
        self.listings = get("web-listings", "")
        self.label = get("web-listings-label", "")
        self.css = get("web-listings-css", "")
        self.dir_type = get("web-directory-type", "") or DIRECTORY_TYPE

    @property
    def on(self) -> bool:
        return bool(self.listings or self.index)


class StaticWeb:
    def __init__(self, services: Services, objects: ObjectHandlers) -> None:
        self.services = services
        self.objects = objects
        self.authz = services.objects.authz

    def handle(self, req: falcon.Request, resp: falcon.Response, t: Target,
               handler: Callable[[falcon.Request, falcon.Response, Target], None]) -> bool:
        """Serve a web GET/HEAD of container `t.container` (or of an object in it), `handler`
        being the API's own; False when the API should answer it as usual."""
        assert t.container is not None
        raw = path_info(req.env)
        if t.obj is None:
            return self._container(req, resp, t, raw)
        self._object(req, resp, t, raw, handler)
        return True

    # -- the container itself --------------------------------------------------------------

    def _container(self, req: falcon.Request, resp: falcon.Response, t: Target,
                   raw: str) -> bool:
        assert t.container is not None
        user = req.context.user
        try:
            _, c = self.authz.container(user, t.account, t.container, Action.LISTING,
                                        req.referer)
        except NotFound:
            return False
        web = Web(self.services.objects.container_detail(c).meta)
        if not web.on:
            if truthy(req.get_header("X-Web-Mode")):
                raise HTTPStatusError(404)
            return False
        if not raw.endswith("/"):
            self._redirect(req, resp, raw)
            return True
        if web.index and self._serve(req, resp, t, c, web.index):
            return True
        self._listing(req, resp, t, c, web, "")
        return True

    # -- an object, or a directory below the container -------------------------------------

    def _object(self, req: falcon.Request, resp: falcon.Response, t: Target, raw: str,
                handler: Callable[[falcon.Request, falcon.Response, Target], None]) -> None:
        assert t.container is not None and t.obj is not None
        # The object first, as Swift's GET: an object that is there costs nothing more (the
        # container's metadata is read only for what might be a directory marker, or none).
        before = set(resp.headers)
        try:
            handler(req, resp, t)
        except NotFound:
            pass
        else:
            length = resp.headers.get("content-length")
            if length is None or int(length) > 1 or not 200 <= _status(resp) < 400:
                return
            _, c, _ = self.authz.object_access(req.context.user, t.account, t.container,
                                               t.obj, Action.OBJECT_READ, req.referer)
            web = Web(self.services.objects.container_detail(c).meta)
            kind = (resp.content_type or "").partition(";")[0].strip()
            if not web.on or kind != web.dir_type:
                return
            # A directory marker: a directory to the site, not the object just prepared.
            for name in set(resp.headers) - before:
                resp.delete_header(name)
            resp.stream = resp.text = None
            self._directory(req, resp, t, raw, c, web)
            return
        _, c, _ = self.authz.object_access(req.context.user, t.account, t.container, t.obj,
                                           Action.OBJECT_READ, req.referer)
        web = Web(self.services.objects.container_detail(c).meta)
        if not web.on:
            raise NotFound("The resource could not be found.")
        self._directory(req, resp, t, raw, c, web)

    def _directory(self, req: falcon.Request, resp: falcon.Response, t: Target, raw: str,
                   c: ContainerInfo, web: Web) -> None:
        """Object path `t.obj` names no object: a directory of the site, or nothing."""
        assert t.obj is not None
        base = t.obj if t.obj.endswith("/") else t.obj + "/"
        if web.index and self.services.objects.find_object(c, base + web.index) is not None:
            if not raw.endswith("/"):
                self._redirect(req, resp, raw)
            else:
                self._serve(req, resp, t, c, base + web.index, web)
            return
        if not raw.endswith("/"):
            # A directory named without its slash: redirected if it holds anything.
            if not self.services.objects.list_objects(c.id, prefix=base, delimiter="/",
                                                      limit=1):
                self._error(req, resp, t, c, web, 404)
                return
            self._redirect(req, resp, raw)
            return
        self._listing(req, resp, t, c, web, t.obj)

    # -- answers ---------------------------------------------------------------------------

    def _serve(self, req: falcon.Request, resp: falcon.Response, t: Target,
               c: ContainerInfo, name: str, web: Web | None = None) -> bool:
        """Answer with object `name` of the container (read with the caller's rights);
        False if there is none."""
        try:
            self.objects.on_get(req, resp, Target(t.account, t.container, name)) \
                if req.method == "GET" else \
                self.objects.on_head(req, resp, Target(t.account, t.container, name))
        except NotFound:
            if web is not None:
                self._error(req, resp, t, c, web, 404)
                return True
            return False
        return True

    def _redirect(self, req: falcon.Request, resp: falcon.Response, raw: str) -> None:
        host = req.get_header("Host") or req.netloc
        location = quote(raw.encode("latin-1") + b"/", safe="/")
        resp.status = falcon.HTTP_301
        resp.set_header("Location", f"{req.scheme}://{host}{location}")
        resp.content_type = "text/html; charset=UTF-8"
        resp.text = ""

    def _error(self, req: falcon.Request, resp: falcon.Response, t: Target, c: ContainerInfo,
               web: Web, status: int, body: str | None = None) -> None:
        """Answer `status`, with the body of object STATUS+Web-Error when there is one."""
        if web.error:
            page = self.services.objects.find_object(c, f"{status}{web.error}")
            if page is not None:
                try:
                    self.objects.on_get(req, resp, Target(t.account, t.container,
                                                          f"{status}{web.error}"))
                except NotFound:
                    pass
                else:
                    resp.status = falcon.code_to_http_status(status)
                    return
        if body is None:
            raise HTTPStatusError(status)
        resp.status = falcon.code_to_http_status(status)
        resp.content_type = "text/html; charset=UTF-8"
        resp.text = body

    def _label(self, req: falcon.Request, web: Web) -> str:
        path = "/".join(decode_path(path_info(req.env)))
        full = f"/v1/{path}" if path else "/v1/"
        if web.label:
            return f"{web.label}/{'/'.join(full.split('/')[4:])}"
        return full

    def _css(self, web: Web, prefix: str) -> str:
        if web.css.startswith(("/", "http://", "https://")):
            return quote(web.css, safe=":/")
        return "../" * prefix.count("/") + quote(web.css)

    def _listing(self, req: falcon.Request, resp: falcon.Response, t: Target,
                 c: ContainerInfo, web: Web, prefix: str) -> None:
        label = html.escape(self._label(req, web))
        if not truthy(web.listings):
            body = f"<!DOCTYPE html>\n<html>\n<head>\n<title>Listing of {label}</title>\n"
            if web.css:
                body += (f"  <link rel=\"stylesheet\" type=\"text/css\" "
                         f"href=\"{self._css(web, prefix)}\" />\n")
            body += ("</head>\n<body>  <h1>Web Listing Disabled</h1>   <p>The owner of this "
                     "web site has disabled web listing.   <p>If you are the owner of this "
                     "web site, you can enable   web listing by setting "
                     "X-Container-Meta-Web-Listings.</p>")
            if web.index:
                body += (f"<h1>Index File Not Found</h1> <p>The owner of this web site has "
                         f"set  <b>X-Container-Meta-Web-Index: {html.escape(web.index)}</b>. "
                         " However, this file is not found.</p>")
            body += " </body>\n</html>\n"
            self._error(req, resp, t, c, web, 404, body)
            return
        # The right to list, as Swift's listing subrequest needs it (.rlistings).
        self.authz.container(req.context.user, t.account, c.name, Action.LISTING, req.referer)
        entries = self.services.objects.list_objects(
            c.id, prefix=prefix, delimiter="/",
            limit=self.services.limits.container_listing_limit)
        if prefix and not entries:
            self._error(req, resp, t, c, web, 404)
            return
        query, signed_prefix = self._tempurl_query(req)
        body = (f"<!DOCTYPE html>\n<html>\n <head>\n  <title>Listing of {label}</title>\n")
        if web.css:
            body += (f"  <link rel=\"stylesheet\" type=\"text/css\" "
                     f"href=\"{self._css(web, prefix)}\" />\n")
        else:
            body += STYLE
        body += (" </head>\n <body>\n"
                 f"  <h1 id=\"title\">Listing of {label}</h1>\n"
                 "  <table id=\"listing\">\n   <tr id=\"heading\">\n"
                 "    <th class=\"colname\">Name</th>\n    <th class=\"colsize\">Size</th>\n"
                 "    <th class=\"coldate\">Date</th>\n   </tr>\n")
        if len(prefix) > len(signed_prefix):
            body += ("   <tr id=\"parent\" class=\"item\">\n"
                     f"    <td class=\"colname\"><a href=\"../{query}\">../</a></td>\n"
                     "    <td class=\"colsize\">&nbsp;</td>\n"
                     "    <td class=\"coldate\">&nbsp;</td>\n   </tr>\n")
        for e in entries:
            if e.subdir:
                name = e.name[len(prefix):]
                body += ("   <tr class=\"item subdir\">\n"
                         f"    <td class=\"colname\"><a href=\"./"
                         f"{quote(name).replace('.', '%2E')}{query}\">{html.escape(name)}</a>"
                         "</td>\n    <td class=\"colsize\">&nbsp;</td>\n"
                         "    <td class=\"coldate\">&nbsp;</td>\n   </tr>\n")
        for e in entries:
            if not e.subdir:
                name = e.name[len(prefix):]
                kinds = " ".join("type-" + html.escape(k.lower())
                                 for k in e.content_type.split("/"))
                date = html.escape(iso_date(e.created)).split(".")[0].replace("T", " ")
                body += (f"   <tr class=\"item {kinds}\">\n"
                         f"    <td class=\"colname\"><a href=\"./"
                         f"{quote(name).replace('.', '%2E')}{query}\">{html.escape(name)}</a>"
                         f"</td>\n    <td class=\"colsize\">{human_readable(e.size)}</td>\n"
                         f"    <td class=\"coldate\">{date}</td>\n   </tr>\n")
        body += "  </table>\n </body>\n</html>\n"
        resp.status = falcon.HTTP_200
        resp.content_type = "text/html; charset=UTF-8"
        resp.text = body
        req.context.web_generated = True

    @staticmethod
    def _tempurl_query(req: falcon.Request) -> tuple[str, str]:
        """The query a temporary URL's listing puts on its links (the same signature: it
        signs a prefix), and that prefix."""
        if not isinstance(req.context.user, ScopedUser):
            return "", ""
        prefix = req.get_param("temp_url_prefix")
        if prefix is None:
            return "", ""
        parts = [f"temp_url_prefix={quote(prefix)}",
                 f"temp_url_expires={quote(req.get_param('temp_url_expires') or '')}",
                 f"temp_url_sig={req.get_param('temp_url_sig') or ''}"]
        ip_range = req.get_param("temp_url_ip_range")
        if ip_range:
            parts.append(f"temp_url_ip_range={quote(ip_range)}")
        if "inline" in req.params:
            parts.append("inline")
        return "?" + "&amp;".join(parts), prefix

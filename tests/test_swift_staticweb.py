"""Swift's static web sites (pithos/api/staticweb.py) against a live `pithos serve`, raw HTTP:
index, listings, directory markers, redirects, error pages, who gets the site (anonymous, a
temporary URL, X-Web-Mode) and who gets the API as usual."""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import urlencode

import pytest

from tests.swift_helpers import Login, login, request

KEY = "web-key"


@pytest.fixture(scope="module")
def me(pithos_server) -> Login:
    me = login(pithos_server)

    def put(path: str, body: bytes = b"", **headers: str) -> None:
        assert request(pithos_server, "PUT", f"{me.path}/{path}", body=body, token=me.token,
                       headers=headers).status in (201, 202)

    put("site", **{"X-Container-Read": ".r:*,.rlistings", "X-Container-Meta-Web-Index":
                   "index.html", "X-Container-Meta-Web-Error": "error.html"})
    put("site/index.html", b"<p>home</p>", **{"Content-Type": "text/html"})
    put("site/404error.html", b"<p>nothing here</p>", **{"Content-Type": "text/html"})
    put("site/docs", **{"Content-Type": "application/directory"})
    put("site/docs/a.txt", b"A")
    put("site/docs/deep/b.txt", b"B")
    put("site/about/index.html", b"<p>about</p>", **{"Content-Type": "text/html"})
    put("list", **{"X-Container-Read": ".r:*,.rlistings", "X-Container-Meta-Web-Listings":
                   "true", "X-Container-Meta-Web-Listings-Css": "style.css",
                   "X-Container-Meta-Temp-URL-Key": KEY})
    put("list/style.css", b"h1 {}")
    put("list/d/x.bin", b"x" * 2048)
    put("nolist", **{"X-Container-Read": ".r:*", "X-Container-Meta-Web-Listings": "true"})
    put("nolist/o", b"o")
    put("plain", **{"X-Container-Read": ".r:*,.rlistings", "X-Container-Meta-Temp-URL-Key": KEY})
    put("plain/o", b"o")
    return me


def get(server, path: str, method: str = "GET", **headers: str):
    return request(server, method, path, headers=headers)


def test_container_redirects_to_its_slash_then_serves_the_index(pithos_server, me):
    r = get(pithos_server, f"{me.path}/site", Host="example.test")
    assert r.status == 301
    assert r.headers["location"] == f"http://example.test{me.path}/site/"
    r = get(pithos_server, f"{me.path}/site/")
    assert r.status == 200 and r.body == b"<p>home</p>"


def test_directory_index_and_redirect(pithos_server, me):
    assert get(pithos_server, f"{me.path}/site/about").status == 301
    r = get(pithos_server, f"{me.path}/site/about/")
    assert r.status == 200 and r.body == b"<p>about</p>"


def test_directory_marker_is_a_directory(pithos_server, me):
    # "docs" is an application/directory marker: a directory, redirected to "docs/".
    assert get(pithos_server, f"{me.path}/site/docs").status == 301
    # Without an index there and without listings: the site's 404 page, with status 404.
    r = get(pithos_server, f"{me.path}/site/docs/")
    assert r.status == 404 and r.body == b"<p>nothing here</p>"


def test_missing_object_gets_the_error_page(pithos_server, me):
    r = get(pithos_server, f"{me.path}/site/nope.html")
    assert r.status == 404 and r.body == b"<p>nothing here</p>"
    # Objects themselves are served as they are.
    assert get(pithos_server, f"{me.path}/site/docs/a.txt").body == b"A"


def test_listing(pithos_server, me):
    r = get(pithos_server, f"{me.path}/list/")
    assert r.status == 200 and r.headers["content-type"].startswith("text/html")
    text = r.body.decode()
    assert f"Listing of {me.path}/list/" in text
    assert '<link rel="stylesheet" type="text/css" href="style.css" />' in text
    assert '<a href="./d/">d/</a>' in text and '<a href="./style%2Ecss">style.css</a>' in text
    r = get(pithos_server, f"{me.path}/list/d/")
    text = r.body.decode()
    assert 'href="../style.css"' in text and '<a href="../">../</a>' in text
    assert '<td class="colsize">2Ki</td>' in text
    assert get(pithos_server, f"{me.path}/list/nothing/").status == 404


def test_listing_needs_rlistings(pithos_server, me):
    assert get(pithos_server, f"{me.path}/nolist/").status == 401
    assert get(pithos_server, f"{me.path}/nolist/o").body == b"o"


def test_owner_gets_the_api_unless_web_mode(pithos_server, me):
    r = request(pithos_server, "GET", f"{me.path}/list/?format=json", token=me.token)
    assert r.status == 200 and r.json()[0]["name"] == "d/x.bin"
    r = request(pithos_server, "GET", f"{me.path}/list/", token=me.token,
                headers={"X-Web-Mode": "true"})
    assert r.status == 200 and b"Listing of" in r.body
    # A container that is no site: 404 in web mode, its API listing otherwise.
    assert request(pithos_server, "GET", f"{me.path}/plain", token=me.token,
                   headers={"X-Web-Mode": "true"}).status == 404
    assert get(pithos_server, f"{me.path}/plain").body == b"o\n"


def test_head(pithos_server, me):
    r = get(pithos_server, f"{me.path}/site/", method="HEAD")
    assert r.status == 200 and r.body == b""
    assert get(pithos_server, f"{me.path}/site/about", method="HEAD").status == 301


def _root_url(me: Login, container: str, prefix: str = "") -> str:
    """A temporary URL's query for every object of `container` (a signed empty prefix), in
    the order Swift's listings write it."""
    expires = int(time.time()) + 600
    signed = f"prefix:{me.path}/{container}/{prefix}"
    sig = hmac.new(KEY.encode(), f"GET\n{expires}\n{signed}".encode(),
                   hashlib.sha256).hexdigest()
    return urlencode({"temp_url_prefix": prefix, "temp_url_expires": expires,
                      "temp_url_sig": sig})


def test_tempurl_listing_carries_the_signature(pithos_server, me):
    query = _root_url(me, "list")
    r = get(pithos_server, f"{me.path}/list/?{query}")
    assert r.status == 200
    assert r.headers["content-disposition"] == "inline"
    text = r.body.decode()
    assert f'<a href="./d/?{query.replace("&", "&amp;")}">d/</a>' in text
    assert get(pithos_server, f"{me.path}/list/d/x.bin?{query}").status == 200
    # A container that is not a site: its root is no temporary URL's (its objects are).
    query = _root_url(me, "plain")
    assert get(pithos_server, f"{me.path}/plain/?{query}").status == 401
    assert get(pithos_server, f"{me.path}/plain/o?{query}").status == 200


def test_info_lists_staticweb(pithos_server):
    assert "staticweb" in request(pithos_server, "GET", "/info").json()

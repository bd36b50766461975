"""Swift's temporary URLs (pithos/api/tempurl.py) against a live `pithos serve`, raw HTTP:
each behaviour of Swift's tempurl middleware the functional suite relies on, and the limits
that keep a signed URL inside what it signs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from urllib.parse import quote, urlencode

import pytest

from tests.swift_helpers import Login, login, request

KEY = "account-secret"
CKEY = "container-secret"


@pytest.fixture(scope="module")
def me(pithos_server) -> Login:
    me = login(pithos_server)
    assert request(pithos_server, "POST", me.path, token=me.token,
                   headers={"X-Account-Meta-Temp-URL-Key": KEY}).status == 204
    for c, headers in (("tu", {}), ("tu2", {}),
                       ("tuc", {"X-Container-Meta-Temp-URL-Key": CKEY,
                                "X-Container-Read": "test2"})):
        assert request(pithos_server, "PUT", f"{me.path}/{c}", token=me.token,
                       headers=headers).status in (201, 202)
    for path in ("tu/o", "tu/dir/a", "tu2/o", "tuc/o", "tu2/seg1"):
        assert request(pithos_server, "PUT", f"{me.path}/{path}", body=b"data of " +
                       path.encode(), token=me.token,
                       headers={"X-Object-Meta-Secret": "s", "X-Object-Meta-Public-Tag": "t"}
                       ).status == 201
    assert request(pithos_server, "PUT", f"{me.path}/tuc/dlo", body=b"", token=me.token,
                   headers={"X-Object-Manifest": "tu2/seg"}).status == 201
    return me


def signed(me: Login, method: str, path: str, key: str = KEY, digest=hashlib.sha256,
           expires: int | None = None, prefix: str | None = None, ip: str | None = None,
           form: str = "hex", **extra: str) -> str:
    """`path` (below the account, unquoted) with a temporary URL's query."""
    expires = expires if expires is not None else int(time.time()) + 600
    full = f"{me.path}/{path}"
    container = path.split("/", 1)[0]
    target = f"prefix:{me.path}/{container}/{prefix}" if prefix is not None else full
    message = f"{method}\n{expires}\n{target}"
    if ip:
        message = f"ip={ip}\n{message}"
    mac = hmac.new(key.encode(), message.encode(), digest)
    if form == "hex":
        sig = mac.hexdigest()
    else:
        raw = mac.digest()
        encoded = (base64.urlsafe_b64encode(raw) if form == "urlsafe"
                   else base64.b64encode(raw)).decode().rstrip("=")
        sig = f"{mac.name.replace('hmac-', '')}:{encoded}"
    query = {"temp_url_sig": sig, "temp_url_expires": str(expires), **extra}
    if prefix is not None:
        query["temp_url_prefix"] = prefix
    if ip:
        query["temp_url_ip_range"] = ip
    return f"{quote(full)}?{urlencode(query)}"


def test_get_and_head_without_token(pithos_server, me):
    url = signed(me, "GET", "tu/o")
    r = request(pithos_server, "GET", url)
    assert r.status == 200 and r.body == b"data of tu/o"
    # Swift's: attachment named as the object, and the URL's expiry.
    assert r.headers["content-disposition"] == "attachment; filename=\"o\"; filename*=UTF-8''o"
    assert "expires" in r.headers
    # Metadata stays private but for X-Object-Meta-Public-*.
    assert "x-object-meta-secret" not in r.headers
    assert r.headers["x-object-meta-public-tag"] == "t"
    assert request(pithos_server, "HEAD", url).status == 200


@pytest.mark.parametrize("digest,form", [(hashlib.sha1, "hex"), (hashlib.sha512, "hex"),
                                         (hashlib.sha256, "base64"),
                                         (hashlib.sha512, "urlsafe")])
def test_signature_forms(pithos_server, me, digest, form):
    assert request(pithos_server, "GET", signed(me, "GET", "tu/o", digest=digest,
                                                form=form)).status == 200


def test_iso8601_expiry(pithos_server, me):
    expires = int(time.time()) + 600
    url = signed(me, "GET", "tu/o", expires=expires)
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))
    url = url.replace(f"temp_url_expires={expires}", f"temp_url_expires={quote(iso)}")
    assert request(pithos_server, "GET", url).status == 200


@pytest.mark.parametrize("case", ["expired", "bad-sig", "other-object", "other-container",
                                  "wrong-method", "garbage-sig", "no-expires", "other-key"])
def test_refusals_are_one_401(pithos_server, me, case):
    url = {
        "expired": signed(me, "GET", "tu/o", expires=int(time.time()) - 1),
        "bad-sig": signed(me, "GET", "tu/o").replace("temp_url_sig=", "temp_url_sig=0"),
        "other-object": signed(me, "GET", "tu/o").replace("/tu/o?", "/tu/dir/a?"),
        "other-container": signed(me, "GET", "tu/o").replace("/tu/o?", "/tu2/o?"),
        "wrong-method": signed(me, "PUT", "tu/o"),
        "garbage-sig": f"{me.path}/tu/o?temp_url_sig=zz&temp_url_expires=9999999999",
        "no-expires": signed(me, "GET", "tu/o").split("&temp_url_expires")[0],
        "other-key": signed(me, "GET", "tu/o", key="guess"),
    }[case]
    r = request(pithos_server, "GET", url)
    assert r.status == 401
    assert r.body == b"401 Unauthorized: Temp URL invalid\n"
    assert KEY.encode() not in r.body


def test_head_allowed_by_put_signature_not_get_by_head(pithos_server, me):
    assert request(pithos_server, "HEAD", signed(me, "PUT", "tu/o")).status == 200
    url = signed(me, "HEAD", "tu/o")
    assert request(pithos_server, "HEAD", url).status == 200
    assert request(pithos_server, "GET", url).status == 401


def test_put_post_delete(pithos_server, me):
    r = request(pithos_server, "PUT", signed(me, "PUT", "tu/new"), body=b"by url",
                headers={"X-Object-Meta-Color": "red"})
    assert r.status == 201
    got = request(pithos_server, "GET", f"{me.path}/tu/new", token=me.token)
    assert got.body == b"by url" and got.headers["x-object-meta-color"] == "red"
    assert request(pithos_server, "POST", signed(me, "POST", "tu/new"),
                   headers={"X-Object-Meta-Color": "blue"}).status == 202
    assert request(pithos_server, "DELETE", signed(me, "DELETE", "tu/new")).status == 204
    assert request(pithos_server, "HEAD", f"{me.path}/tu/new", token=me.token).status == 404


@pytest.mark.parametrize("header,value", [("X-Object-Manifest", "tu2/seg"),
                                          ("X-Copy-From", "tu2/o"),
                                          ("X-Symlink-Target", "tu2/o"),
                                          ("X-Move-From", "tu2/o"),
                                          ("X-Object-Sharing", "read=test2"),
                                          ("X-Object-Public", "true")])
def test_headers_that_reach_beyond_the_url_are_refused(pithos_server, me, header, value):
    r = request(pithos_server, "PUT", signed(me, "PUT", "tu/x"), body=b"",
                headers={header: value})
    assert r.status == 400 and header.encode() in r.body
    assert request(pithos_server, "HEAD", f"{me.path}/tu2/o", token=me.token).status == 200


def test_query_beyond_the_signature_is_dropped(pithos_server, me):
    # ?multipart-manifest=put would make the body a manifest naming other objects.
    url = signed(me, "PUT", "tu/plain") + "&multipart-manifest=put"
    assert request(pithos_server, "PUT", url, body=b'[{"path": "/tu2/o"}]').status == 201
    got = request(pithos_server, "GET", f"{me.path}/tu/plain", token=me.token)
    assert got.body == b'[{"path": "/tu2/o"}]'


def test_prefix(pithos_server, me):
    url = signed(me, "GET", "tu/dir/a", prefix="dir/")
    assert request(pithos_server, "GET", url).status == 200
    other = url.replace("/tu/dir/a?", "/tu/o?")
    assert request(pithos_server, "GET", other).status == 401


def test_ip_range(pithos_server, me):
    assert request(pithos_server, "GET", signed(me, "GET", "tu/o", ip="127.0.0.0/8")
                   ).status == 200
    assert request(pithos_server, "GET", signed(me, "GET", "tu/o", ip="10.0.0.0/8")
                   ).status == 401
    # The range is signed: another one with the same signature is refused.
    url = signed(me, "GET", "tu/o", ip="10.0.0.0/8").replace("10.0.0.0", "127.0.0.0")
    assert request(pithos_server, "GET", url).status == 401


def test_filename_and_inline(pithos_server, me):
    r = request(pithos_server, "GET", signed(me, "GET", "tu/o", filename="report é.txt"))
    assert r.headers["content-disposition"] == (
        "attachment; filename=\"report %C3%A9.txt\"; filename*=UTF-8''report%20%C3%A9.txt")
    r = request(pithos_server, "GET", signed(me, "GET", "tu/o", inline=""))
    assert r.headers["content-disposition"] == "inline"


def test_container_key_stays_in_its_container(pithos_server, me):
    assert request(pithos_server, "GET", signed(me, "GET", "tuc/o", key=CKEY)).status == 200
    # The same key does not sign for another container of the account ...
    assert request(pithos_server, "GET", signed(me, "GET", "tu/o", key=CKEY)).status == 401
    # ... nor reaches one through a large object's segments (Swift's answer: 401).
    assert request(pithos_server, "GET", signed(me, "GET", "tuc/dlo", key=CKEY)).status == 401
    # The account key does.
    r = request(pithos_server, "GET", signed(me, "GET", "tuc/dlo"))
    assert r.status == 200 and r.body == b"data of tu2/seg1"


def test_keys_are_the_owners_secret(pithos_server, me):
    owner = request(pithos_server, "HEAD", f"{me.path}/tuc", token=me.token)
    assert owner.headers["x-container-meta-temp-url-key"] == CKEY
    reader = login(pithos_server, "test2:tester2", "testing2")
    r = request(pithos_server, "HEAD", f"{me.path}/tuc", token=reader.token)
    assert r.status == 204 and "x-container-meta-temp-url-key" not in r.headers


def test_container_root_is_no_temp_urls(pithos_server, me):
    # A signed empty prefix lets in the objects, not the container's own GET/HEAD (that is a
    # static web site's listing only): the 401 carries nothing of the container.
    for method in ("GET", "HEAD"):
        url = signed(me, method, "tu/o", prefix="").replace("/tu/o?", "/tu?")
        r = request(pithos_server, method, url)
        assert r.status == 401
        assert not any(k.startswith("x-container-") for k in r.headers), r.headers


def test_info_lists_tempurl(pithos_server):
    r = request(pithos_server, "GET", "/info")
    info = r.json()["tempurl"]
    assert {"sha1", "sha256", "sha512"} <= set(info["allowed_digests"])
    assert info["methods"] == ["GET", "HEAD", "PUT", "POST", "DELETE"]

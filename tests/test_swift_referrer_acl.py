"""Swift's referrer ACLs (issue 21): `X-Container-Read: .r:*` makes a container's objects
readable without a token, `.r:example.com` / `.r:.example.com` by requests whose Referer names
that host or domain, `.r:-host` takes one back, and `.rlistings` lets the same requests list.
Against a real `pithos serve`: objects, listings, large objects and symlinks read as Swift's
tempauth lets them, writes never opened, nothing learnt about what an ACL does not cover, and
the Pithos sharing model beside it."""

from __future__ import annotations

import pytest

from pithos.core.errors import InvalidArgument
from pithos.objects.acl import parse_container_acl, referrer_allowed, validate_container_acl
from tests.swift_helpers import Login, login, request

GOOD = "http://www.example.com/gallery.html"
BAD = "https://bad.example.com/"
ELSEWHERE = "http://example.org/"


# -- the rules, as Swift's acl module has them ----------------------------------------------

@pytest.mark.parametrize("raw, cleaned", [
    (".r:*", ".r:*"),
    ("bob, sue", "bob,sue"),
    ("bob,,,sue", "bob,sue"),
    (".referrer : *", ".r:*"),
    (".ref:*.example.com", ".r:.example.com"),
    (".r:*, .rlistings", ".r:*,.rlistings"),
    (".r:*,.r:-.thief.com,bobs_account,sues_account:sue",
     ".r:*,.r:-.thief.com,bobs_account,sues_account:sue"),
    (".referer:-bad.com", ".r:-bad.com"),
])
def test_read_acl_is_cleaned_as_swift_cleans_it(raw, cleaned):
    assert validate_container_acl(raw, for_read=True) == cleaned


@pytest.mark.parametrize("raw, for_read", [
    (".r:", True), (".r:-", True), (".r:*.", True),  # no host
    (".r:*", False),  # a referrer in a write ACL
    (".rr:foo", True),  # an unknown designator
])
def test_bad_acls_are_refused(raw, for_read):
    with pytest.raises(InvalidArgument):
        validate_container_acl(raw, for_read=for_read)


@pytest.mark.parametrize("referrer, acl, allowed", [
    (None, ".r:*", True),  # no Referer: the host is "unknown", which * covers
    (GOOD, ".r:*", True),
    (None, ".r:www.example.com", False),
    (GOOD, ".r:www.example.com", True),
    (GOOD, ".r:.example.com", True),
    ("http://example.com/", ".r:.example.com", False),  # the domain's hosts, not itself
    (BAD, ".r:.example.com,.r:-bad.example.com", False),
    (GOOD, ".r:.example.com,.r:-bad.example.com", True),
    (BAD, ".r:-bad.example.com,.r:.example.com", True),  # in order: the last match wins
    (ELSEWHERE, ".r:*,.r:-.example.com", True),
    (GOOD, ".r:*,.r:-.example.com", False),
    ("not a url", ".r:.example.com", False),
    ("http://[::1", ".r:*", True),  # a Referer that is no URL: the "unknown" host
    (GOOD, "test:tester", False),  # no referrer designation: nobody by referrer
])
def test_referrer_allowed(referrer, acl, allowed):
    referrers, _ = parse_container_acl(acl)
    assert referrer_allowed(referrer, referrers) is allowed


# -- against a server ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def me(pithos_server) -> Login:
    return login(pithos_server)


def _container(server, me: Login, name: str, read_acl: str | None,
               objects: dict[str, bytes] | None = None) -> str:
    path = f"{me.path}/{name}"
    headers = {"X-Container-Read": read_acl} if read_acl is not None else {}
    assert request(server, "PUT", path, token=me.token, headers=headers).status in (201, 202)
    for obj, data in (objects or {}).items():
        assert request(server, "PUT", f"{path}/{obj}", body=data, token=me.token).status == 201
    return path


def _get(server, path: str, referrer: str | None = None, token: str | None = None,
         method: str = "GET"):
    return request(server, method, path, token=token,
                   headers={"Referer": referrer} if referrer is not None else {})


def test_any_referrer_reads_objects_without_a_token_but_lists_only_with_rlistings(
        pithos_server, me):
    path = _container(pithos_server, me, "ref-any", ".r:*", {"pic.jpg": b"jpeg bytes"})
    for referrer in (None, GOOD, ELSEWHERE):
        r = _get(pithos_server, f"{path}/pic.jpg", referrer)
        assert (r.status, r.body) == (200, b"jpeg bytes"), referrer
        assert _get(pithos_server, f"{path}/pic.jpg", referrer, method="HEAD").status == 200
        # No .rlistings: the container is not listed, nor its metadata shown.
        assert _get(pithos_server, path, referrer).status == 401
        assert _get(pithos_server, path, referrer, method="HEAD").status == 401
    # A user of the account that no ACL names reads the objects, as anyone does, and is
    # refused the listing as a user is (403).
    reader = login(pithos_server, "test:reader", "reading")
    assert _get(pithos_server, f"{path}/pic.jpg", token=reader.token).status == 200
    assert _get(pithos_server, path, token=reader.token).status == 403
    # The ACL is shown back as Swift cleaned it.
    r = request(pithos_server, "HEAD", path, token=me.token)
    assert r.headers["x-container-read"] == ".r:*"

    request(pithos_server, "POST", path, token=me.token,
            headers={"X-Container-Read": ".r:*, .rlistings"})
    r = _get(pithos_server, path + "?format=json")
    assert r.status == 200 and [o["name"] for o in r.json()] == ["pic.jpg"]
    assert _get(pithos_server, path, method="HEAD").status == 204


def test_a_host_or_domain_designation_reads_by_referer_only(pithos_server, me):
    acl = ".r:*.example.com,.r:-bad.example.com,.rlistings"
    path = _container(pithos_server, me, "ref-domain", acl, {"a": b"A"})
    r = request(pithos_server, "HEAD", path, token=me.token)
    assert r.headers["x-container-read"] == ".r:.example.com,.r:-bad.example.com,.rlistings"
    r = _get(pithos_server, f"{path}/a", GOOD)
    assert (r.status, r.body) == (200, b"A")
    assert _get(pithos_server, path, GOOD).status == 200
    # Not the taken-back host, not another domain, not without a Referer.
    for referrer in (BAD, ELSEWHERE, None, "garbage"):
        assert _get(pithos_server, f"{path}/a", referrer).status == 401, referrer
        assert _get(pithos_server, path, referrer).status == 401, referrer
    # A token's own rights are untouched by a Referer it sends: test2 is refused as without.
    other = login(pithos_server, "test2:tester2", "testing2")
    assert _get(pithos_server, f"{path}/a", BAD, token=other.token).status == 403
    assert _get(pithos_server, f"{path}/a", GOOD, token=other.token).status == 200


def test_a_referrer_never_writes_and_learns_nothing_else(pithos_server, me):
    path = _container(pithos_server, me, "ref-nowrite", ".r:*,.rlistings", {"a": b"A"})
    private = _container(pithos_server, me, "ref-private", None, {"a": b"secret"})
    for method, extra, body in (("PUT", "/new", b"x"), ("POST", "/a", None),
                                ("DELETE", "/a", None), ("POST", "", None),
                                ("PUT", "", None), ("DELETE", "", None)):
        r = request(pithos_server, method, path + extra, body=body,
                    headers={"Referer": GOOD, "X-Container-Meta-X": "y",
                             "X-Object-Meta-X": "y"})
        assert r.status == 401, (method, extra)
    r = _get(pithos_server, f"{path}/a")
    assert (r.status, r.body, r.headers.get("x-object-meta-x")) == (200, b"A", None)
    assert _get(pithos_server, f"{path}/new").status == 404
    # Other containers of the account, existing or not, and the account: refused alike.
    for other in (private, private + "/a", f"{me.path}/ref-none", f"{me.path}/ref-none/a",
                  me.path):
        assert _get(pithos_server, other, GOOD).status == 401, other
    # An object's history is a writer's: not opened by a read ACL.
    assert _get(pithos_server, f"{path}/a?version=list").status == 401
    # A write ACL takes no referrer.
    r = request(pithos_server, "POST", path, token=me.token,
                headers={"X-Container-Write": ".r:*"})
    assert r.status == 400 and b"write ACL" in r.body


def test_a_large_objects_segments_and_a_links_target_are_read_with_the_referer(
        pithos_server, me):
    acl = ".r:.example.com,.rlistings"
    segs = _container(pithos_server, me, "ref-segs", None,
                      {"part/1": b"one-", "part/2": b"two"})
    man = _container(pithos_server, me, "ref-man", acl)
    assert request(pithos_server, "PUT", f"{man}/dlo", body=b"", token=me.token,
                   headers={"X-Object-Manifest": "ref-segs/part/"}).status == 201
    assert request(pithos_server, "PUT", f"{man}/link", body=b"", token=me.token,
                   headers={"X-Symlink-Target": "ref-segs/part/1"}).status == 201
    # The segments' container lets no referrer in yet: the manifest is no way around it.
    assert _get(pithos_server, f"{man}/dlo", GOOD).status in (401, 403)
    assert _get(pithos_server, f"{man}/link", GOOD).status in (401, 403)
    request(pithos_server, "POST", segs, token=me.token, headers={"X-Container-Read": acl})
    r = _get(pithos_server, f"{man}/dlo", GOOD)
    assert (r.status, r.body) == (200, b"one-two")
    r = _get(pithos_server, f"{man}/link", GOOD)
    assert (r.status, r.body) == (200, b"one-")
    # A range the link's own empty body fails is asked of the link again, with the Referer.
    r = request(pithos_server, "GET", f"{man}/link",
                headers={"Referer": GOOD, "Range": "bytes=1-2"})
    assert (r.status, r.body) == (206, b"ne")
    assert _get(pithos_server, f"{man}/dlo", ELSEWHERE).status == 401
    assert _get(pithos_server, f"{man}/link").status == 401


def test_pithos_sharing_works_beside_a_referrer_acl(pithos_server, me):
    path = _container(pithos_server, me, "ref-shared", ".r:www.example.com", {"doc": b"D"})
    assert request(pithos_server, "POST", f"{path}/doc", token=me.token,
                   headers={"X-Object-Sharing": "read=test2"}).status == 202
    other = login(pithos_server, "test2:tester2", "testing2")
    r = _get(pithos_server, f"{path}/doc", token=other.token)
    assert (r.status, r.body) == (200, b"D")
    assert _get(pithos_server, f"{path}/doc").status == 401
    assert _get(pithos_server, f"{path}/doc", GOOD).status == 200
    # The sharee's listing is its own view, the referrer's none (no .rlistings).
    r = _get(pithos_server, path + "?format=json", token=other.token)
    assert [o["name"] for o in r.json()] == ["doc"]
    assert _get(pithos_server, path, GOOD).status == 401

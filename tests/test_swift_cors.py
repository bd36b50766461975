"""CORS on the Swift API (pithos/api/cors.py) against a live `pithos serve`, raw HTTP:
preflights and the headers of actual requests, decided by the container's
X-Container-Meta-Access-Control-* as a Swift proxy in strict CORS mode decides."""

from __future__ import annotations

import pytest

from tests.swift_helpers import Login, login, request


@pytest.fixture(scope="module")
def me(pithos_server) -> Login:
    me = login(pithos_server)
    for name, headers in (
            ("any", {"X-Container-Meta-Access-Control-Allow-Origin": "*",
                     "X-Container-Meta-Access-Control-Max-Age": "600"}),
            ("some", {"X-Container-Meta-Access-Control-Allow-Origin":
                      "http://a.test http://b.test",
                      "X-Container-Meta-Access-Control-Expose-Headers": "X-Custom"}),
            ("none", {})):
        assert request(pithos_server, "PUT", f"{me.path}/{name}", token=me.token,
                       headers=headers).status in (201, 202)
        assert request(pithos_server, "PUT", f"{me.path}/{name}/o", body=b"o", token=me.token,
                       headers={"X-Object-Meta-Color": "red"}).status == 201
    return me


def preflight(server, path: str, origin: str | None, method: str | None = "GET", **extra):
    headers = dict(extra)
    if origin:
        headers["Origin"] = origin
    if method:
        headers["Access-Control-Request-Method"] = method
    return request(server, "OPTIONS", path, headers=headers)


def test_preflight_allowed(pithos_server, me):
    r = preflight(pithos_server, f"{me.path}/any/o", "http://m.test",
                  **{"Access-Control-Request-Headers": "X-Auth-Token, Content-Type"})
    assert r.status == 200
    assert r.headers["access-control-allow-origin"] == "*"
    assert "PUT" in r.headers["access-control-allow-methods"].split(", ")
    assert r.headers["access-control-max-age"] == "600"
    assert r.headers["access-control-allow-headers"] == "X-Auth-Token, Content-Type"
    # A preflight only: nothing of the object is exposed yet.
    assert "access-control-expose-headers" not in r.headers
    r = preflight(pithos_server, f"{me.path}/some/o", "http://b.test")
    assert r.status == 200 and r.headers["access-control-allow-origin"] == "http://b.test"
    assert r.headers["vary"] == "Origin"


@pytest.mark.parametrize("container,origin,method", [("any", "http://m.test", None),
                                                     ("some", "http://c.test", "GET"),
                                                     ("none", "http://m.test", "GET"),
                                                     ("any", "http://m.test", "PATCH")])
def test_preflight_refused(pithos_server, me, container, origin, method):
    r = preflight(pithos_server, f"{me.path}/{container}/o", origin, method)
    assert r.status == 401 and "access-control-allow-origin" not in r.headers


def test_options_without_origin(pithos_server, me):
    r = preflight(pithos_server, f"{me.path}/none/o", None, None)
    assert r.status == 200 and "GET" in r.headers["allow"]
    r = preflight(pithos_server, me.path, "http://m.test")
    assert r.status == 200 and "access-control-allow-origin" not in r.headers


def test_actual_request_headers(pithos_server, me):
    r = request(pithos_server, "GET", f"{me.path}/any/o", token=me.token,
                headers={"Origin": "http://m.test"})
    assert r.status == 200 and r.headers["access-control-allow-origin"] == "*"
    exposed = r.headers["access-control-expose-headers"].split(", ")
    assert "x-object-meta-color" in exposed and "etag" in exposed
    r = request(pithos_server, "GET", f"{me.path}/some/o", token=me.token,
                headers={"Origin": "http://a.test"})
    assert r.headers["access-control-allow-origin"] == "http://a.test"
    assert "x-custom" in r.headers["access-control-expose-headers"].split(", ")
    # Strict mode: an origin the container does not name gets nothing.
    r = request(pithos_server, "GET", f"{me.path}/some/o", token=me.token,
                headers={"Origin": "http://c.test"})
    assert r.status == 200 and "access-control-allow-origin" not in r.headers
    # Errors carry them too (a browser must be able to read why).
    r = request(pithos_server, "GET", f"{me.path}/any/missing", token=me.token,
                headers={"Origin": "http://m.test"})
    assert r.status == 404 and r.headers["access-control-allow-origin"] == "*"

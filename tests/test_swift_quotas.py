"""Swift's quota headers (pithos/api/quotas.py, pithos/objects/quotas.py) against a live
`pithos serve`, raw HTTP: container byte and count quotas with Swift's rule, their Pithos
quota, and account quotas refused to the account's own admin."""

from __future__ import annotations

import pytest

from tests.swift_helpers import Login, login, request

MARKER = str(2**63 - 1)


@pytest.fixture(scope="module")
def me(pithos_server) -> Login:
    return login(pithos_server)


def make(server, me: Login, name: str, **headers: str) -> str:
    path = f"{me.path}/{name}"
    assert request(server, "PUT", path, token=me.token, headers=headers).status in (201, 202)
    return path


def put(server, me: Login, path: str, body: bytes) -> int:
    return request(server, "PUT", path, body=body, token=me.token).status


def test_bytes_quota_is_swifts_rule_and_the_pithos_quota(pithos_server, me):
    c = make(pithos_server, me, "qb")
    assert request(pithos_server, "POST", c, token=me.token,
                   headers={"X-Container-Meta-Quota-Bytes": "10"}).status == 204
    head = request(pithos_server, "HEAD", c, token=me.token).headers
    assert head["x-container-meta-quota-bytes"] == "10"
    assert head["x-container-policy-quota"] == "10"
    r = request(pithos_server, "PUT", f"{c}/big", body=b"x" * 11, token=me.token)
    assert r.status == 413 and r.body == b"Upload exceeds quota."
    assert put(pithos_server, me, f"{c}/ten", b"x" * 10) == 201
    # Swift's rule: the container's bytes plus the upload, even over an object it replaces.
    assert put(pithos_server, me, f"{c}/ten", b"y") == 413
    # Removed: the Pithos quota goes with it.
    assert request(pithos_server, "POST", c, token=me.token,
                   headers={"X-Remove-Container-Meta-Quota-Bytes": "x"}).status == 204
    head = request(pithos_server, "HEAD", c, token=me.token).headers
    assert "x-container-meta-quota-bytes" not in head
    assert head["x-container-policy-quota"] == "0"
    assert put(pithos_server, me, f"{c}/more", b"z" * 100) == 201


def test_count_quota(pithos_server, me):
    c = make(pithos_server, me, "qc", **{"X-Container-Meta-Quota-Count": "1"})
    head = request(pithos_server, "HEAD", c, token=me.token).headers
    assert head["x-container-meta-quota-count"] == "1"
    assert head["x-container-policy-quota"] == MARKER  # a quota, with no byte limit
    assert put(pithos_server, me, f"{c}/a", b"a") == 201
    assert put(pithos_server, me, f"{c}/b", b"b") == 413
    # A byte quota beside it keeps the count quota.
    assert request(pithos_server, "POST", c, token=me.token,
                   headers={"X-Container-Meta-Quota-Bytes": "1000"}).status == 204
    assert put(pithos_server, me, f"{c}/b", b"b") == 413
    assert request(pithos_server, "POST", c, token=me.token,
                   headers={"X-Container-Meta-Quota-Count": ""}).status == 204
    assert put(pithos_server, me, f"{c}/b", b"b") == 201
    assert request(pithos_server, "HEAD", c, token=me.token
                   ).headers["x-container-policy-quota"] == "1000"


def test_zero_bytes_quota_takes_nothing(pithos_server, me):
    c = make(pithos_server, me, "q0", **{"X-Container-Meta-Quota-Bytes": "0"})
    assert put(pithos_server, me, f"{c}/one", b"1") == 413
    assert put(pithos_server, me, f"{c}/empty", b"") == 201


@pytest.mark.parametrize("header,message", [("X-Container-Meta-Quota-Bytes", b"bytes"),
                                            ("X-Container-Meta-Quota-Count", b"count")])
def test_bad_quota_is_400(pithos_server, me, header, message):
    r = request(pithos_server, "PUT", f"{me.path}/qbad", token=me.token,
                headers={header: "ten"})
    assert r.status == 400 and r.body == b"Invalid " + message + b" quota."


def test_pithos_quota_keeps_its_own_rule(pithos_server, me):
    # X-Container-Policy-Quota counts what an upload adds (a replacement adds its growth).
    c = make(pithos_server, me, "qp", **{"X-Container-Policy-Quota": "10"})
    assert put(pithos_server, me, f"{c}/o", b"x" * 10) == 201
    assert put(pithos_server, me, f"{c}/o", b"y" * 10) == 201
    assert put(pithos_server, me, f"{c}/p", b"z") == 413


@pytest.mark.parametrize("header", ["X-Account-Meta-Quota-Bytes", "X-Account-Quota-Bytes",
                                    "X-Account-Quota-Count", "X-Remove-Account-Quota-Bytes",
                                    "X-Account-Quota-Bytes-Policy-default"])
def test_account_quota_is_not_the_accounts_to_set(pithos_server, me, header):
    r = request(pithos_server, "POST", me.path, token=me.token, headers={header: "0"})
    assert r.status == 403
    head = request(pithos_server, "HEAD", me.path, token=me.token).headers
    assert "x-account-meta-quota-bytes" not in head


def test_info_lists_quotas(pithos_server):
    info = request(pithos_server, "GET", "/info").json()
    assert "container_quotas" in info and "account_quotas" in info


def test_a_quota_of_a_digit_that_is_not_ascii_is_refused(pithos_server, me):
    """A header's byte 0xB2 is "\u00b2" to WSGI, which str.isdigit() takes and int() does
    not: refused (400), never stored to fail every later upload into the container."""
    c = make(pithos_server, me, "qsup")
    for name in ("X-Container-Meta-Quota-Bytes", "X-Container-Meta-Quota-Count"):
        r = request(pithos_server, "POST", c, token=me.token, headers={name: "\u00b2"})
        assert r.status == 400, (name, r.status, r.body[:200])
    assert put(pithos_server, me, f"{c}/o", b"x") == 201

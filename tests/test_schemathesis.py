"""Schemathesis drives a live `pithos serve` from its OpenAPI description (issue 26): valid and
invalid requests for every described operation, each sent by every kind of caller (an
account's admin, a non-admin user of that account, another account's admin, no token).

Every response must: not be a 5xx; be a status, content type and (where described) body the
description allows; be framed right (the Content-Length it announces is the body it sends,
no body on 204 and 304, no stray bytes left on the keep-alive connection for the next
answer); carry its reason in the body when it is a 4xx.  After a refused write (a 4xx to PUT,
POST or DELETE), the account, container and object it named read back exactly as before:
nothing half-written.

Bounded: a fixed number of examples per operation, derandomized (the same requests on every
run), each request with a timeout; the module takes about a minute on two cores."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from pithos.api.openapi import document

T = 20
# Who sends each example: (user, key), or None for no token.
CALLERS: dict[str, tuple[str, str] | None] = {
    "owner": ("test:tester", "testing"),   # admin of account test
    "user": ("test:reader", "reading"),    # not admin of test; named by container acl's ACLs
    "other": ("test2:tester2", "testing2"),  # admin of account test2
    "anon": None,
}
ADMINS = {"test": ("test:tester", "testing"), "test2": ("test2:tester2", "testing2")}
# What each account holds when an operation's examples start (re-made before each one).
CONTAINERS = {"c": {}, "pub": {"X-Container-Read": ".r:*"},
              "acl": {"X-Container-Read": "test:reader", "X-Container-Write": "test:reader"}}
OBJECTS = {"o": b"hello", "d/": b"", "d/x": b"under d/", "big": b"x" * 70_000}
WRITES = {"PUT", "POST", "DELETE"}


PUBLIC_LINK = "PUBLIC-LINK"  # stands for the token of the published pub/o


def narrowed(doc: dict) -> dict:
    """The served description with its path parameters (and the login's credentials) held to
    names that exist: the two accounts, the seeded containers, objects and public link, the
    users.  Valid examples then reach past the 403s and 404s; invalid ones (schemathesis'
    negative mode) are any other string, hostile names included."""
    doc = copy.deepcopy(doc)
    params = doc["components"]["parameters"]
    params["account"]["schema"] = {"enum": ["AUTH_test", "AUTH_test2", "test"]}
    params["container"]["schema"] = {"enum": list(CONTAINERS)}
    params["object"]["schema"] = {"enum": list(OBJECTS)}
    for item in (doc["paths"]["/auth/v1.0"], doc["paths"]["/auth/v1"]):
        for method in ("get", "head"):
            for p in item[method]["parameters"]:
                p["schema"] = {"enum": {"X-Auth-User": ["test:tester", "test:reader"],
                                        "X-Auth-Key": ["testing", "reading"]}[p["name"]]}
    doc["paths"]["/public/{token}"]["parameters"][0]["schema"] = {"enum": [PUBLIC_LINK]}
    # The compute API is served with `pithos serve --compute` only (and a server it creates
    # boots a VM): tests/test_schemathesis_compute.py generates its requests, against a
    # server with room for two idle guests.
    for path in [p for p in doc["paths"] if p == "/compute" or p.startswith("/compute/")]:
        del doc["paths"][path]
    return doc


@dataclass
class Live:
    url: str
    tokens: dict[str, str]  # caller -> token
    admin_tokens: dict[str, str]  # account -> its admin's token
    sessions: dict[str, requests.Session] = field(default_factory=dict)
    public_tokens: list[str] = field(default_factory=list)


def login(url: str, user: str, key: str) -> str:
    r = requests.get(f"{url}/auth/v1.0", headers={"X-Auth-User": user, "X-Auth-Key": key},
                     timeout=T)
    assert r.status_code == 200, r.text
    return r.headers["X-Auth-Token"]


def seed(live: Live) -> None:
    """Make (again) the containers and objects the examples aim at, in both accounts; publish
    pub/o and share test2's c/o with test."""
    live.public_tokens.clear()
    for account, token in live.admin_tokens.items():
        base, h = f"{live.url}/v1/AUTH_{account}", {"X-Auth-Token": token}
        for c, headers in CONTAINERS.items():
            r = requests.put(f"{base}/{c}", headers={**h, **headers}, timeout=T)
            assert r.status_code in (201, 202), r.text
            for name, body in OBJECTS.items():
                r = requests.put(f"{base}/{c}/{name}", data=body, headers=h, timeout=T)
                assert r.status_code == 201, r.text
        r = requests.post(f"{base}/pub/o", headers={**h, "X-Object-Public": "true"}, timeout=T)
        assert r.status_code == 202, r.text
        live.public_tokens.append(r.headers["X-Object-Public"].rsplit("/", 1)[1])
    r = requests.post(f"{live.url}/v1/AUTH_test2/c/o", timeout=T,
                      headers={"X-Auth-Token": live.admin_tokens["test2"],
                               "X-Object-Sharing": "read=test"})
    assert r.status_code == 202, r.text


@pytest.fixture(scope="module")
def live(pithos_server):
    url = pithos_server.url
    tokens = {who: login(url, *spec) for who, spec in CALLERS.items() if spec}
    admin_tokens = {acct: login(url, *spec) for acct, spec in ADMINS.items()}
    found = Live(url, tokens, admin_tokens)
    # One keep-alive session per caller: a response that sends more (or fewer) bytes than it
    # announces would garble the next answer on the same connection.
    found.sessions = {who: requests.Session() for who in CALLERS}
    seed(found)
    yield found
    for s in found.sessions.values():
        s.close()


# The description as the package ships it (what GET /openapi.json serves; test_openapi.py
# checks they are the same): schemathesis needs the schema before the server is up.
SCHEMA = schemathesis.openapi.from_dict(narrowed(json.loads(document())))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


# -- what a response must be --------------------------------------------------------------------

def framing_errors(response, method: str) -> list[str]:
    errors = []
    headers = {k.lower(): v for k, v in response.headers.items()}
    length = headers.get("content-length")
    chunked = "chunked" in ",".join(headers.get("transfer-encoding", [])).lower()
    if length and chunked:
        errors.append("both Content-Length and chunked")
    if response.status_code in (204, 304) or method == "HEAD":
        if response.content:
            errors.append(f"a body on {response.status_code} / {method}")
    elif length is not None:
        if len(length) != 1 or int(length[0]) != len(response.content):
            errors.append(f"Content-Length {length} but a body of {len(response.content)}")
    elif not chunked:
        errors.append("neither Content-Length nor chunked")
    if getattr(response, "stream_cut_short", False):
        errors.append("the body was cut short")
    return errors


def reason_errors(response, method: str) -> list[str]:
    if not 400 <= response.status_code < 500:
        return []
    if method == "HEAD":
        # No body on HEAD: the status line's reason phrase is all there is.
        return [] if response.message.strip() else ["a 4xx to HEAD without a reason phrase"]
    return [] if response.content.strip() else [f"a {response.status_code} without a reason"]


def snapshot(live: Live, url: str) -> dict[str, object] | None:
    """What the account, container and object of a /v1 URL hold, as their admin reads them
    (None: not an account the test has an admin of)."""
    path = urlsplit(url).path
    parts = path.split("/", 4)  # "", "v1", account, container, object
    if len(parts) < 3 or parts[1] != "v1":
        return None
    account = parts[2].removeprefix("AUTH_")
    if account not in live.admin_tokens:
        return None
    h = {"X-Auth-Token": live.admin_tokens[account]}
    state: dict[str, object] = {}
    keep = re.compile(r"x-(account|container|object)-(?!.*timestamp)|etag|content-(length|type)"
                      r"|x-delete-at|x-static-large-object", re.I)
    levels = ["/".join(parts[:n]) for n in range(3, len(parts) + 1)]
    for level in levels:
        r = requests.head(live.url + level, headers=h, timeout=T)
        state[level] = (r.status_code, sorted((k.lower(), v) for k, v in r.headers.items()
                                              if keep.match(k)))
    if len(parts) == 4:  # a container: its listing too
        r = requests.get(live.url + path, headers=h, params={"format": "json"}, timeout=T)
        state[path + "?listing"] = (r.status_code, r.content)
    return state


@SCHEMA.parametrize()
@settings(max_examples=15, deadline=None, derandomize=True, database=None,
          phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
def test_the_api_holds_against_generated_requests(case, live):
    method = case.method.upper()
    if (case.path_parameters or {}).get("token") == PUBLIC_LINK:
        case.path_parameters["token"] = live.public_tokens[0]
    for who in CALLERS:
        headers = {k: v for k, v in (case.headers or {}).items()
                   if k.lower() not in ("x-auth-token", "x-storage-token")}
        case.headers = headers
        sent = {"X-Auth-Token": live.tokens[who]} if who in live.tokens else {}
        url = case.as_transport_kwargs(base_url=live.url)["url"]
        before = snapshot(live, url) if method in WRITES else None
        response = case.call(base_url=live.url, session=live.sessions[who], headers=sent,
                             timeout=T)
        case.validate_response(response, checks=CHECKS)
        problems = framing_errors(response, method) + reason_errors(response, method)
        assert not problems, (who, case.as_curl_command(sent), problems)
        if before is not None and 400 <= response.status_code < 500:
            after = snapshot(live, url)
            assert after == before, (who, case.as_curl_command(sent), response.status_code,
                                     response.content[:200], "half-written")


def test_the_server_logged_no_traceback_nor_lost_a_worker(pithos_server, live):
    """After every example above (this module's server is theirs): an error that never reached
    a response (a failure inside a streamed body, a worker killed for a timeout) shows here."""
    with open(pithos_server.log.name, "rb") as f:
        log = f.read().decode("utf-8", "replace")
    for sign in ("Traceback", "WORKER TIMEOUT", "Worker exited"):
        assert sign not in log, log[log.find(sign) - 2000:log.find(sign) + 2000]
    assert requests.get(f"{live.url}/info", timeout=T).status_code == 200

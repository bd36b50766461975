"""Schemathesis drives the compute API (`pithos serve --compute`, /compute/v2.1) from its
OpenAPI description, as tests/test_schemathesis.py drives the storage API: valid and invalid
requests for every compute operation, each sent by every kind of caller (the owner of the
servers, another project's admin, no token).

The only agent offers 512 MiB of RAM: room for the two seeded servers of the smallest flavor
(their disk, an image of zeros, boots into the firmware's "no bootable device", which idles),
so a generated create past them is refused (409, no valid host) and at most two qemu run.  The
examples aim at real objects: a server of each project, a key pair, an image of each, the
flavors.

Every response must: not be a 5xx; be a status, content type and body the description allows;
be framed right; carry its reason when it is a 4xx.  A refused write leaves the owner's
servers and key pairs as they were.  Afterwards the server log holds no traceback."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, settings

from pithos.api.openapi import document
from tests.compute_helpers import Cloud
from tests.test_schemathesis import CHECKS, framing_errors, reason_errors

T = 30
CALLERS = ("owner", "other", "anon")
# Stand-ins in the narrowed description, replaced by the live ids before each request.
OWN_SERVER, OTHER_SERVER, NO_SERVER = "SERVER-OWN", "SERVER-OTHER", "SERVER-NONE"
OWN_IMAGE, OTHER_IMAGE = "IMAGE-OWN", "IMAGE-OTHER"
WRITES = {"POST", "PUT", "DELETE"}


def narrowed(doc: dict[str, Any]) -> dict[str, Any]:
    """The compute part of the served description, its ids held to what exists."""
    doc = copy.deepcopy(doc)
    doc["paths"] = {p: item for p, item in doc["paths"].items()
                    if p == "/compute" or p.startswith("/compute/")}
    for path, item in doc["paths"].items():
        for p in item.get("parameters", []):
            enum = {"server_id": [OWN_SERVER, OTHER_SERVER, NO_SERVER],
                    "flavor_id": ["1", "2", "99"], "name": ["k-own", "k-none"]}.get(p["name"])
            if enum and path != "/compute/internal/agents/{name}":
                p["schema"] = {"enum": enum}
    server = doc["components"]["schemas"]["ServerCreate"]["properties"]["server"]
    fields = server["properties"]
    fields["name"] = {"type": "string", "minLength": 1, "maxLength": 40}
    fields["imageRef"] = {"enum": [OWN_IMAGE, OTHER_IMAGE, "nope"]}
    fields["flavorRef"] = {"enum": ["1", "2", "99"]}
    fields["key_name"] = {"enum": ["k-own", "k-none"]}
    fields["min_count"] = fields["max_count"] = {"type": "integer", "minimum": 1, "maximum": 3}
    # Only the image as the root disk is supported (compute/api.py refuses the rest, which
    # the unnarrowed examples would always be).
    fields["block_device_mapping_v2"] = {"type": "array", "maxItems": 0}
    return doc


@dataclass
class Live:
    cloud: Cloud
    tokens: dict[str, str]
    ids: dict[str, str] = field(default_factory=dict)
    sessions: dict[str, requests.Session] = field(default_factory=dict)


def _image(cloud: Cloud, token: str, name: str) -> str:
    r = requests.post(f"{cloud.url}/image/v2/images", headers=cloud.h(token), timeout=T,
                      json={"name": name, "disk_format": "raw", "container_format": "bare"})
    assert r.status_code == 201, r.text
    image_id = str(r.json()["id"])
    r = requests.put(f"{cloud.url}/image/v2/images/{image_id}/file", data=b"\0" * 65536,
                     headers={**cloud.h(token), "Content-Type": "application/octet-stream"},
                     timeout=T)
    assert r.status_code == 204, r.text
    return image_id


def _server(cloud: Cloud, token: str, image: str) -> str:
    r = cloud.create("seeded", image, token=token)
    assert r.status_code == 202, r.text
    return str(r.json()["server"]["id"])


def state(live: Live) -> object:
    """The owner's servers (id, status) and key pairs: what a refused write must not change.
    A server's status may move on by itself (BUILD to ERROR), so only ids and names count."""
    h = live.cloud.h(live.tokens["owner"])
    servers = requests.get(f"{live.cloud.nova}/servers", headers=h, timeout=T).json()
    keys = requests.get(f"{live.cloud.nova}/os-keypairs", headers=h, timeout=T).json()
    return (sorted((s["id"], s["name"]) for s in servers["servers"]),
            sorted(k["keypair"]["name"] for k in keys["keypairs"]))


@pytest.fixture(scope="module")
def live():
    cloud = Cloud(agent_args="--ram-mib 512")
    try:
        tokens = {"owner": cloud.token,
                  "other": cloud.add_user("other", "admin", "other-key")}
        found = Live(cloud, tokens)
        found.ids[OWN_IMAGE] = _image(cloud, tokens["owner"], "own")
        found.ids[OTHER_IMAGE] = _image(cloud, tokens["other"], "other")
        found.ids[OWN_SERVER] = _server(cloud, tokens["owner"], found.ids[OWN_IMAGE])
        found.ids[OTHER_SERVER] = _server(cloud, tokens["other"], found.ids[OTHER_IMAGE])
        found.ids[NO_SERVER] = "00000000-0000-4000-8000-000000000000"
        r = requests.post(f"{cloud.nova}/os-keypairs", headers=cloud.h(), timeout=T,
                          json={"keypair": {"name": "k-own", "public_key":
                                            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAt"
                                            "hJ7XKl8x5h3wN0Zr2b6y8a9q6c3m4Vv1mH0o5Q2cS test"}})
        assert r.status_code in (200, 201), r.text
        found.sessions = {who: requests.Session() for who in CALLERS}
        yield found
        for s in found.sessions.values():
            s.close()
    finally:
        cloud.close()


SCHEMA = schemathesis.openapi.from_dict(narrowed(json.loads(document())))


def _live_ids(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, str):
        return ids.get(value, value)
    if isinstance(value, dict):
        return {k: _live_ids(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [_live_ids(v, ids) for v in value]
    return value


@SCHEMA.parametrize()
@settings(max_examples=12, deadline=None, derandomize=True, database=None,
          phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
def test_the_compute_api_holds_against_generated_requests(case, live):
    method = case.method.upper()
    if case.path_parameters:
        case.path_parameters = _live_ids(case.path_parameters, live.ids)
    if isinstance(case.body, dict):
        case.body = _live_ids(case.body, live.ids)
    base = live.cloud.url
    for who in CALLERS:
        case.headers = {k: v for k, v in (case.headers or {}).items()
                        if k.lower() != "x-auth-token"}
        sent = {"X-Auth-Token": live.tokens[who]} if who in live.tokens else {}
        before = state(live) if method in WRITES else None
        response = case.call(base_url=base, session=live.sessions[who], headers=sent,
                             timeout=T)
        case.validate_response(response, checks=CHECKS)
        problems = framing_errors(response, method) + reason_errors(response, method)
        assert not problems, (who, case.as_curl_command(sent), problems)
        if before is not None and 400 <= response.status_code < 500:
            assert state(live) == before, (who, case.as_curl_command(sent),
                                           response.status_code, response.content[:200],
                                           "half-written")


def test_the_compute_server_logged_no_traceback(live):
    log = live.cloud.server.log()
    for sign in ("Traceback", "WORKER TIMEOUT", "Worker exited"):
        assert sign not in log, log[log.find(sign) - 2000:log.find(sign) + 2000]
    r = requests.get(f"{live.cloud.nova}/servers", headers=live.cloud.h(), timeout=T)
    assert r.status_code == 200

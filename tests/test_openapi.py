"""The OpenAPI 3.1 description of the HTTP API (pithos/api/openapi.json) stays true: it is
valid OpenAPI 3.1, it describes every route and method the falcon app answers and nothing
else, it names every query parameter and request header the API's code reads, and the server
serves it, without a token, as shipped in the package."""

from __future__ import annotations

import json
import re
from pathlib import Path

import falcon.inspect
import requests
from openapi_spec_validator import OpenAPIV31SpecValidator

from pithos.api.openapi import document

API_DIR = Path(__file__).resolve().parent.parent / "pithos" / "api"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# The sink's levels, as SwiftSink dispatches on the number of path segments after /v1.
V1, V1_ACCOUNT = "/v1", "/v1/{account}"
V1_CONTAINER, V1_OBJECT = "/v1/{account}/{container}", "/v1/{account}/{container}/{object}"


def spec() -> dict:
    return json.loads(document())


def described(doc: dict) -> set[tuple[str, str]]:
    """(path, METHOD) of every operation; COPY, which OpenAPI 3.1 has no field for, is under
    the path item's x-additional-operations (the shape OpenAPI 3.2 gives it)."""
    found = set()
    for path, item in doc["paths"].items():
        found |= {(path, m.upper()) for m in METHODS if m in item}
        found |= {(path, m.upper()) for m in item.get("x-additional-operations", {})}
    return found


def app(data: Path):
    """The app `pithos serve --compute` runs (the compute routes mounted too), on real
    services over an empty data directory."""
    from pithos.api.app import create_app
    from pithos.catalog import local_url
    from pithos.cli.serve import build_services, mount_compute
    from pithos.config import Storage

    storage = Storage(str(data), "file://" + str(data / "blocks"), local_url(str(data)))
    services = build_services(storage)
    the_app = create_app(services)
    mount_compute(the_app, services, storage, key="not-used-here")
    return the_app


def sink_routes(sink: object) -> set[tuple[str, str]]:
    """What the /v1 sink answers: GET /v1 (the accounts sharing with the caller), then the
    handlers it dispatches to by name: account_<method> and container_<method> of SwiftSink,
    on_<method> of its ObjectHandlers."""
    found = {(V1, "GET")}
    for owner, pattern, route in ((sink, r"account_([a-z]+)", V1_ACCOUNT),
                                  (sink, r"container_([a-z]+)", V1_CONTAINER),
                                  (sink.objects, r"on_([a-z]+)", V1_OBJECT)):  # type: ignore[attr-defined]
        for name in dir(owner):
            m = re.fullmatch(pattern, name)
            if m and callable(getattr(owner, name)):
                found.add((route, m.group(1).upper()))
    return found


def served(data: Path) -> set[tuple[str, str]]:
    """(route, METHOD) of every responder the app's resources define (not falcon's own
    defaults: OPTIONS and 405 for the rest), and of the /v1 sink's handlers."""
    from pithos.api.swift import SwiftSink

    the_app = app(data)
    info = falcon.inspect.inspect_app(the_app)
    found = {(r.path, m.method) for r in info.routes for m in r.methods if not m.internal}
    sinks = [s for _, s, _ in the_app._sinks]
    assert [s.prefix for s in info.sinks] == [V1] and isinstance(sinks[0], SwiftSink), \
        "a new sink: teach sink_routes() its routes, and describe them"
    return found | sink_routes(sinks[0])


def test_the_description_is_valid_openapi_3_1():
    doc = spec()
    assert doc["openapi"].startswith("3.1.")
    errors = [str(e.message) for e in OpenAPIV31SpecValidator(doc).iter_errors()]
    assert not errors, errors
    ids = [op["operationId"] for path, item in doc["paths"].items()
           for m, op in [*((m, item[m]) for m in METHODS if m in item),
                         *item.get("x-additional-operations", {}).items()]]
    assert len(ids) == len(set(ids)), "operationIds are unique"


def test_every_route_and_method_the_app_serves_is_described_and_nothing_else(tmp_path):
    app_routes, doc_routes = served(tmp_path / "data"), described(spec())
    assert not app_routes - doc_routes, \
        f"served but not described in pithos/api/openapi.json: {sorted(app_routes - doc_routes)}"
    assert not doc_routes - app_routes, \
        f"described but not served: {sorted(doc_routes - app_routes)}"


def test_every_error_status_has_a_reason_and_every_operation_its_errors():
    doc = spec()
    for path, item in doc["paths"].items():
        for m in METHODS:
            if m not in item:
                continue
            codes = set(item[m]["responses"])
            # (A redirect is the success of `/`: a browser is sent to the web UI.)
            assert any(c.startswith(("2", "3")) for c in codes), (path, m)
            if path.startswith("/v1/"):
                # Every /v1 operation can meet a bad name, no right, or nothing there.
                assert {"400", "401", "403", "404"} <= codes, (path, m, codes)


def _read_in_code(pattern: str) -> set[str]:
    found: set[str] = set()
    for source in API_DIR.glob("*.py"):
        found |= set(re.findall(pattern, source.read_text()))
    return found


def test_every_query_parameter_and_header_the_api_reads_is_described():
    doc = spec()
    text = json.dumps(doc).lower()
    params = set()
    for item in doc["paths"].values():
        ops = [item[m] for m in METHODS if m in item]
        ops += list(item.get("x-additional-operations", {}).values())
        for p in [*item.get("parameters", []), *(p for o in ops for p in o.get("parameters", []))]:
            if "$ref" in p:
                p = doc["components"]["parameters"][p["$ref"].rsplit("/", 1)[1]]
            params.add((p["in"], p["name"].lower()))
    queries = (_read_in_code(r'get_param\("([^"]+)"\)')
               | _read_in_code(r'"([a-z-]+)" in req\.params'))
    assert queries, "the pattern still finds the API's query parameters"
    missing = sorted(name for name in queries if ("query", name.lower()) not in params)
    assert not missing, f"query parameters read but not described: {missing}"
    headers = _read_in_code(r'get_header\("([^"]+)"\)')
    assert "X-Object-Sharing" in headers
    # A header is a parameter, or (an alias such as X-Storage-Token, a framing header) named in
    # a description.
    missing = sorted(name for name in headers if ("header", name.lower()) not in params
                     and name.lower() not in text)
    assert not missing, f"request headers read but not described: {missing}"


def test_the_server_serves_the_description_without_a_token(pithos_server):
    r = requests.get(f"{pithos_server.url}/openapi.json", timeout=30)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.content == document() and r.json()["openapi"].startswith("3.1.")
    head = requests.head(f"{pithos_server.url}/openapi.json", timeout=30)
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["Content-Length"]) == len(r.content)
    # A bad token does not matter here, as for /info.
    bad = requests.get(f"{pithos_server.url}/openapi.json", timeout=30,
                       headers={"X-Auth-Token": "nobody-issued-this"})
    assert bad.status_code == 200

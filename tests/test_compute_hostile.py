"""Outside review findings on the OpenStack APIs (session 26), against a live `pithos serve
--compute` whose servers go to ERROR at once (no VM runs: tests/test_projects_compute.py's
cheap image): the account's server quota under concurrent creates, and JSON that is no text
or no number refused with 400 rather than stored to fail later answers (or failing its own)."""

from __future__ import annotations

import concurrent.futures
import time

import pytest
import requests

from tests.conftest import ROOMY_COMPUTE, PithosServer
from tests.test_projects_compute import NOVA, T, failing_image, login


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    env = {**ROOMY_COMPUTE, "PITHOS_COMPUTE_QUOTA": "instances=3,cores=1000,ram_mib=1000000"}
    srv = PithosServer(tmp_path_factory.mktemp("compute-hostile"), serve_args=("--compute",),
                       env=env)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def headers(server):
    return {"X-Auth-Token": login(server, "test:tester", "testing")}


@pytest.fixture(scope="module")
def image(server, headers):
    """The cheap image, once the local agent has reported in (another account's first server
    waits for it: this account's quota stays whole)."""
    other = {"X-Auth-Token": login(server, "test2:tester2", "testing2")}
    warm = failing_image(server, other)
    deadline = time.monotonic() + 120
    while create(server, other, warm, 0).status_code == 409 and time.monotonic() < deadline:
        time.sleep(0.5)  # ("No valid host": no agent up yet)
    return failing_image(server, headers)


def create(server, headers, image, i: int, **extra) -> requests.Response:
    return requests.post(f"{server.url}{NOVA}/servers", headers=headers, timeout=60,
                         json={"server": {"name": f"s{i}", "imageRef": image, "flavorRef": "1",
                                          **extra}})


def test_concurrent_creates_never_pass_the_accounts_server_quota(server, headers, image):
    """Each create checked the account's count before any of them was placed: all 15
    passed a quota of 3.  The placement's transaction checks it again."""
    with concurrent.futures.ThreadPoolExecutor(15) as pool:
        replies = list(pool.map(lambda i: create(server, headers, image, i), range(15)))
    statuses = [r.status_code for r in replies]
    assert set(statuses) <= {202, 403}, [(r.status_code, r.text[:200]) for r in replies]
    assert statuses.count(202) == 3
    listed = requests.get(f"{server.url}{NOVA}/servers", headers=headers, timeout=T).json()
    assert len(listed["servers"]) == 3
    for s in listed["servers"]:
        assert requests.delete(f"{server.url}{NOVA}/servers/{s['id']}", headers=headers,
                               timeout=T).status_code == 204


def test_a_lone_surrogate_is_refused_not_stored(server, headers, image):
    """A "\\udc00" escape is JSON but no text: stored as a server's metadata it made every
    listing of the account a 500."""
    ref = f'"imageRef": "{image}", "flavorRef": "1"'
    for body in ('{"server": {"name": "m", ' + ref + ', "metadata": {"k": "\\udc00"}}}',
                 '{"server": {"name": "\\ud800", ' + ref + '}}'):
        r = requests.post(f"{server.url}{NOVA}/servers", data=body, timeout=T,
                          headers={**headers, "Content-Type": "application/json"})
        assert r.status_code == 400, r.text
    assert requests.get(f"{server.url}{NOVA}/servers/detail", headers=headers,
                        timeout=T).status_code == 200
    # Keystone's token request (no token needed) and an image's name, the same.
    r = requests.post(f"{server.url}/v3/auth/tokens", timeout=T,
                      data='{"auth": {"identity": {"methods": ["password"], "password": '
                           '{"user": {"name": "a:\\ud800", "password": "x"}}}}}',
                      headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    r = requests.post(f"{server.url}/image/v2/images", data='{"name": "\\udfff"}', timeout=T,
                      headers={**headers, "Content-Type": "application/json"})
    assert r.status_code == 400, r.text


def test_a_console_length_past_any_integer_is_400(server, headers, image):
    r = create(server, headers, image, 100)
    assert r.status_code == 202, r.text
    sid = r.json()["server"]["id"]
    for length in ("Infinity", "-Infinity", "NaN", "1e400"):
        r = requests.post(f"{server.url}{NOVA}/servers/{sid}/action", timeout=T,
                          data='{"os-getConsoleOutput": {"length": ' + length + '}}',
                          headers={**headers, "Content-Type": "application/json"})
        assert r.status_code == 400, (length, r.status_code, r.text)
    assert requests.delete(f"{server.url}{NOVA}/servers/{sid}", headers=headers,
                           timeout=T).status_code == 204

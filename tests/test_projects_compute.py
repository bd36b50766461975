"""Project quotas on compute (issue 25) against a live `pithos serve --compute`: parallel
server creates against a project's limits on servers, vCPUs and RAM never pass them (no 5xx),
the usage is what the servers hold, deletes give it back; and the real `openstack` CLI, logged
in with a password scoped to a project, lists containers, images and servers.

Servers here are cheap: their image names a "kernel" that qemu refuses, so each goes to ERROR
at once on the local agent (no VM runs) while being a real server that holds its quota, as
Nova's servers in ERROR do (tests/test_authz_matrix.py makes its servers so too)."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import time

import pytest
import requests

from tests.conftest import ROOMY_COMPUTE, PithosServer

T = 30
OPENSTACK = os.path.join(os.path.dirname(sys.executable), "openstack")
NOVA = "/compute/v2.1"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = PithosServer(tmp_path_factory.mktemp("projects-compute"), serve_args=("--compute",),
                       env=ROOMY_COMPUTE)
    try:
        subprocess.run([sys.executable, "-m", "pithos.cli.main", "user", "add", "admin:root",
                        "--key", "rooting", "--admin", *srv.storage_flags], check=True,
                       capture_output=True, timeout=60)
        yield srv
    finally:
        srv.stop()


def login(server, user: str, password: str, project: dict | None = None) -> str:
    doc: dict = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": user, "domain": {"name": "Default"}, "password": password}}}}}
    if project:
        doc["auth"]["scope"] = {"project": project}
    r = requests.post(f"{server.url}/v3/auth/tokens", json=doc, timeout=T)
    assert r.status_code == 201, r.text
    return r.headers["X-Subject-Token"]


def project(server, name: str, limits: dict) -> str:
    root = {"X-Auth-Token": login(server, "admin:root", "rooting")}
    r = requests.post(f"{server.url}/v3/projects", json={"project": {"name": name}},
                      headers=root, timeout=T)
    assert r.status_code == 201, r.text
    pid = r.json()["project"]["id"]
    assert requests.put(f"{server.url}/v3/projects/{pid}/users/test:tester/roles/member",
                        headers=root, timeout=T).status_code == 204
    assert requests.put(f"{server.url}/account/v1.0/projects/{pid}/quotas", json=limits,
                        headers=root, timeout=T).status_code == 200
    return pid


def failing_image(server, headers: dict) -> str:
    """A disk image whose kernel qemu refuses: its servers go to ERROR at once."""
    images = f"{server.url}/image/v2/images"
    ids: list[str] = []
    for fields, data in (({"disk_format": "aki", "container_format": "aki"}, b"no kernel"),
                         ({"disk_format": "raw", "container_format": "bare"}, b"disk")):
        if ids:
            fields = {**fields, "kernel_id": ids[0]}
        r = requests.post(images, headers=headers, json={"name": "cheap", **fields}, timeout=T)
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
        assert requests.put(f"{images}/{ids[-1]}/file", data=data, timeout=T,
                            headers={**headers, "Content-Type": "application/octet-stream"}
                            ).status_code == 204
    return ids[1]


def held(server, headers: dict, pid: str) -> dict:
    r = requests.get(f"{server.url}/account/v1.0/projects/{pid}/quotas", headers=headers,
                     timeout=T)
    assert r.status_code == 200, r.text
    return {k: v["usage"] for k, v in r.json().items()}


def test_parallel_creates_never_pass_the_projects_limits(server):
    # m1.tiny: 1 vCPU, 256 MiB, 1 GiB.  The limits fit 4 of them (vCPUs and RAM both).
    pid = project(server, "vms", {"servers": 10, "vcpus": 4, "ram_mib": 4 * 256})
    headers = {"X-Auth-Token": login(server, "tester", "testing", {"id": pid})}
    image = failing_image(server, headers)
    assert held(server, headers, pid)["images"] == 2  # made while acting in the project

    def create(i: int) -> requests.Response:
        return requests.post(f"{server.url}{NOVA}/servers", headers=headers, timeout=60,
                             json={"server": {"name": f"s{i}", "imageRef": image,
                                              "flavorRef": "1"}})

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        replies = list(pool.map(create, range(20)))
    statuses = [r.status_code for r in replies]
    assert set(statuses) <= {202, 403}, [(r.status_code, r.text) for r in replies]
    assert statuses.count(202) == 4
    assert all("Quota exceeded" in r.text or "quota" in r.text.lower()
               for r in replies if r.status_code == 403)
    listed = requests.get(f"{server.url}{NOVA}/servers", headers=headers, timeout=T).json()
    assert len(listed["servers"]) == 4
    usage = held(server, headers, pid)
    assert (usage["servers"], usage["vcpus"], usage["ram_mib"], usage["disk_gib"]) == (
        4, 4, 1024, 4)
    # Deleting gives it back, once the agent no longer lists the servers.
    for s in listed["servers"]:
        assert requests.delete(f"{server.url}{NOVA}/servers/{s['id']}", headers=headers,
                               timeout=T).status_code == 204
    deadline = time.monotonic() + 60
    while held(server, headers, pid)["servers"] and time.monotonic() < deadline:
        time.sleep(0.5)
    usage = held(server, headers, pid)
    assert (usage["servers"], usage["vcpus"], usage["ram_mib"], usage["disk_gib"]) == (
        0, 0, 0, 0)
    # And the quota holds again afterwards.
    assert create(99).status_code == 202


@pytest.mark.skipif(not os.path.exists(OPENSTACK), reason="no openstack CLI in the venv")
def test_the_openstack_cli_with_a_project_scoped_password_login(server):
    pid = project(server, "cli-project", {"servers": 5})
    subprocess.run([sys.executable, "-m", "pithos.cli.main", "user", "passwd", "test:tester",
                    "--password", "a long password", *server.storage_flags], check=True,
                   capture_output=True, timeout=60)
    headers = {"X-Auth-Token": login(server, "tester", "a long password", {"id": pid})}
    assert requests.put(f"{server.url}/v1/AUTH_test/cli-box", headers=headers,
                        timeout=T).status_code == 201
    image = failing_image(server, headers)
    made = requests.post(f"{server.url}{NOVA}/servers", headers=headers, timeout=60, json={
        "server": {"name": "cli-server", "imageRef": image, "flavorRef": "1"}})
    assert made.status_code == 202, made.text

    def openstack(*args: str) -> list:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
        proc = subprocess.run(
            [OPENSTACK, "--os-auth-url", f"{server.url}/v3", "--os-identity-api-version", "3",
             "--os-project-name", "cli-project", "--os-project-domain-name", "Default",
             "--os-username", "tester", "--os-user-domain-name", "Default",
             "--os-password", "a long password", *args, "-f", "json"],
            capture_output=True, text=True, timeout=120, env=env)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    assert "cli-box" in [c["Name"] for c in openstack("container", "list")]
    assert image in [i["ID"] for i in openstack("image", "list")]
    assert "cli-server" in [s["Name"] for s in openstack("server", "list")]
    names = {p["Name"] for p in openstack("project", "list")}
    assert {"test", "cli-project"} <= names and "test2" not in names
    assert openstack("user", "show", "tester")["id"] == "test:tester"


def test_commissions_a_crashed_create_or_delete_left_are_resolved_by_what_happened(tmp_path):
    """A process that died between issuing a commission and resolving it: the next one
    accepts a create whose server row exists and a delete whose row is gone, and rejects the
    others; fresh ones (another process's, in flight) are left alone."""
    from compute.db import ComputeDb, Server
    from compute.service import ComputeService
    from pithos.catalog import Catalog
    from pithos.projects import Commissions

    catalog = Catalog(f"sqlite:///{tmp_path}/catalog.sqlite")
    db = ComputeDb(f"sqlite:///{tmp_path}/compute.sqlite")
    try:
        commissions = Commissions(catalog)
        service = ComputeService(db, images=None, key="k",  # type: ignore[arg-type]
                                 commissions=commissions)

        def server(sid: str) -> Server:
            return Server(id=sid, account="acct", user="u", name=sid, image_id="i",
                          flavor_id="1", vcpus=2, ram_mib=512, disk_gib=1, host=None,
                          status="ERROR", task_state=None, fault=None, metadata={},
                          key_name=None, ssh_port=None, created=0.0, updated=0.0,
                          launched=None, project="acct")

        made, lost, kept = server("made"), server("lost"), server("kept")
        db.insert_server(made)
        db.insert_server(kept)
        for s in (made, lost):  # creates: made's row exists, lost's never did
            service._issue(s, "create")
        service._issue(kept, "delete")  # a delete whose row is still there: did not happen
        assert catalog.holdings("acct")["vcpus"].pending == 4
        assert service.resolve_commissions(older_than_s=3600) == 0  # too fresh: in flight
        assert service.resolve_commissions(older_than_s=0) == 3
        held = catalog.holdings("acct")
        assert (held["servers"].usage, held["vcpus"].usage, held["vcpus"].pending) == (1, 2, 0)
        assert commissions.pending() == []
    finally:
        db.close()
        catalog.close()

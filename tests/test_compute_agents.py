"""Compute agents as separate processes on one machine: the scheduler places servers by free
RAM (two agents, separate state directories) and refuses with 409 and a reason when none has
room; an agent killed with -9 leaves its VMs running and a restarted one finds them; an agent
killed with -9 during a create leaves no half-made volume once it is back.

Each test runs its own `pithos serve --compute` (whose local agent offers little RAM here) and
kills every process it started, VMs included, however it ends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import requests

from tests.compute_helpers import Cloud, guest_files, needs_qemu, qemu_pids

pytestmark = needs_qemu


@pytest.fixture
def cloud() -> Iterator[Cloud]:
    # The local agent offers room for one m1.tiny (256 MiB) only.
    c = Cloud(agent_args="--ram-mib 300 --vcpus 4")
    try:
        yield c
    finally:
        c.close()


def host_of(cloud: Cloud, sid: str) -> str:
    return str(cloud.show(sid)["OS-EXT-SRV-ATTR:host"])


def test_scheduler_places_by_free_ram_and_agents_survive_a_restart(cloud: Cloud) -> None:
    image = cloud.guest_image(guest_files())
    cloud.agent("second", "--ram-mib", "600", "--vcpus", "4")
    cloud.wait_agents({"local", "second"})
    meta = {"after": "wait"}

    ids = []
    for i in range(3):
        r = cloud.create(f"s{i}", image, metadata={**meta, "marker": f"S{i}"})
        assert r.status_code == 202, r.text
        ids.append(r.json()["server"]["id"])
    # Most free RAM first: second (600), second (344 left), then local (300 against 88).
    assert [host_of(cloud, sid) for sid in ids] == ["second", "second", "local"]
    r = cloud.create("s3", image, metadata=meta)
    assert r.status_code == 409, r.text
    message = r.json()["conflictingRequest"]["message"]
    assert "No valid host was found" in message and "256 MiB" in message, message
    for i, sid in enumerate(ids):
        cloud.wait_status(sid, "ACTIVE")
        cloud.wait_console(sid, f"PITHOS-MARKER-WRITTEN: S{i}")

    # kill -9 of the agent: its VMs go on (qemu is in a session of its own) ...
    second_state = os.path.join(cloud.dir, "second")
    before = qemu_pids(second_state)
    assert len(before) == 2
    cloud.agents[0].kill9()
    time.sleep(1)
    assert qemu_pids(second_state) == before
    # ... and the restarted agent finds them, serves their disks again and drives them.
    cloud.agent("second", "--ram-mib", "600", "--vcpus", "4")
    cloud.wait_agents({"second"})
    assert [cloud.show(sid)["status"] for sid in ids[:2]] == ["ACTIVE", "ACTIVE"]
    assert qemu_pids(second_state) == before
    r = cloud.action(ids[0], {"os-stop": None})
    assert r.status_code == 202, r.text
    cloud.wait_status(ids[0], "SHUTOFF", timeout_s=90)
    # The guest heard the button and synced through the NBD server of the new agent.
    assert "PITHOS-GUEST-POWERDOWN" in cloud.console(ids[0])
    r = cloud.action(ids[1], {"reboot": {"type": "HARD"}})
    assert r.status_code == 202, r.text
    cloud.wait_status(ids[1], "ACTIVE")
    cloud.wait_console(ids[1], "PITHOS-MARKER-OLD: S1")

    for sid in ids:
        cloud.delete(sid)
    assert not [v for v in cloud.volumes() if v.startswith("server-")]
    assert not qemu_pids(cloud.dir)


def test_agent_killed_during_a_create_leaves_no_half_made_volume(cloud: Cloud) -> None:
    image = cloud.guest_image(guest_files())
    # This agent stops for a minute right after cloning a disk (a test's fault injection),
    # and has the most free RAM, so the server goes there.
    cloud.agent("flaky", "--ram-mib", "2000", env={"PITHOS_COMPUTE_TEST_STALL": "clone"})
    cloud.wait_agents({"local", "flaky"})
    r = cloud.create("doomed", image, metadata={"after": "wait"})
    assert r.status_code == 202, r.text
    sid = r.json()["server"]["id"]
    assert host_of(cloud, sid) == "flaky"
    deadline = time.monotonic() + 30
    while f"server-{sid}" not in cloud.volumes():
        assert time.monotonic() < deadline, "the disk was never cloned"
        time.sleep(0.2)
    record = os.path.join(cloud.dir, "flaky", "vms", sid, "server.json")
    with open(record) as f:
        assert json.load(f)["phase"] == "creating"
    cloud.agents[0].kill9()
    assert cloud.show(sid)["status"] == "BUILD"

    cloud.agent("flaky", "--ram-mib", "2000")
    server = cloud.wait_status(sid, "ERROR", timeout_s=30)
    assert "restarted during the create" in server["fault"]["message"]
    assert f"server-{sid}" not in cloud.volumes()
    assert not qemu_pids(cloud.dir)
    cloud.delete(sid)
    assert not os.path.exists(os.path.dirname(record))


def test_the_agents_api_wants_the_key_and_refuses_bad_input(cloud: Cloud) -> None:
    out = subprocess.run([sys.executable, "-m", "pithos.cli.compute", "agents", "--json",
                          "--data-dir", cloud.data_dir], capture_output=True, timeout=60,
                         check=True)
    (agent,) = json.loads(out.stdout)
    assert (agent["name"], agent["ram_mib"], agent["vcpus"]) == ("local", 300, 4)
    url = agent["url"]
    with open(os.path.join(cloud.data_dir, "compute.key")) as f:
        key = {"X-Compute-Key": f.read().strip()}
    assert oct(os.stat(os.path.join(cloud.data_dir, "compute.key")).st_mode & 0o777) == "0o600"

    assert requests.get(f"{url}/v1/vms", timeout=10).status_code == 401
    assert requests.get(f"{url}/v1/vms", headers={"X-Compute-Key": "guess"},
                        timeout=10).status_code == 401
    r = requests.get(f"{url}/v1/vms", headers=key, timeout=10)
    assert r.status_code == 200 and r.json() == {"vms": []}
    for body, status in (({}, 400), ({"id": "../../etc"}, 400),
                         ({"id": "0b7c8a4e-0000-4000-8000-000000000000"}, 400)):
        r = requests.post(f"{url}/v1/vms", json=body, headers=key, timeout=10)
        assert r.status_code == status and r.json()["error"], (body, r.text)
    r = requests.post(f"{url}/v1/vms", data=b"{", headers=key, timeout=10)
    assert r.status_code == 400
    for path in ("/v1/vms/..", "/v1/vms/../agent.lock", "/v1/nothing"):
        assert requests.get(url + path, headers=key, timeout=10).status_code == 404, path
    # The API takes reports only with the key.
    r = requests.put(f"{cloud.url}/compute/internal/agents/rogue", timeout=10,
                     json={"url": "http://127.0.0.1:9", "vcpus": 64, "ram_mib": 1 << 20,
                           "vms": []})
    assert r.status_code == 401
    # A second agent on the same state directory is refused (the first holds its lock).
    proc = subprocess.run([sys.executable, "-m", "pithos.cli.compute", "agent", "--api",
                           cloud.url, "--name", "twin", "--data-dir", cloud.data_dir],
                          capture_output=True, timeout=60)
    assert proc.returncode == 1 and b"another compute agent runs on" in proc.stderr

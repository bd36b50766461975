"""The real `openstack` CLI against `pithos serve --compute`: flavors, a server's whole life
(create --wait, list, show, console log, stop, start, soft and hard reboot, snapshot to an
image, a server from that snapshot that sees the first server's marker, delete --wait), and
the API's answers to bad input (Nova's JSON errors, never a 5xx).

The guest is scripts/guest-image's tiny one, registered through the image API as Nova boots
such images: a raw disk image whose kernel_id / ramdisk_id name a kernel and a ramdisk image.
Under TCG a boot to its marker takes ~5 s."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.compute_helpers import BOOT_TIMEOUT_S, REPO, Cloud, guest_files, needs_qemu

OPENSTACK = str(REPO / ".venv" / "bin" / "openstack")
if not os.path.exists(OPENSTACK):
    OPENSTACK = shutil.which("openstack") or OPENSTACK

PUBLIC_KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBmVtDVp0RzLb0rAYm6TDfBCs6tAVdxsD0Gc"
              "cDgG1DhF test@example")

pytestmark = [needs_qemu, pytest.mark.skipif(not os.path.exists(OPENSTACK),
                                             reason="python-openstackclient not installed")]


@pytest.fixture(scope="module")
def cloud() -> Iterator[Cloud]:
    # The local agent offers 2 GiB; an account may use 4 GiB of RAM.
    c = Cloud(agent_args="--ram-mib 2048 --vcpus 8", env={"PITHOS_COMPUTE_QUOTA": "ram_mib=4096"})
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def image(cloud: Cloud) -> str:
    return cloud.guest_image(guest_files())


def osc(cloud: Cloud, *args: str, timeout: float = 180) -> str:
    proc = subprocess.run([OPENSTACK, *args], capture_output=True, timeout=timeout,
                          env=cloud.osenv())
    if proc.returncode != 0:
        raise AssertionError(f"openstack {' '.join(args)} failed ({proc.returncode}): "
                             f"{proc.stderr.decode()[-2000:]}")
    return proc.stdout.decode()


def osc_json(cloud: Cloud, *args: str) -> object:
    return json.loads(osc(cloud, *args, "-f", "json"))


def status_becomes(cloud: Cloud, server: str, status: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        doc = osc_json(cloud, "server", "show", server)
        assert isinstance(doc, dict)
        if doc["status"] == status and doc["OS-EXT-STS:task_state"] in (None, ""):
            return
        assert time.monotonic() < deadline, f"{server} stays {doc['status']}"
        time.sleep(1)


def test_flavor_list(cloud: Cloud) -> None:
    flavors = osc_json(cloud, "flavor", "list")
    assert isinstance(flavors, list)
    tiny = next(f for f in flavors if f["Name"] == "m1.tiny")
    assert (tiny["VCPUs"], tiny["RAM"], tiny["Disk"]) == (1, 256, 1)


def test_a_servers_life_through_the_cli(cloud: Cloud, image: str, tmp_path: Path) -> None:
    user_data = tmp_path / "user-data"
    user_data.write_text("echo user-data says hello\n")
    pub = tmp_path / "life.pub"
    pub.write_text(PUBLIC_KEY + "\n")
    osc(cloud, "keypair", "create", "--public-key", str(pub), "life")
    created = osc_json(cloud, "server", "create", "--image", "guest", "--flavor", "m1.tiny",
                       "--property", "marker=CLI-1", "--property", "after=wait",
                       "--user-data", str(user_data), "--key-name", "life", "--wait", "vm1")
    assert isinstance(created, dict) and created["status"] == "ACTIVE", created
    sid = created["id"]
    assert created["key_name"] == "life"
    # The key reached the guest's seed disk, beside the properties and the user data.
    seed = Path(cloud.data_dir, "compute", "vms", sid, "seed.raw").read_bytes()
    assert f"public-key: {PUBLIC_KEY}\n".encode() in seed and b"marker=CLI-1\n" in seed

    listed = osc_json(cloud, "server", "list")
    assert isinstance(listed, list)
    assert [(s["Name"], s["Status"], s["Image"], s["Flavor"]) for s in listed] == \
        [("vm1", "ACTIVE", "guest", "m1.tiny")]
    shown = osc_json(cloud, "server", "show", "vm1")
    assert isinstance(shown, dict) and shown["id"] == sid and shown["flavor"].startswith("m1.tiny")

    deadline = time.monotonic() + BOOT_TIMEOUT_S
    while "PITHOS-GUEST-READY" not in (log := osc(cloud, "console", "log", "show", "vm1")):
        assert time.monotonic() < deadline, log
        time.sleep(1)
    assert "user-data says hello" in log and "PITHOS-MARKER-WRITTEN: CLI-1" in log
    assert osc(cloud, "console", "log", "show", "--lines", "1", "vm1").count("\n") <= 1

    osc(cloud, "server", "stop", "vm1")
    status_becomes(cloud, "vm1", "SHUTOFF")
    assert "PITHOS-GUEST-POWERDOWN" in osc(cloud, "console", "log", "show", "vm1")
    osc(cloud, "server", "start", "vm1")
    status_becomes(cloud, "vm1", "ACTIVE")
    osc(cloud, "server", "reboot", "--wait", "vm1")
    assert osc_json(cloud, "server", "show", "vm1")["status"] == "ACTIVE"  # type: ignore[index]
    osc(cloud, "server", "reboot", "--hard", "--wait", "vm1")
    assert osc_json(cloud, "server", "show", "vm1")["status"] == "ACTIVE"  # type: ignore[index]
    # The last boot (after the hard reboot) reads the disk and finds the first boot's
    # marker; no boot after the first found the disk without it. (A boot that a stop or a
    # reboot cut short may have printed nothing.)
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    while True:
        log = osc(cloud, "console", "log", "show", "vm1")
        last = log.rsplit("PITHOS-GUEST-BOOTED", 1)[1]
        if "PITHOS-GUEST-READY" in last:
            break
        assert time.monotonic() < deadline, log
        time.sleep(1)
    assert "PITHOS-MARKER-OLD: CLI-1" in last, last
    assert log.count("PITHOS-MARKER-NONE") == 1, log

    # The snapshot: an image whose data is the disk's map as it is (no copy).
    snap = osc_json(cloud, "server", "image", "create", "--name", "vm1-snap", "--wait", "vm1")
    assert isinstance(snap, dict) and snap["status"] == "active" and snap["name"] == "vm1-snap"
    props = snap["properties"]
    assert props["instance_uuid"] == sid and props["kernel_id"]

    second = osc_json(cloud, "server", "create", "--image", "vm1-snap", "--flavor", "m1.tiny",
                      "--property", "marker=CLI-2", "--property", "after=wait", "--wait",
                      "vm2")
    assert isinstance(second, dict) and second["status"] == "ACTIVE"
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    while "PITHOS-MARKER-WRITTEN" not in (log := osc(cloud, "console", "log", "show", "vm2")):
        assert time.monotonic() < deadline, log
        time.sleep(1)
    assert "PITHOS-MARKER-OLD: CLI-1" in log and "PITHOS-MARKER-WRITTEN: CLI-2" in log

    osc(cloud, "server", "delete", "--wait", "vm1", "vm2")
    assert osc_json(cloud, "server", "list") == []
    assert not [v for v in cloud.volumes() if v.startswith("server-")]


def test_bad_input_gets_novas_errors(cloud: Cloud, image: str) -> None:
    def create(**kw: object) -> requests.Response:
        body = {"name": "bad", "imageRef": image, "flavorRef": "1"}
        body.update(kw)  # type: ignore[arg-type]
        return requests.post(f"{cloud.nova}/servers", json={"server": body},
                             headers=cloud.h(), timeout=30)

    r = create(imageRef="0b7c8a4e-0000-4000-8000-000000000000")
    assert r.status_code == 400 and "could not be found" in r.json()["badRequest"]["message"]
    r = create(flavorRef="no-such-flavor")
    assert r.status_code == 400 and "Flavor no-such-flavor" in r.json()["badRequest"]["message"]
    r = create(user_data="not base64!")
    assert r.status_code == 400 and "base 64" in r.json()["badRequest"]["message"]
    r = create(key_name="nobody")
    assert r.status_code == 400
    r = requests.post(f"{cloud.nova}/servers", data=b"{", headers=cloud.h(), timeout=30)
    assert r.status_code == 400 and "badRequest" in r.json()

    # An image that wants a bigger disk than the flavor's (min_disk in GiB).
    big = cloud.guest_image(guest_files(), name="needs-5g", min_disk=5)
    r = create(imageRef=big)
    assert r.status_code == 400 and "too small" in r.json()["badRequest"]["message"]

    # Another account's private image does not exist for us, whatever it is.
    other = cloud.add_user("other", "bob", "bobkey")
    theirs = cloud.image(guest_files()["disk"], "theirs", token=other)
    r = create(imageRef=theirs)
    assert r.status_code == 400 and "could not be found" in r.text
    assert r.json()["badRequest"]["message"] == \
        create(imageRef="0b7c8a4e-0000-4000-8000-00000000abcd").json()["badRequest"][
            "message"].replace("0b7c8a4e-0000-4000-8000-00000000abcd", theirs)

    # Flavors made by the operator's command: more RAM than any agent has (409), more than
    # the account's quota (403); each with the reason, nothing created.
    for name, ram in (("huge", "3000"), ("giant", "8192")):
        subprocess.run([sys.executable, "-m", "pithos.cli.compute", "flavor", "create", name,
                        "--vcpus", "1", "--ram-mib", ram, "--disk-gib", "1", "--data-dir",
                        cloud.data_dir], check=True, capture_output=True, timeout=60, cwd=REPO)
    assert {"huge", "giant"} <= {f["Name"] for f in osc_json(cloud, "flavor", "list")}  # type: ignore
    r = create(flavorRef="huge")
    assert r.status_code == 409, r.text
    assert "No valid host was found" in r.json()["conflictingRequest"]["message"]
    assert "3000 MiB" in r.json()["conflictingRequest"]["message"]
    r = create(flavorRef="giant")
    assert r.status_code == 403, r.text
    assert "Quota exceeded for ram" in r.json()["forbidden"]["message"]
    subprocess.run([sys.executable, "-m", "pithos.cli.compute", "flavor", "delete", "giant",
                    "--data-dir", cloud.data_dir], check=True, capture_output=True, timeout=60,
                   cwd=REPO)
    r = create(flavorRef="giant")
    assert r.status_code == 400 and "Flavor giant could not be found" in r.text

    # Unknown servers and other accounts' servers: 404; no token: 401; a microversion we do
    # not have: 406.
    r = requests.get(f"{cloud.nova}/servers/nope", headers=cloud.h(), timeout=30)
    assert r.status_code == 404 and "itemNotFound" in r.json()
    r = requests.get(f"{cloud.nova}/servers", timeout=30)
    assert r.status_code == 401
    r = requests.get(f"{cloud.nova}/servers", timeout=30,
                     headers={**cloud.h(), "OpenStack-API-Version": "compute 2.79"})
    assert r.status_code == 406
    r = requests.post(f"{cloud.nova}/servers/nope/action", json={"os-stop": None},
                      headers=cloud.h(other), timeout=30)
    assert r.status_code == 404
    r = requests.get(f"{cloud.nova}/servers", headers=cloud.h(), timeout=30)
    assert r.status_code == 200 and r.json()["servers"] == []


def test_keypairs(cloud: Cloud, tmp_path: Path) -> None:
    pub = tmp_path / "id.pub"
    pub.write_text(PUBLIC_KEY + "\n")
    kp = osc_json(cloud, "keypair", "create", "--public-key", str(pub), "k1")
    assert isinstance(kp, dict) and kp["name"] == "k1" and kp["fingerprint"].count(":") == 15
    assert [k["Name"] for k in osc_json(cloud, "keypair", "list")] == ["k1", "life"]  # type: ignore
    r = requests.post(f"{cloud.nova}/os-keypairs", json={"keypair": {"name": "k2"}},
                      headers=cloud.h(), timeout=30)
    assert r.status_code == 400 and "public key is required" in r.text
    osc(cloud, "keypair", "delete", "k1")
    assert [k["Name"] for k in osc_json(cloud, "keypair", "list")] == ["life"]  # type: ignore

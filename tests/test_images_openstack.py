"""Images with the real `openstack` CLI (python-openstackclient, from the test extras) against
a live `pithos serve`: Keystone v3 password login, then the Image API v2 subset under /image
(issue 23, "Must show").  Two accounts: test (test:tester) and test2 (test2:tester2)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.swift_helpers import login, request, store_stats

OPENSTACK = os.path.join(os.path.dirname(sys.executable), "openstack")
CLI_TIMEOUT_S = 120

pytestmark = [
    pytest.mark.skipif(not os.path.exists(OPENSTACK), reason="no openstack CLI in the venv"),
    pytest.mark.skipif(shutil.which("qemu-img") is None,
                       reason="qemu-img is not installed (scripts/setup --test)"),
]

ALICE = ("test", "tester", "testing")
BOB = ("test2", "tester2", "testing2")


def openstack(server, *args: str, who=ALICE, check: bool = True
              ) -> subprocess.CompletedProcess[str]:
    project, user, password = who
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    proc = subprocess.run(
        [OPENSTACK, "--os-auth-url", f"{server.url}/v3", "--os-identity-api-version", "3",
         "--os-project-name", project, "--os-username", user, "--os-password", password,
         "--os-user-domain-name", "Default", "--os-project-domain-name", "Default", *args],
        capture_output=True, text=True, timeout=CLI_TIMEOUT_S, env=env)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def show(server, image: str, who=ALICE) -> dict:
    return json.loads(openstack(server, "image", "show", image, "-f", "json", who=who).stdout)


def listed(server, who=ALICE) -> dict[str, str]:
    out = json.loads(openstack(server, "image", "list", "-f", "json", who=who).stdout)
    return {row["ID"]: row["Name"] for row in out}


def disk(path, n: int = 256 * 1024) -> bytes:
    """A small disk: random data, zeros, random (a whole number of sectors, as disks are)."""
    data = os.urandom(n // 4) + bytes(n // 2) + os.urandom(n - n // 4 - n // 2)
    path.write_bytes(data)
    return data


def create(server, path, name: str, disk_format: str = "raw", who=ALICE) -> dict:
    out = openstack(server, "image", "create", "--file", str(path), "--disk-format",
                    disk_format, "--container-format", "bare", name, "-f", "json", who=who)
    return json.loads(out.stdout)


def test_create_list_show_and_save_a_raw_image(pithos_server, tmp_path):
    data = disk(tmp_path / "a.raw")
    made = create(pithos_server, tmp_path / "a.raw", "raw-image")
    assert (made["status"], made["size"], made["disk_format"]) == ("active", len(data), "raw")
    assert made["checksum"] == hashlib.md5(data).hexdigest()
    assert listed(pithos_server)[made["id"]] == "raw-image"
    shown = show(pithos_server, "raw-image")  # by name, as the CLI finds it
    assert (shown["id"], shown["owner"], shown["visibility"]) == (made["id"], "test",
                                                                   "private")
    openstack(pithos_server, "image", "save", "--file", str(tmp_path / "out"), made["id"])
    assert (tmp_path / "out").read_bytes() == data


def test_a_qcow2_image_is_stored_and_served_raw(pithos_server, tmp_path):
    data = disk(tmp_path / "b.raw", 512 * 1024)
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(tmp_path / "b.raw"),
                    str(tmp_path / "b.qcow2")], check=True, timeout=60)
    assert (tmp_path / "b.qcow2").read_bytes()[:4] == b"QFI\xfb"
    made = create(pithos_server, tmp_path / "b.qcow2", "qcow2-image", disk_format="qcow2")
    assert (made["status"], made["disk_format"], made["size"]) == ("active", "raw", len(data))
    openstack(pithos_server, "image", "save", "--file", str(tmp_path / "out"), made["id"])
    assert (tmp_path / "out").read_bytes() == data


def test_private_until_public_and_properties(pithos_server, tmp_path):
    disk(tmp_path / "c.raw")
    made = create(pithos_server, tmp_path / "c.raw", "alice-private")
    image_id = made["id"]
    # Account test2 cannot find it, by id or by name, nor change it.
    assert image_id not in listed(pithos_server, who=BOB)
    for ref in (image_id, "alice-private"):
        missing = openstack(pithos_server, "image", "show", ref, who=BOB, check=False)
        assert missing.returncode != 0 and "No Image found" in missing.stderr
    refused = openstack(pithos_server, "image", "set", "--public", image_id, who=BOB,
                        check=False)
    assert refused.returncode != 0
    assert show(pithos_server, image_id)["visibility"] == "private"

    openstack(pithos_server, "image", "set", "--public", image_id)
    assert listed(pithos_server, who=BOB)[image_id] == "alice-private"
    assert show(pithos_server, image_id, who=BOB)["visibility"] == "public"
    # Public is readable, not writable, by others.
    refused = openstack(pithos_server, "image", "set", "--property", "k=v", image_id,
                        who=BOB, check=False)
    assert refused.returncode != 0 and "not yours" in refused.stderr

    openstack(pithos_server, "image", "set", "--property", "kernel_id=abc", "--property",
              "os_distro=debian", image_id)
    props = show(pithos_server, image_id)["properties"]
    assert (props["kernel_id"], props["os_distro"]) == ("abc", "debian")
    openstack(pithos_server, "image", "unset", "--property", "os_distro", image_id)
    assert "os_distro" not in show(pithos_server, image_id)["properties"]


def test_delete_removes_the_image_and_its_data_object(pithos_server, tmp_path):
    disk(tmp_path / "d.raw")
    made = create(pithos_server, tmp_path / "d.raw", "doomed")
    token = login(pithos_server).token
    assert request(pithos_server, "HEAD", f"/v1/AUTH_test/images/{made['id']}",
                   token=token).status == 200
    bob = openstack(pithos_server, "image", "delete", made["id"], who=BOB, check=False)
    assert bob.returncode != 0
    openstack(pithos_server, "image", "delete", made["id"])
    assert made["id"] not in listed(pithos_server)
    assert request(pithos_server, "GET", f"/image/v2/images/{made['id']}",
                   token=token).status == 404
    assert request(pithos_server, "HEAD", f"/v1/AUTH_test/images/{made['id']}",
                   token=token).status == 404


def test_bad_input_gets_a_reason(pithos_server, tmp_path):
    disk(tmp_path / "e.raw")
    unknown = openstack(pithos_server, "image", "show", "00000000-0000-4000-8000-000000000000",
                        check=False)
    assert unknown.returncode != 0 and "No Image found" in unknown.stderr
    bad = openstack(pithos_server, "image", "create", "--file", str(tmp_path / "e.raw"),
                    "--disk-format", "vmdk", "bad-format", check=False)
    assert bad.returncode != 0 and "400" in bad.stderr and "disk_format is one of" in bad.stderr
    (tmp_path / "g.qcow2").write_bytes(b"QFI\xfb" + os.urandom(64 * 1024))
    garbage = openstack(pithos_server, "image", "create", "--file", str(tmp_path / "g.qcow2"),
                        "--disk-format", "qcow2", "garbage", check=False)
    assert garbage.returncode != 0 and "400" in garbage.stderr
    assert "not a qcow2 image" in garbage.stderr
    # The CLI deletes what it created when the upload fails; whatever is left has no data.
    assert all(show(pithos_server, i)["status"] == "queued"
               for i, n in listed(pithos_server).items() if n == "garbage")


def test_the_wire_statuses(pithos_server):
    alice, bob = login(pithos_server).token, login(pithos_server, "test2:tester2",
                                                   "testing2").token
    versions = request(pithos_server, "GET", "/image")
    assert versions.status == 200
    assert json.loads(versions.body)["versions"][0]["links"][0]["href"].endswith("/image/v2/")
    assert request(pithos_server, "GET", "/image/v2/images").status == 401
    created = request(pithos_server, "POST", "/image/v2/images", token=alice,
                      body=json.dumps({"name": "wire", "disk_format": "raw",
                                       "container_format": "bare"}).encode(),
                      headers={"Content-Type": "application/json"})
    assert created.status == 201
    image_id = json.loads(created.body)["id"]
    assert request(pithos_server, "GET", f"/image/v2/images/{image_id}/file",
                   token=alice).status == 204  # no data yet
    for token, status in ((alice, 200), (bob, 404)):
        assert request(pithos_server, "GET", f"/image/v2/images/{image_id}",
                       token=token).status == status
    reply = request(pithos_server, "GET", f"/image/v2/images/{image_id}", token=bob)
    assert json.loads(reply.body)["not_found"]["message"]  # a reason, as JSON
    patch = request(pithos_server, "PATCH", f"/image/v2/images/{image_id}", token=alice,
                    body=b'[{"op": "replace", "path": "/name", "value": "x"}]',
                    headers={"Content-Type": "application/json"})
    assert patch.status == 415
    put = request(pithos_server, "PUT", f"/image/v2/images/{image_id}/file", token=bob,
                  body=b"x" * 10, headers={"Content-Type": "application/octet-stream"})
    assert put.status == 404
    for bad in (b"{", b"[]", b'{"min_ram": -1}', b'{"status": "active"}'):
        reply = request(pithos_server, "POST", "/image/v2/images", token=alice, body=bad,
                        headers={"Content-Type": "application/json"})
        assert reply.status in (400, 403), (bad, reply)
    assert request(pithos_server, "GET", "/image/v2/images?limit=x", token=alice).status == 400
    # A parameter given twice counts once (found by schemathesis: it was a 500).
    assert request(pithos_server, "GET", "/image/v2/images?limit=1&limit=2",
                   token=alice).status == 200
    assert request(pithos_server, "GET", "/image/v2/schemas/image", token=alice).status == 200


def test_list_pages_with_next_links(pithos_server):
    alice = login(pithos_server, "test2:tester2", "testing2").token
    ids = set()
    for i in range(3):
        reply = request(pithos_server, "POST", "/image/v2/images", token=alice,
                        body=json.dumps({"name": f"page{i}"}).encode(),
                        headers={"Content-Type": "application/json"})
        ids.add(json.loads(reply.body)["id"])
    seen: list[str] = []
    path = "/image/v2/images?limit=2"
    while path:
        doc = json.loads(request(pithos_server, "GET", path, token=alice).body)
        seen += [i["id"] for i in doc["images"]]
        path = "/image" + doc["next"] if "next" in doc else ""
        assert len(seen) < 10
    assert ids <= set(seen) and len(seen) == len(set(seen))


def test_an_image_and_an_object_of_the_same_content_share_blocks(pithos_server, tmp_path):
    # Whole blocks of fresh random data: what either upload stores is new to the store.
    data = os.urandom(3 * 4 * 1024 * 1024)
    (tmp_path / "f.raw").write_bytes(data)
    before = store_stats(pithos_server)
    create(pithos_server, tmp_path / "f.raw", "dedup")
    middle = store_stats(pithos_server)
    token = login(pithos_server, "test2:tester2", "testing2").token
    assert request(pithos_server, "PUT", "/v1/AUTH_test2/c", token=token).status in (201, 202)
    assert request(pithos_server, "PUT", "/v1/AUTH_test2/c/same.raw", body=data,
                   token=token).status == 201
    after = store_stats(pithos_server)
    assert middle["bytes"] - before["bytes"] >= len(data)
    # The object (in another account) adds at most a map page, no data block.
    assert after["bytes"] - middle["bytes"] < 64 * 1024
    assert after["blocks"] - middle["blocks"] <= 2


def test_gc_keeps_an_images_data_when_its_object_goes(pithos_server, tmp_path):
    """The image row is a root of its own: deleting the object the data came in frees nothing
    the image names, while a plain object deleted the same way is collected (the control)."""
    image_data = os.urandom(2 * 4 * 1024 * 1024 + 1000)
    (tmp_path / "g.raw").write_bytes(image_data)
    made = create(pithos_server, tmp_path / "g.raw", "kept-by-gc")
    token = login(pithos_server).token
    control = os.urandom(2 * 4 * 1024 * 1024 + 1000)
    assert request(pithos_server, "PUT", "/v1/AUTH_test/ctrl", token=token).status in (201,
                                                                                        202)
    assert request(pithos_server, "PUT", "/v1/AUTH_test/ctrl/o", body=control,
                   token=token).status == 201
    for path in ("/v1/AUTH_test/ctrl/o", f"/v1/AUTH_test/images/{made['id']}"):
        assert request(pithos_server, "DELETE", path, token=token).status == 204
    # The history of the deleted objects goes too (a deletion keeps it by default), and the
    # server's writer lease ends a second after its last writer.
    for container in ("ctrl", "images"):
        assert request(pithos_server, "DELETE", f"/v1/AUTH_test/{container}?until=9999999999",
                       token=token).status == 204
    time.sleep(1.5)
    before = store_stats(pithos_server)
    subprocess.run([sys.executable, "-m", "pithos.cli.main", "gc", "--clock-margin", "0",
                    *pithos_server.storage_flags], check=True, capture_output=True, timeout=300)
    after = store_stats(pithos_server)
    assert before["bytes"] - after["bytes"] >= len(control)  # the control went
    assert before["bytes"] - after["bytes"] < len(control) + len(image_data)
    openstack(pithos_server, "image", "save", "--file", str(tmp_path / "out"), made["id"])
    assert (tmp_path / "out").read_bytes() == image_data

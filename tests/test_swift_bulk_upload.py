"""Swift's archive extraction (PUT ?extract-archive, pithos/api/bulk_upload.py) against a
live `pithos serve`, raw HTTP: tar, tar.gz and tar.bz2 at the account, container and prefix
levels, Swift's summary, refusals listed per file, and archives that are no archives."""

from __future__ import annotations

import io
import tarfile

import pytest

from tests.swift_helpers import Login, login, request


@pytest.fixture(scope="module")
def me(pithos_server) -> Login:
    return login(pithos_server)


def archive(files: dict[str, bytes], mode: str = "w", pax: dict[str, str] | None = None
            ) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode, format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            if pax:
                info.pax_headers = pax
            tar.addfile(info, io.BytesIO(data))
        dirinfo = tarfile.TarInfo("somedir")
        dirinfo.type = tarfile.DIRTYPE
        tar.addfile(dirinfo)
    return out.getvalue()


def extract(server, me: Login, path: str, body: bytes, fmt: str, token: str | None = "me"):
    return request(server, "PUT", f"{me.path}{path}?extract-archive={fmt}", body=body,
                   token=me.token if token == "me" else token,
                   headers={"Accept": "application/json"})


def get(server, me: Login, path: str) -> bytes | int:
    r = request(server, "GET", f"{me.path}/{path}", token=me.token)
    return r.body if r.status == 200 else r.status


def test_into_a_container(pithos_server, me):
    assert request(pithos_server, "PUT", f"{me.path}/bu", token=me.token).status == 201
    r = extract(pithos_server, me, "/bu", archive({"a.txt": b"A", "./d/b.txt": b"B"}), "tar")
    assert r.status == 200
    assert r.json() == {"Number Files Created": 2, "Response Body": "",
                        "Response Status": "201 Created", "Errors": []}
    assert get(pithos_server, me, "bu/a.txt") == b"A"
    assert get(pithos_server, me, "bu/d/b.txt") == b"B"
    head = request(pithos_server, "HEAD", f"{me.path}/bu/a.txt", token=me.token)
    assert head.headers["content-type"] == "text/plain"


def test_account_level_makes_containers_gz(pithos_server, me):
    body = archive({"bu-new/x": b"x" * 100000, "bu-new2/y": b"y"}, mode="w:gz")
    r = extract(pithos_server, me, "", body, "tar.gz")
    assert r.json()["Number Files Created"] == 2
    assert get(pithos_server, me, "bu-new/x") == b"x" * 100000
    assert get(pithos_server, me, "bu-new2/y") == b"y"


def test_prefix_level_bz2(pithos_server, me):
    assert request(pithos_server, "PUT", f"{me.path}/bp", token=me.token).status == 201
    r = extract(pithos_server, me, "/bp/pre/", archive({"f": b"F"}, mode="w:bz2"), "tar.bz2")
    assert r.json()["Response Status"] == "201 Created"
    assert get(pithos_server, me, "bp/pre/f") == b"F"


def test_plain_text_summary(pithos_server, me):
    r = request(pithos_server, "PUT", f"{me.path}/bu?extract-archive=tar",
                body=archive({"t": b"t"}), token=me.token)
    assert r.status == 200 and r.headers["content-type"].startswith("text/plain")
    assert b"Number Files Created: 1" in r.body and b"Response Status: 201 Created" in r.body


def test_refusals_are_listed_per_file(pithos_server, me):
    other = login(pithos_server, "test2:tester2", "testing2")
    assert request(pithos_server, "PUT", f"{me.path}/bq", token=me.token,
                   headers={"X-Container-Meta-Quota-Bytes": "3"}).status == 201
    # A file too big for the quota, and a top-level file at the account level (no object).
    r = extract(pithos_server, me, "", archive({"bq/big": b"12345", "bq/ok": b"12",
                                                "toplevel": b"x"}), "tar")
    doc = r.json()
    assert r.status == 200 and doc["Response Status"] == "400 Bad Request"
    assert doc["Number Files Created"] == 1
    assert ["/bq/big", "413 Request Entity Too Large"] in doc["Errors"]
    assert ["/toplevel/", "400 Bad Request"] in doc["Errors"]
    # Another account's container: refused, nothing written there.
    r = extract(pithos_server, me, "/bu", archive({"intruder": b"x"}), "tar", other.token)
    assert r.json()["Errors"] == [["/bu/intruder", "403 Forbidden"]]
    assert get(pithos_server, me, "bu/intruder") == 404


@pytest.mark.parametrize("fmt,status", [("zip", 400), ("", 400)])
def test_unsupported_format(pithos_server, me, fmt, status):
    assert extract(pithos_server, me, "/bu", b"x", fmt).status == status


def test_anonymous_is_401(pithos_server, me):
    assert extract(pithos_server, me, "/bu", archive({"a": b"a"}), "tar", None).status == 401


@pytest.mark.parametrize("body,fmt", [(b"not a tar at all" * 100, "tar"),
                                      (b"\x1f\x8b garbage", "tar.gz"),
                                      (b"BZh9 garbage", "tar.bz2")])
def test_not_an_archive(pithos_server, me, body, fmt):
    r = extract(pithos_server, me, "/bu", body, fmt)
    doc = r.json()
    assert r.status == 200 and doc["Response Status"] == "400 Bad Request"
    assert doc["Response Body"].startswith("Invalid Tar File")


def test_oversized_header_is_refused_unread(pithos_server, me):
    # A pax header of 2 MiB: tarfile would read it whole; it is refused instead.
    body = archive({"p": b"p"}, pax={"comment": "x" * (2 << 20)})
    doc = extract(pithos_server, me, "/bu", body, "tar").json()
    assert doc["Response Status"] == "400 Bad Request" and doc["Number Files Created"] == 0
    assert "header larger than" in doc["Response Body"]


def test_info_lists_bulk_upload(pithos_server):
    info = request(pithos_server, "GET", "/info").json()
    assert info["bulk_upload"]["max_containers_per_extraction"] > 0

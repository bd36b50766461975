"""A first pass of the Swift API with python-swiftclient against a real `pithos serve`."""

import hashlib
import os

import pytest
import swiftclient

# Issue 6: the same tests on the scale-out configuration (RADOS blocks, PostgreSQL catalog).
SERVER_CONFIGS = ("embedded", "scaleout")


def test_container_and_object_round_trip(pithos_server):
    conn = pithos_server.connection()
    conn.put_container("basic")
    data = os.urandom(5 * 1024 * 1024 + 17)
    etag = conn.put_object("basic", "dir/a.bin", data, headers={"X-Object-Meta-Color": "blue"})
    assert etag == hashlib.md5(data).hexdigest()
    headers, body = conn.get_object("basic", "dir/a.bin")
    assert body == data
    assert headers["etag"] == etag and headers["x-object-meta-color"] == "blue"
    headers, part = conn.get_object("basic", "dir/a.bin", headers={"Range": "bytes=10-19"})
    assert part == data[10:20] and headers["content-range"] == f"bytes 10-19/{len(data)}"
    _, listing = conn.get_container("basic", delimiter="/")
    assert listing == [{"subdir": "dir/"}]
    conn.delete_object("basic", "dir/a.bin")
    with pytest.raises(swiftclient.ClientException) as info:
        conn.get_object("basic", "dir/a.bin")
    assert info.value.http_status == 404


def test_other_account_is_forbidden(pithos_server):
    conn = pithos_server.connection()
    conn.put_container("private")
    conn.put_object("private", "x", b"secret")
    other = pithos_server.connection("test2:tester2", "testing2")
    url, token = other.get_auth()
    for name in ("x", "does-not-exist"):
        with pytest.raises(swiftclient.ClientException) as info:
            swiftclient.get_object(url.replace("AUTH_test2", "AUTH_test"), token, "private",
                                   name)
        assert info.value.http_status == 403  # the same answer whether it exists or not

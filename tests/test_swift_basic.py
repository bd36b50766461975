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


def test_concurrent_large_uploads_each_get_their_own_etag(pithos_server):
    """Many large uploads at once share the multi-buffer MD5's lanes (pithos/objects/digest.py):
    each must still get the MD5 of its own bytes, those sent chunked too, and one whose ETag
    header is wrong must fail alone and leave nothing."""
    from concurrent.futures import ThreadPoolExecutor

    pithos_server.connection().put_container("many")
    datas = [os.urandom(3 * 1024 * 1024 + 4099 * i) for i in range(12)]

    def upload(i):
        conn = pithos_server.connection()
        if i == 5:
            with pytest.raises(swiftclient.ClientException) as info:
                conn.put_object("many", f"o{i}", datas[i], etag="0" * 32)
            return info.value.http_status
        if i % 3 == 0:  # chunked: length unknown to the server
            pieces = (datas[i][at:at + 65536] for at in range(0, len(datas[i]), 65536))
            return conn.put_object("many", f"o{i}", pieces, chunk_size=65536)
        return conn.put_object("many", f"o{i}", datas[i])

    with ThreadPoolExecutor(len(datas)) as pool:
        results = list(pool.map(upload, range(len(datas))))
    conn = pithos_server.connection()
    for i, data in enumerate(datas):
        if i == 5:
            assert results[i] == 422
            with pytest.raises(swiftclient.ClientException) as info:
                conn.head_object("many", f"o{i}")
            assert info.value.http_status == 404
            continue
        assert results[i] == hashlib.md5(data).hexdigest(), i
        headers, body = conn.get_object("many", f"o{i}")
        assert headers["etag"] == results[i] and body == data, i
    headers = conn.head_container("many")
    assert int(headers["x-container-object-count"]) == len(datas) - 1

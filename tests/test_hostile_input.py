"""Regression tests of issue 26's findings (an outside security review), each named after its
finding, against a real `pithos serve`."""

from __future__ import annotations

import json

import requests

T = 30


def auth(server, user="test:tester", key="testing"):
    r = requests.get(server.auth_url, headers={"X-Auth-User": user, "X-Auth-Key": key},
                     timeout=T)
    r.raise_for_status()
    return r.headers["X-Storage-Url"], {"X-Auth-Token": r.headers["X-Auth-Token"]}


def publish(url: str, h: dict, path: str) -> str:
    r = requests.post(f"{url}/{path}", headers={**h, "X-Object-Public": "true"}, timeout=T)
    assert r.status_code in (202, 204), r.text
    return r.headers["X-Object-Public"]


# -- 1. public link + DLO = ACL bypass ------------------------------------------------------------

def published_page_and_its_writer(server, pub: str, private: str, secret: str
                                  ) -> tuple[str, dict, str]:
    """(storage URL, a writer's headers, the public link) of `pub`/page,
    published, in a container the non-admin test:reader may write (not read) beside the
    private container `private` holding `secret` (an object of that name)."""
    url, owner = auth(server)
    _, writer = auth(server, "test:reader", "reading")  # no admin, no read ACL
    for c in (pub, private):
        assert requests.put(f"{url}/{c}", headers=owner, timeout=T).status_code in (201, 202)
    assert requests.put(f"{url}/{private}/{secret}", data=b"the owner's secret",
                        headers=owner, timeout=T).status_code == 201
    assert requests.put(f"{url}/{pub}/page", data=b"hello", headers=owner,
                        timeout=T).status_code == 201
    link = publish(url, owner, f"{pub}/page")
    assert requests.post(f"{url}/{pub}", headers={**owner, "X-Container-Write": "test:reader"},
                         timeout=T).status_code in (202, 204)
    return url, writer, link


def test_finding_1_a_public_link_never_follows_a_manifest_into_private_objects(pithos_server):
    url, writer, link = published_page_and_its_writer(pithos_server, "pub", "private",
                                                      "secret")
    r = requests.put(f"{url}/pub/page", data=b"", timeout=T,
                     headers={**writer, "X-Object-Manifest": "private/"})
    assert r.status_code == 201, r.text
    # The writer itself may not read through the manifest, and nor may anyone via the link:
    # it joins only published segments (none here).
    assert requests.get(f"{url}/pub/page", headers=writer, timeout=T).status_code == 403
    got = requests.get(link, timeout=T)
    assert got.status_code == 200 and got.content == b""
    assert requests.head(link, timeout=T).headers["Content-Length"] == "0"


def test_finding_1_a_public_dlo_whose_segments_are_public_is_served(pithos_server):
    url, owner = auth(pithos_server)
    requests.put(f"{url}/dlo", headers=owner, timeout=T)
    for i, part in enumerate((b"one ", b"two")):
        assert requests.put(f"{url}/dlo/seg/{i}", data=part, headers=owner,
                            timeout=T).status_code == 201
    assert requests.put(f"{url}/dlo/whole", data=b"", timeout=T,
                        headers={**owner, "X-Object-Manifest": "dlo/seg/"}).status_code == 201
    link = publish(url, owner, "dlo/whole")
    got = requests.get(link, timeout=T)  # its segments are not public: left out
    assert got.status_code == 200 and got.content == b""
    publish(url, owner, "dlo/seg/1")
    assert requests.get(link, timeout=T).content == b"two"
    publish(url, owner, "dlo/seg/0")
    got = requests.get(link, timeout=T)
    assert got.status_code == 200 and got.content == b"one two"


def test_a_public_dlo_tells_nothing_of_the_private_names_under_its_prefix(pithos_server):
    """A writer of a published object points its manifest at a prefix of a private
    container: the link's answer is the same whether private objects are there or not (it
    was a 403 counting them, which spelled their names out prefix by prefix)."""
    url, writer, link = published_page_and_its_writer(pithos_server, "pub2", "vault2",
                                                      "passwords.kdbx")
    answers = []
    for prefix in ("vault2/pass", "vault2/none"):
        assert requests.put(f"{url}/pub2/page", data=b"", timeout=T, headers={
            **writer, "X-Object-Manifest": prefix}).status_code == 201
        got = requests.get(link, timeout=T)
        answers.append((got.status_code, got.content, got.headers.get("Content-Length")))
    assert answers[0] == answers[1] == (200, b"", "0")


def test_finding_14_a_public_slo_link_serves_content_not_the_manifest(pithos_server):
    url, owner = auth(pithos_server)
    requests.put(f"{url}/slo", headers=owner, timeout=T)
    seg = b"x" * (1024 * 1024)
    assert requests.put(f"{url}/slo/s1", data=seg, headers=owner, timeout=T).status_code == 201
    manifest = json.dumps([{"path": "/slo/s1"}])
    assert requests.put(f"{url}/slo/big?multipart-manifest=put", data=manifest, headers=owner,
                        timeout=T).status_code == 201
    link = publish(url, owner, "slo/big")
    got = requests.get(link, params={"multipart-manifest": "get"}, timeout=T)
    assert got.status_code == 200 and got.content == seg


# -- 2. one request stalls a worker -------------------------------------------------------------

def test_finding_2_a_far_offset_or_size_is_refused_before_any_zero_fill(pithos_server):
    url, h = auth(pithos_server)
    requests.put(f"{url}/far", headers=h, timeout=T)
    assert requests.put(f"{url}/far/o", data=b"abc", headers=h, timeout=T).status_code == 201
    for headers, body in (
            ({"Content-Range": "bytes 99999999999999999999999-99999999999999999999999/*"}, b"x"),
            ({"X-Object-Bytes": "1000000000000000000"}, b""),
            ({"Content-Range": "bytes 6000000000-6000000000/*"}, b"x")):
        r = requests.post(f"{url}/far/o", data=body, headers={**h, **headers}, timeout=T)
        assert r.status_code == 413, (headers, r.status_code, r.text)
        assert r.text.strip()  # with a reason
    # The same worker answers at once afterwards, and the object is as it was.
    got = requests.get(f"{url}/far/o", headers=h, timeout=T)
    assert got.status_code == 200 and got.content == b"abc"


# -- 3. negative sizes, and hashmap numbers that are no sizes (13) ------------------------------

def test_finding_3_and_13_hashmap_sizes_are_whole_numbers_in_range(pithos_server):
    url, h = auth(pithos_server)
    requests.put(f"{url}/hm", headers=h, timeout=T)
    before = requests.head(url, headers=h, timeout=T).headers["X-Account-Bytes-Used"]
    bad = [
        b'{"bytes": -5, "hashes": []}',
        b'{"bytes": -4194304, "hashes": []}',
        b'{"bytes": 1e999, "hashes": []}',
        b'{"bytes": 1.5, "hashes": []}',
        b'{"bytes": true, "hashes": []}',
        b'{"bytes": 0, "hashes": [], "block_size": 1e999}',
        b'{"bytes": 1, "hashes": ["' + b"00" * 32 + b'"], "lengths": ["x"]}',
        b'{"bytes": 1, "hashes": ["' + b"00" * 32 + b'"], "lengths": [-1]}',
        b'{"bytes": 2, "hashes": ["' + b"00" * 32 + b'"], "lengths": [5000000000]}',
        b'[' * 100_000 + b']' * 100_000,
    ]
    for body in bad:
        r = requests.put(f"{url}/hm/o?hashmap", data=body, headers=h, timeout=T)
        assert r.status_code == 400, (body[:60], r.status_code, r.text)
        assert r.text.strip()
    assert requests.head(f"{url}/hm/o", headers=h, timeout=T).status_code == 404
    assert requests.head(url, headers=h, timeout=T).headers["X-Account-Bytes-Used"] == before


# -- 6. failed logins block the event loop ------------------------------------------------------

def test_finding_6_a_login_derives_its_key_off_the_event_loop(tmp_path):
    """While a login's key derivation (scrypt) runs, the worker's other greenlets run: the
    derivation is on the thread pool, not on the hub.  (On the hub, the login would finish
    before the other greenlet ever ran.)"""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import gevent
        from pithos.catalog import Catalog
        from pithos.core.offload import Offload
        from pithos.identity import Identity

        catalog = Catalog("sqlite:///{tmp_path}/catalog.sqlite")
        identity = Identity(catalog, offload=Offload.gevent(2))
        identity.add_user("acct", "user", "right", admin=True)
        events = []
        def login(key):
            events.append("login " + str(identity.login("acct", "user", key) is not None))
        def other():
            events.append("other")
        logins = [gevent.spawn(login, "wrong"), gevent.spawn(login, "right")]
        gevent.sleep(0)  # both logins start and wait for their derivations
        gevent.spawn(other).join()
        gevent.joinall(logins)
        print(" ".join(events))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    events = done.stdout.split(" ", 1)
    assert events[0] == "other", done.stdout
    assert sorted(done.stdout.split()) == sorted(["other", "login", "False", "login", "True"])


def test_finding_6_the_server_gives_its_identity_the_thread_pool(tmp_path):
    import os

    from pithos.catalog import local_url
    from pithos.cli.serve import build_services
    from pithos.config import Storage

    data = str(tmp_path / "data")
    os.makedirs(data)
    services = build_services(Storage(data, "file://" + data + "/blocks", local_url(data)))
    assert services.identity.offload is not None and services.identity.offload.cooperative


# -- 7. a public link outlives its object ---------------------------------------------------------

def test_finding_7_a_public_link_dies_with_its_object(pithos_server):
    url, h = auth(pithos_server)
    requests.put(f"{url}/links", headers=h, timeout=T)
    assert requests.put(f"{url}/links/doc", data=b"public once", headers=h,
                        timeout=T).status_code == 201
    link = publish(url, h, "links/doc")
    assert requests.get(link, timeout=T).content == b"public once"
    assert requests.delete(f"{url}/links/doc", headers=h, timeout=T).status_code == 204
    assert requests.get(link, timeout=T).status_code == 404
    # A new, private object under the same name is not served by the old link.
    assert requests.put(f"{url}/links/doc", data=b"private now", headers=h,
                        timeout=T).status_code == 201
    assert requests.get(link, timeout=T).status_code == 404
    assert "X-Object-Public" not in requests.head(f"{url}/links/doc", headers=h,
                                                  timeout=T).headers


# -- 11. COPY's Destination skips name checks -----------------------------------------------------

def test_finding_11_copy_destinations_are_held_to_the_name_rules(pithos_server):
    from urllib.parse import quote

    url, h = auth(pithos_server)
    requests.put(f"{url}/cp", headers=h, timeout=T)
    assert requests.put(f"{url}/cp/src", data=b"data", headers=h, timeout=T).status_code == 201
    before = [o["name"] for o in requests.get(f"{url}/cp?format=json", headers=h,
                                                timeout=T).json()]
    for destination, status in ((f"cp/{'n' * 1100}", 400), ("cp/a%00b", 412),
                                ("cp/bad%ff%fe", 412), ("cp/", 412)):
        r = requests.request("COPY", f"{url}/cp/src", timeout=T,
                             headers={**h, "Destination": destination})
        assert r.status_code == status, (destination, r.status_code, r.text)
    after = [o["name"] for o in requests.get(f"{url}/cp?format=json", headers=h,
                                               timeout=T).json()]
    assert after == before
    # A good name still copies (non-ASCII included).
    name = quote("caf\u00e9")
    r = requests.request("COPY", f"{url}/cp/src", timeout=T,
                         headers={**h, "Destination": f"cp/{name}"})
    assert r.status_code == 201
    assert requests.get(f"{url}/cp/{name}", headers=h, timeout=T).content == b"data"


# -- 8. deleted objects stay readable to anonymous readers -----------------------------------------

def test_finding_8_history_needs_more_than_a_read_acl(pithos_server):
    url, owner = auth(pithos_server)
    _, writer = auth(pithos_server, "test:reader", "reading")
    requests.put(f"{url}/open", timeout=T,
                 headers={**owner, "X-Container-Read": ".r:*,.rlistings"})
    assert requests.put(f"{url}/open/doc", data=b"first, regretted", headers=owner,
                        timeout=T).status_code == 201
    v1 = requests.head(f"{url}/open/doc", headers=owner, timeout=T).headers["X-Object-Version"]
    assert requests.put(f"{url}/open/doc", data=b"second", headers=owner,
                        timeout=T).status_code == 201
    # Anyone reads the current version...
    assert requests.get(f"{url}/open/doc", timeout=T).content == b"second"
    # ...but not the history, by any of its three doors.
    for params in ({"version": "list"}, {"version": v1}, {"until": "1"}):
        r = requests.get(f"{url}/open/doc", params=params, timeout=T)
        assert r.status_code in (401, 403), (params, r.status_code)
        assert b"regretted" not in r.content
    assert requests.delete(f"{url}/open/doc", headers=owner, timeout=T).status_code == 204
    r = requests.get(f"{url}/open/doc", params={"version": v1}, timeout=T)
    assert r.status_code in (401, 403) and b"regretted" not in r.content
    # The owner sees it, and so does a user the owner lets write.
    assert requests.get(f"{url}/open/doc", params={"version": v1}, headers=owner,
                        timeout=T).content == b"first, regretted"
    requests.post(f"{url}/open", headers={**owner, "X-Container-Write": "test:reader"},
                  timeout=T)
    assert requests.get(f"{url}/open/doc", params={"version": v1}, headers=writer,
                        timeout=T).content == b"first, regretted"


# -- 13. 500 instead of 4xx --------------------------------------------------------------------

def raw(server, data: bytes) -> bytes:
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=T) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def test_finding_13_broken_chunked_framing_is_400(pithos_server):
    url, h = auth(pithos_server)
    requests.put(f"{url}/chunks", headers=h, timeout=T)
    path = url.split("127.0.0.1:", 1)[1].split("/", 1)[1]
    for target in (f"/{path}/chunks/o", f"/{path}/chunks?blocks"):
        method = "PUT" if target.endswith("/o") else "POST"
        for body in (b"zz\r\nhello\r\n0\r\n\r\n", b"5\r\nhelloXX0\r\n\r\n"):
            reply = raw(pithos_server, (
                f"{method} {target} HTTP/1.1\r\nHost: x\r\nX-Auth-Token: {h['X-Auth-Token']}\r\n"
                "Transfer-Encoding: chunked\r\n\r\n").encode() + body)
            status = int(reply.split(b" ", 2)[1])
            assert status == 400, (target, body, reply[:200])
    assert requests.head(f"{url}/chunks/o", headers=h, timeout=T).status_code == 404


def test_finding_13_deep_or_huge_json_numbers_are_400(pithos_server):
    url, h = auth(pithos_server)
    requests.put(f"{url}/js", headers=h, timeout=T)
    deep = b"[" * 100_000 + b"]" * 100_000
    assert requests.post(f"{url}/js?missing", data=deep, headers=h,
                         timeout=T).status_code == 400
    assert requests.put(f"{url}/js/slo?multipart-manifest=put", data=deep, headers=h,
                        timeout=T).status_code == 400
    assert requests.put(f"{url}/js/seg", data=b"x" * 10, headers=h, timeout=T).status_code == 201
    r = requests.put(f"{url}/js/slo?multipart-manifest=put", headers=h, timeout=T,
                     data=b'[{"path": "/js/seg", "size_bytes": 1e999}]')
    assert r.status_code == 400, r.text
    base = pithos_server.url
    r = requests.post(f"{base}/v3/auth/tokens", data=deep, timeout=T,
                      headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text  # a login is small: refused before it is parsed
    within = b"[" * 30_000 + b"]" * 30_000  # under the login's 64 KiB bound, still too deep
    r = requests.post(f"{base}/v3/auth/tokens", data=within, timeout=T,
                      headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    r = requests.post(f"{url}/js", headers={**h, "X-Container-Policy-Quota": str(2**63)},
                      timeout=T)
    assert r.status_code == 400, r.text


def test_finding_13_a_shared_directory_name_is_sent_percent_encoded(pithos_server):
    from urllib.parse import quote

    url, h = auth(pithos_server)
    requests.put(f"{url}/crlf", headers=h, timeout=T)
    name = "dir\r\nX-Injected: yes/"
    assert requests.put(f"{url}/crlf/{quote(name)}", data=b"", headers=h,
                        timeout=T).status_code == 201
    r = requests.post(f"{url}/crlf/{quote(name)}", timeout=T,
                      headers={**h, "X-Object-Sharing": "read=test2"})
    assert r.status_code in (202, 204), r.text
    assert requests.put(f"{url}/crlf/{quote(name)}file", data=b"x", headers=h,
                        timeout=T).status_code == 201
    r = requests.head(f"{url}/crlf/{quote(name)}file", headers=h, timeout=T)
    assert r.status_code == 200
    assert "X-Injected" not in r.headers
    assert r.headers["X-Object-Shared-By"] == quote(name, safe="/")


# -- 4 and 12. hashmap lengths are trusted; CPU amplification ----------------------------------

def test_findings_4_and_12_each_hashmap_entry_is_its_whole_block(pithos_server):
    import os

    url, h = auth(pithos_server)
    requests.put(f"{url}/ent", headers=h, timeout=T)
    big, small = os.urandom(4 * 1024 * 1024), b"ten bytes!"
    hashes = []
    for data in (big, small):
        r = requests.post(f"{url}/ent?blocks", data=data, headers=h, timeout=T)
        assert r.status_code == 200, r.text
        hashes += r.json()
    hb, hs = hashes
    before = requests.head(url, headers=h, timeout=T).headers["X-Account-Bytes-Used"]
    for doc in (
            # a 10-byte block claimed as 4 MiB: a GET would promise bytes it never sends
            {"bytes": 4194304, "hashes": [hs], "lengths": [4194304]},
            {"bytes": 4194304, "hashes": [hs]},
            # one 4 MiB block named 100 times for one byte each: 100 whole verifications
            {"bytes": 100, "hashes": [hb] * 100, "lengths": [1] * 100}):
        r = requests.put(f"{url}/ent/o?hashmap", data=json.dumps(doc), headers=h, timeout=T)
        assert r.status_code == 400, (doc["bytes"], r.status_code, r.text)
        assert r.text.strip()
    assert requests.head(f"{url}/ent/o", headers=h, timeout=T).status_code == 404
    assert requests.head(url, headers=h, timeout=T).headers["X-Account-Bytes-Used"] == before
    # Whole blocks make an object that reads back whole.
    doc = {"bytes": len(big) + len(small), "hashes": [hb, hs]}
    assert requests.put(f"{url}/ent/o?hashmap", data=json.dumps(doc), headers=h,
                        timeout=T).status_code == 201
    assert requests.get(f"{url}/ent/o", headers=h, timeout=T).content == big + small


# -- 9. sharing a plain object shares everything under it -----------------------------------------

def test_finding_9_only_a_directory_shares_what_is_under_it(pithos_server):
    url, owner = auth(pithos_server)
    _, other = auth(pithos_server, "test2:tester2", "testing2")
    requests.put(f"{url}/sh", headers=owner, timeout=T)
    put = {**owner, "Content-Type": "image/jpeg"}
    assert requests.put(f"{url}/sh/photo", data=b"shared", headers=put,
                        timeout=T).status_code == 201
    assert requests.put(f"{url}/sh/photo/private.jpg", data=b"private", headers=put,
                        timeout=T).status_code == 201
    r = requests.post(f"{url}/sh/photo", timeout=T,
                      headers={**owner, "X-Object-Sharing": "read=test2;write=test2"})
    assert r.status_code in (202, 204), r.text
    assert requests.get(f"{url}/sh/photo", headers=other, timeout=T).content == b"shared"
    r = requests.get(f"{url}/sh/photo/private.jpg", headers=other, timeout=T)
    assert r.status_code == 403 and b"private" not in r.content
    assert requests.put(f"{url}/sh/photo/planted", data=b"x", headers=other,
                        timeout=T).status_code == 403
    # A directory (a dir/ path, or an application/directory object) shares what is under it.
    assert requests.put(f"{url}/sh/album", data=b"", timeout=T,
                        headers={**owner, "Content-Type": "application/directory"}
                        ).status_code == 201
    assert requests.put(f"{url}/sh/album/1.jpg", data=b"one", headers=put,
                        timeout=T).status_code == 201
    requests.post(f"{url}/sh/album", headers={**owner, "X-Object-Sharing": "read=test2"},
                  timeout=T)
    assert requests.get(f"{url}/sh/album/1.jpg", headers=other, timeout=T).content == b"one"


# -- 14. a hashmap page that never ends -----------------------------------------------------------

def test_finding_14_hashmap_pages_are_bounded(pithos_server):
    url, h = auth(pithos_server)
    requests.put(f"{url}/pages", headers=h, timeout=T)
    requests.put(f"{url}/pages/o", data=b"x" * 100, headers=h, timeout=T)
    for params in ({"marker": "-5"}, {"limit": "-1"}, {"limit": "0"}, {"marker": "x"}):
        r = requests.get(f"{url}/pages/o", params={"hashmap": "", **params}, headers=h,
                         timeout=T)
        assert r.status_code == 400, (params, r.status_code, r.text)
    r = requests.get(f"{url}/pages/o", params={"hashmap": ""}, headers=h, timeout=T)
    assert r.status_code == 200 and "next" not in r.json() and len(r.json()["hashes"]) == 1


# -- 5. slowloris ---------------------------------------------------------------------------------

def test_finding_5_a_normal_client_is_served_beside_2000_stalled_connections(pithos_server):
    """2,000 connections (half of them without a token) that sent part of their headers or of
    a body and stalled: a normal client's GET is still answered."""
    import resource
    import socket

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    url, h = auth(pithos_server)
    requests.put(f"{url}/loris", headers=h, timeout=T)
    requests.put(f"{url}/loris/o", data=b"still here", headers=h, timeout=T)
    path = url.split("127.0.0.1:", 1)[1].split("/", 1)[1]
    stalled = []
    try:
        for i in range(2000):
            s = socket.create_connection(("127.0.0.1", pithos_server.port), timeout=T)
            if i % 2:
                s.sendall(b"GET /info HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # headers, stalled
            else:
                s.sendall((f"PUT /{path}/loris/s{i} HTTP/1.1\r\nHost: x\r\nX-Auth-Token: "
                           f"{h['X-Auth-Token']}\r\nContent-Length: 1000\r\n\r\npart").encode())
            stalled.append(s)
        got = requests.get(f"{url}/loris/o", headers=h, timeout=T)
        assert got.status_code == 200 and got.content == b"still here"
    finally:
        for s in stalled:
            s.close()


# -- 10. block grants are per account, not per user ------------------------------------------------

def test_finding_10_a_non_admin_user_names_only_blocks_it_sent_or_read(pithos_server):
    import os

    url, owner = auth(pithos_server)
    _, reader = auth(pithos_server, "test:reader", "reading")
    for c in ("vault", "drop"):
        requests.put(f"{url}/{c}", headers=owner, timeout=T)
    requests.post(f"{url}/drop", timeout=T, headers={
        **owner, "X-Container-Read": "test:reader", "X-Container-Write": "test:reader"})
    # Larger than an object kept inline (16 KiB): its block is in the block store.
    secret = os.urandom(30000)
    assert requests.put(f"{url}/vault/secret", data=secret, headers=owner,
                        timeout=T).status_code == 201
    doc = requests.get(f"{url}/vault/secret", params={"hashmap": ""}, headers=owner,
                       timeout=T).json()
    hashes = doc["hashes"]
    # The owner's account holds the block: the admin may name it...
    assert requests.post(f"{url}/drop?missing", data=json.dumps(hashes), headers=owner,
                         timeout=T).json() == []
    # ...but to a user without the right to read it, it is missing, as another account's.
    assert requests.post(f"{url}/drop?missing", data=json.dumps(hashes), headers=reader,
                         timeout=T).json() == hashes
    r = requests.put(f"{url}/drop/copy?hashmap", data=json.dumps(doc), headers=reader,
                     timeout=T)
    assert r.status_code == 409 and r.json() == hashes
    assert requests.get(f"{url}/drop/copy", headers=reader, timeout=T).status_code == 404
    # What the user sent itself, it may name.
    mine = os.urandom(20000)
    assert requests.put(f"{url}/drop/mine", data=mine, headers=reader,
                        timeout=T).status_code == 201
    own = requests.get(f"{url}/drop/mine", params={"hashmap": ""}, headers=reader,
                       timeout=T).json()
    assert requests.put(f"{url}/drop/again?hashmap", data=json.dumps(own), headers=reader,
                        timeout=T).status_code == 201
    assert requests.get(f"{url}/drop/again", headers=reader, timeout=T).content == mine


# -- 14. what a sharee of one object sees of the container; container names via segments ---------

def test_finding_14_a_sharee_sees_only_what_is_shared_with_it_of_the_container(pithos_server):
    url, owner = auth(pithos_server)
    _, sharee = auth(pithos_server, "test2:tester2", "testing2")
    assert requests.put(f"{url}/mixed", timeout=T, headers={
        **owner, "X-Container-Meta-Secret": "owner only",
        "X-Container-Policy-Quota": "1000000"}).status_code == 201
    for name, data in (("mine/a", b"12345"), ("others/b", b"x" * 70), ("plain", b"y" * 9),
                       ("team/x", b"abc"), ("team/hidden/y", b"z" * 11)):
        assert requests.put(f"{url}/mixed/{name}", data=data, headers=owner,
                            timeout=T).status_code == 201
    # team/ is shared with the sharee, but team/hidden/ (nearer) with someone else only.
    for path in ("team/", "team/hidden/"):
        assert requests.put(f"{url}/mixed/{path}", data=b"", timeout=T, headers={
            **owner, "Content-Type": "application/directory"}).status_code == 201
    for path, sharing in (("mine/a", "read=test2"), ("others/b", "read=test:reader"),
                          ("team/", "read=test2"), ("team/hidden/", "read=test:reader")):
        assert requests.post(f"{url}/mixed/{path}", timeout=T, headers={
            **owner, "X-Object-Sharing": sharing}).status_code == 202
    visible = {"mine/a": 5, "team/": 0, "team/x": 3}
    listed = requests.get(f"{url}/mixed", params={"format": "json"}, headers=sharee, timeout=T)
    assert listed.status_code == 200
    assert {e["name"]: e["bytes"] for e in listed.json()} == visible
    # Pseudo-directories: only those that lead to what is shared with the sharee.
    dirs = requests.get(f"{url}/mixed", params={"format": "json", "delimiter": "/"},
                        headers=sharee, timeout=T).json()
    assert sorted(e.get("subdir") or e["name"] for e in dirs) == ["mine/", "team/"]
    inner = requests.get(f"{url}/mixed", params={"format": "json", "delimiter": "/",
                                                 "prefix": "team/"}, headers=sharee,
                         timeout=T).json()
    assert sorted(e.get("subdir") or e["name"] for e in inner) == ["team/", "team/x"]
    for reply in (listed, requests.head(f"{url}/mixed", headers=sharee, timeout=T)):
        assert reply.status_code in (200, 204)
        assert reply.headers["X-Container-Object-Count"] == str(len(visible))
        assert reply.headers["X-Container-Bytes-Used"] == str(sum(visible.values()))
        leaked = [k for k in reply.headers
                  if k.lower().startswith(("x-container-meta-", "x-container-policy-",
                                           "x-container-read", "x-container-write"))]
        assert leaked == [], leaked
    # The owner sees the container whole; someone shared nothing is refused.
    full = requests.head(f"{url}/mixed", headers=owner, timeout=T)
    assert full.headers["X-Container-Object-Count"] == "7"
    assert full.headers["X-Container-Meta-Secret"] == "owner only"
    _, reader = auth(pithos_server, "test:reader", "reading")
    assert requests.head(f"{url}/mixed", headers=reader, timeout=T).status_code == 204
    requests.put(f"{url}/alone", headers=owner, timeout=T)
    assert requests.head(f"{url}/alone", headers=sharee, timeout=T).status_code == 403
    assert requests.head(f"{url}/alone", timeout=T).status_code == 401


def test_finding_14_segments_tell_nothing_of_container_names_the_caller_cannot_read(
        pithos_server):
    url, owner = auth(pithos_server)
    _, writer = auth(pithos_server, "test:reader", "reading")  # not admin: ACLs only
    for c in ("drop14", "vault14"):
        requests.put(f"{url}/{c}", headers=owner, timeout=T)
    requests.put(f"{url}/vault14/seg", data=b"secret", headers=owner, timeout=T)
    assert requests.post(f"{url}/drop14", timeout=T, headers={
        **owner, "X-Container-Read": "test:reader",
        "X-Container-Write": "test:reader"}).status_code == 204
    answers = {}
    for target in ("vault14", "no-such-container-14"):
        # A DLO naming the container...
        assert requests.put(f"{url}/drop14/dlo-{target}", data=b"", timeout=T, headers={
            **writer, "X-Object-Manifest": f"{target}/"}).status_code == 201
        got = requests.get(f"{url}/drop14/dlo-{target}", headers=writer, timeout=T)
        copied = requests.put(f"{url}/drop14/copy-{target}", data=b"", timeout=T, headers={
            **writer, "X-Copy-From": f"drop14/dlo-{target}"})
        # ...and an SLO naming a segment in it.
        slo = requests.put(f"{url}/drop14/slo-{target}?multipart-manifest=put", timeout=T,
                           data=json.dumps([{"path": f"/{target}/seg"}]), headers=writer)
        answers[target] = (got.status_code, copied.status_code, slo.status_code,
                           slo.text.replace(target, "C"))
    assert answers["vault14"] == answers["no-such-container-14"], answers
    assert answers["vault14"][:3] == (403, 403, 400)
    # Who may read the account (its admin) still gets an empty DLO for a missing container.
    got = requests.get(f"{url}/drop14/dlo-no-such-container-14", headers=owner, timeout=T)
    assert got.status_code == 200 and got.content == b""


# -- found by tests/test_schemathesis.py -------------------------------------------------------

def test_schemathesis_a_refused_post_neither_publishes_nor_shares(pithos_server):
    """A POST that publishes (or shares) and also carries a bad Content-Range or bad
    metadata was refused (416, 400) after the object had been published: refused, yet
    half-written."""
    url, owner = auth(pithos_server)
    requests.put(f"{url}/refused", headers=owner, timeout=T)
    assert requests.put(f"{url}/refused/o", data=b"hello", headers=owner,
                        timeout=T).status_code == 201
    for bad in ({"Content-Range": "bytes x-y/*"}, {"X-Object-Bytes": "-1"},
                {"X-Object-Meta-" + "k" * 200: "v"},
                {"X-Object-Meta-K": "v", "X-Delete-At": "soon"}):
        r = requests.post(f"{url}/refused/o", timeout=T, headers={
            **owner, **bad, "X-Object-Public": "true", "X-Object-Sharing": "read=test2"})
        assert r.status_code in (400, 416), (bad, r.status_code, r.text)
        head = requests.head(f"{url}/refused/o", headers=owner, timeout=T)
        assert "X-Object-Public" not in head.headers, bad
        assert "X-Object-Sharing" not in head.headers, bad
    # The same request without the bad header does both.
    r = requests.post(f"{url}/refused/o", timeout=T, headers={
        **owner, "X-Object-Meta-K": "v", "X-Object-Public": "true",
        "X-Object-Sharing": "read=test2"})
    assert r.status_code == 202 and r.headers["X-Object-Public"]
    head = requests.head(f"{url}/refused/o", headers=owner, timeout=T)
    assert head.headers["X-Object-Sharing"] == "read=test2" and head.headers["X-Object-Meta-K"]


def test_schemathesis_a_keystone_login_naming_its_project_or_user_id_by_a_list_is_400(
        pithos_server):
    """A project name or id, or a user id, that is not a string reached the catalog as a
    query parameter: 503 'the catalog failed: Error binding parameter'."""
    def body(project=None, user_id=None):
        user = {"name": "tester", "password": "testing"}
        if user_id is not None:
            user["id"] = user_id
        doc = {"auth": {"identity": {"methods": ["password"], "password": {"user": user}}}}
        if project is not None:
            doc["auth"]["scope"] = {"project": project}
        return doc

    for doc in (body({"name": ["test"]}), body({"id": {"a": 1}}), body(user_id=[1]),
                body({"name": 5})):
        r = requests.post(f"{pithos_server.url}/v3/auth/tokens", json=doc, timeout=T)
        assert r.status_code == 400 and r.text.strip(), (doc, r.status_code, r.text)
    r = requests.post(f"{pithos_server.url}/v3/auth/tokens", json=body({"name": "test"}),
                      timeout=T)
    assert r.status_code == 201 and r.headers["X-Subject-Token"]


def test_a_content_type_past_its_column_is_400_before_the_body_is_read(pithos_server):
    """A Content-Type the catalog cannot keep (over 256 characters) is refused from the
    request's head: the server answers while the client still owes it a GiB of body (a
    refusal at the commit would first store it all)."""
    import socket

    url, h = auth(pithos_server)
    requests.put(f"{url}/ctype", headers=h, timeout=T)
    path = url.split("127.0.0.1:", 1)[1].split("/", 1)[1]
    with socket.create_connection(("127.0.0.1", pithos_server.port), timeout=T) as s:
        s.sendall((f"PUT /{path}/ctype/o HTTP/1.1\r\nHost: x\r\n"
                   f"X-Auth-Token: {h['X-Auth-Token']}\r\nContent-Type: x/{'y' * 300}\r\n"
                   f"Content-Length: {1 << 30}\r\n\r\n").encode() + b"z" * 65536)
        reply = s.recv(65536)  # (a timeout here: the server waited for the body)
    assert reply.split(b" ", 2)[1] == b"400" and b"Content-Type longer than 256" in reply, \
        reply[:300]
    assert requests.head(f"{url}/ctype/o", headers=h, timeout=T).status_code == 404


def test_review_a_target_that_is_not_a_path_is_412_not_500(pithos_server):
    # OPTIONS * (asterisk form) and an absolute-form target with no path reach the app with a
    # path of "*" or "": the unknown-route handler split it and crashed (500).
    for line in (b"OPTIONS * HTTP/1.1", b"GET http://x HTTP/1.1", b"GET http://x?a HTTP/1.1"):
        reply = raw(pithos_server, line + b"\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert reply.split(b" ", 2)[1] == b"412" and b"Bad URL" in reply, (line, reply[:300])


def _statuses(reply: bytes) -> list[int]:
    import re

    return [int(m) for m in re.findall(rb"HTTP/1\.[01] (\d{3}) ", reply)]


def test_review_hostile_heads_get_gunicorns_answers_from_the_worker(pithos_server):
    # pithos serve's own request-head parser (pithos/cli/serve_parse.py) in front of
    # gunicorn's: each head gets the answer gunicorn's parser alone gives it (checked
    # against a server without ours), none a 5xx, none a wait.
    url, h = auth(pithos_server)
    path = url.split("127.0.0.1:", 1)[1].split("/", 1)[1]
    requests.put(f"{url}/heads", headers=h, timeout=T)
    a = f"Host: x\r\nX-Auth-Token: {h['X-Auth-Token']}\r\n".encode()
    put = f"PUT /{path}/heads/o HTTP/1.1\r\n".encode() + a
    get = f"GET /{path}/heads HTTP/1.1\r\n".encode() + a
    cases = [
        (put + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", [400]),
        (put + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", [400]),
        (put + b"Content-Length: 3, 3\r\n\r\nabc", [400]),
        (put + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", [400]),
        (put + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", [400]),
        (put.replace(b"HTTP/1.1", b"HTTP/1.0") + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
         [400]),
        (get + b"X-A: a\r\n b\r\n\r\n", [400]),
        (get + b"X-A: a\nX-B: b\r\n\r\n", [400]),
        (get + b"X-A: a\rb\r\n\r\n", [400]),
        (get + b"X-A: a\x00b\r\n\r\n", [400]),
        (get + b"X-\x01A: b\r\n\r\n", [400]),
        (get + b"Host: y\r\n\r\n", [400]),
        (get + b"X-A: " + b"a" * 9000 + b"\r\n\r\n", [400]),
        (get + b"".join(b"X-H%d: v\r\n" % i for i in range(120)) + b"\r\n", [400]),
        (get + b"Expect: 200-ok\r\n\r\n", [417]),
        (b"get /info HTTP/1.1\r\nHost: x\r\n\r\n", [400]),
        (b"GET /info HTTP/2.0\r\nHost: x\r\n\r\n", [400]),
        (f"PUT /{path}/heads/\xff HTTP/1.1\r\n".encode("latin-1") + a
         + b"Content-Length: 0\r\nConnection: close\r\n\r\n", [412]),
        (f"PUT /{path}/heads/\u00e9 HTTP/1.1\r\n".encode() + a + b"Content-Length: 2\r\n\r\nhi"
         + f"GET /{path}/heads/%C3%A9 HTTP/1.1\r\n".encode() + a
         + b"Connection: close\r\n\r\n", [201, 200]),
        (b"GET /info HTTP/1.1\r\nHost: x\r\n\r\n" + get + b"\r\n"
         + b"GET /info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", [200, 200, 200]),
        (b"GET /info HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /info HTTP/1.0\r\n\r\n",
         [200, 200]),
    ]
    for data, expected in cases:
        reply = raw(pithos_server, data)
        got = _statuses(reply)
        assert got == expected, (data[:120], reply[:300])


def test_ranges_past_swifts_bounds_are_416(pithos_server):
    """A multipart range request multiplies what one request costs: more than 50 ranges,
    more than 2 overlaps, or 8 or more out of order are refused as Swift refuses them (416);
    a 3 MiB object asked 100 times over was a 300 MiB answer."""
    url, h = auth(pithos_server)
    requests.put(f"{url}/ranges", headers=h, timeout=T)
    body = bytes(range(256)) * 40
    assert requests.put(f"{url}/ranges/o", data=body, headers=h, timeout=T).status_code == 201

    def get(spec: str) -> requests.Response:
        return requests.get(f"{url}/ranges/o", headers={**h, "Range": f"bytes={spec}"},
                            timeout=T)

    for spec in (",".join(["0-"] * 100), ",".join(f"{i}-{i}" for i in range(51)),
                 "0-10,5-15,8-20,9-30", ",".join(f"{i}-{i}" for i in range(8, 0, -1))):
        r = get(spec)
        assert r.status_code == 416 and r.headers["Content-Range"] == f"bytes */{len(body)}"
    # Within them: served.
    r = get(",".join(f"{i}-{i}" for i in range(50)))
    assert r.status_code == 206 and r.headers["Content-Type"].startswith("multipart/byteranges")
    assert get("0-10,5-15,20-30,25-35").status_code == 206  # (two overlaps)
    assert get(",".join(f"{i}-{i}" for i in range(7, 0, -1))).status_code == 206
    r = get("100-199")
    assert r.status_code == 206 and r.content == body[100:200]

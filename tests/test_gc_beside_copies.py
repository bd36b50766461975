"""Writers that make an object without sending its bytes, or from a body the server unpacks,
against `pithos gc` in a loop (tests/test_gc_stress.py's collector: back to back, a clock margin
of 0): server-side copies and moves (COPY, PUT with X-Copy-From, PUT with X-Move-From), each
racing a DELETE of its source, archive extraction (PUT ?extract-archive) and form uploads
(Swift's FormPOST).  A copy names blocks it never wrote, so the only thing between them and the
sweep, once the source is gone, is the writer protocol; what was acknowledged must read back
byte for byte and fsck must be clean afterwards.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import io
import json
import random
import tarfile
import threading
import time

from tests.conftest import PithosServer
from tests.test_gc_stress import Client, MiB, assert_fsck_clean, check_http, gc_loop, login

# Pithos keeps a deleted object's history by default; without it a DELETE makes garbage.
NO_HISTORY = {"X-Container-Policy-Versioning": "none"}
SIZES = (0, 3000, 70_000, 4 * MiB + 5, 9 * MiB + 3)


def copy_request(client: Client, how: str, src: str, dst: str) -> int:
    """One server-side copy of /src to /dst in one of Swift's three spellings."""
    if how == "COPY":
        return client.request("COPY", src, headers={"Destination": dst.lstrip("/")})[0]
    header = "X-Copy-From" if how == "copy-from" else "X-Move-From"
    return client.request("PUT", dst, b"", {header: src, "Content-Length": "0"})[0]


def test_copies_and_moves_racing_deletes_of_their_source_with_gc_in_a_loop(tmp_path):
    server = PithosServer(tmp_path / "data", workers=2)
    try:
        client = Client(server, login(server))
        for name in ("/src", "/dst"):
            assert client.request("PUT", name, headers=NO_HISTORY)[0] == 201
        acknowledged: dict[str, bytes] = {}
        lock = threading.Lock()
        outcomes: dict[str, int] = {}
        unexpected: list[str] = []

        def writer(i: int) -> None:
            rng = random.Random(100 + i)
            for n in range(10):
                data = rng.randbytes(rng.choice(SIZES))
                src, dst = f"/src/w{i}-{n}", f"/dst/w{i}-{n}"
                if client.request("PUT", src, data)[0] != 201:
                    unexpected.append(f"PUT {src} failed")
                    continue
                how = ("COPY", "copy-from", "move-from")[(i + n) % 3]
                # The source's DELETE lands a moment before, during or after the copy: when
                # the copy wins it owns blocks nobody else names once the DELETE commits.
                deleter = threading.Timer(rng.uniform(0, 0.05),
                                          lambda s=src: client.request("DELETE", s))
                deleter.start()
                status = copy_request(client, how, src, dst)
                deleter.join()
                with lock:
                    outcomes[how] = outcomes.get(how, 0) + (status == 201)
                    if status == 201:
                        acknowledged[dst] = data
                    elif status not in (404, 409):
                        # Losing the race to the DELETE is a clear 404 (the source was gone)
                        # or 409 (it went while the copy committed: retry); never a 5xx.
                        unexpected.append(f"{how} {dst}: {status}")
                if n and rng.random() < 0.3:
                    # Garbage for the collector: an earlier copy goes.
                    old = f"/dst/w{i}-{rng.randrange(n)}"
                    if client.request("DELETE", old)[0] == 204:
                        with lock:
                            acknowledged.pop(old, None)
                # A pause as long as a collector run: the moved/copied object's blocks
                # are only the copy's now.
                time.sleep(rng.uniform(0, 0.6))

        with gc_loop(server.storage_flags) as reports:
            threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert any(r["reclaimed_blocks"] for r in reports), "the collector never swept"
        # Every spelling was acknowledged at least once (the race did not always go to the
        # DELETE), and everything acknowledged reads back whole.
        assert unexpected == []
        assert set(outcomes) == {"COPY", "copy-from", "move-from"}
        assert all(outcomes.values()), outcomes
        check_http([client], acknowledged)
        assert_fsck_clean(server.storage_flags)
    finally:
        server.stop()


def tar_of(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


FORM_KEY = "gc-form-key"
BOUNDARY = "----gcformboundary"


def form_upload(client: Client, prefix: str, files: dict[str, bytes]) -> int:
    """A signed FormPOST of `files` under /form/`prefix` (no token: the signature is the
    authority)."""
    path = f"/v1/AUTH_test/form/{prefix}"
    expires = int(time.time()) + 600
    max_size = max(len(d) for d in files.values()) + 1
    sig = hmac.new(FORM_KEY.encode(), f"{path}\n\n{max_size}\n{len(files)}\n{expires}".encode(),
                   hashlib.sha256).hexdigest()
    fields = {"redirect": "", "max_file_size": str(max_size),
              "max_file_count": str(len(files)), "expires": str(expires), "signature": sig}
    body = b"".join(f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n"
                    f"{v}\r\n".encode() for k, v in fields.items())
    for i, (name, data) in enumerate(files.items()):
        body += (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"f{i}\"; "
                 f"filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                 ).encode() + data + b"\r\n"
    body += f"--{BOUNDARY}--\r\n".encode()
    conn = http.client.HTTPConnection("127.0.0.1", client.server.port, timeout=120)
    try:
        conn.request("POST", path, body=body,
                     headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
        reply = conn.getresponse()
        reply.read()
        return reply.status
    finally:
        conn.close()


def test_archive_extraction_and_form_uploads_with_gc_in_a_loop(tmp_path):
    """Each archive and form repeats content of objects deleted just before (dedup against
    blocks that are garbage that instant), so a block the collector is about to sweep is the
    one a new object names."""
    server = PithosServer(tmp_path / "data", workers=2)
    try:
        client = Client(server, login(server))
        assert client.request("PUT", "/bulk", headers=NO_HISTORY)[0] == 201
        assert client.request("PUT", "/form", headers={
            "X-Container-Meta-Temp-URL-Key": FORM_KEY, **NO_HISTORY})[0] == 201
        rng = random.Random(21)
        acknowledged: dict[str, bytes] = {}
        with gc_loop(server.storage_flags) as reports:
            for n in range(6):
                files = {f"a{n}/f{k}": rng.randbytes(rng.choice(SIZES[1:])) for k in range(3)}
                # The same content first as plain objects, deleted: garbage for the collector.
                for name, data in files.items():
                    assert client.request("PUT", f"/bulk/old-{name}", data)[0] == 201
                for name in files:
                    assert client.request("DELETE", f"/bulk/old-{name}")[0] == 204
                # And garbage nothing names again, so that the collector surely sweeps.
                assert client.request("PUT", f"/bulk/junk{n}", rng.randbytes(70_000))[0] == 201
                assert client.request("DELETE", f"/bulk/junk{n}")[0] == 204
                time.sleep(rng.uniform(0, 0.6))
                status, body = client.request("PUT", "/bulk?extract-archive=tar.gz",
                                              tar_of(files), {"Accept": "application/json"})
                assert status == 200, body
                report = json.loads(body)
                assert report["Number Files Created"] == 3, report
                acknowledged.update({f"/bulk/{k}": v for k, v in files.items()})

                form_files = {f"g{n}-{k}": rng.randbytes(rng.choice((3000, 70_000)))
                              for k in range(2)}
                for name, data in form_files.items():
                    assert client.request("PUT", f"/form/old-{name}", data)[0] == 201
                    assert client.request("DELETE", f"/form/old-{name}")[0] == 204
                time.sleep(rng.uniform(0, 0.6))
                assert form_upload(client, f"up{n}/", form_files) == 201
                acknowledged.update({f"/form/up{n}/{k}": v for k, v in form_files.items()})
        assert any(r["reclaimed_blocks"] for r in reports), "the collector never swept"
        check_http([client], acknowledged)
        assert_fsck_clean(server.storage_flags)
    finally:
        server.stop()

"""Swift's form uploads (pithos/api/formpost.py) against a live `pithos serve`, raw HTTP and
a raw socket: signed forms, their limits, Swift's answers, and forms that never end or never
stop growing (refused with 400 after a bounded read, never a hang)."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import socket
import time

import pytest

from tests.swift_helpers import Login, login, request

KEY = "form-key"
BOUNDARY = "----pithosformboundary"


@pytest.fixture(scope="module")
def me(pithos_server) -> Login:
    me = login(pithos_server)
    assert request(pithos_server, "PUT", f"{me.path}/fp", token=me.token,
                   headers={"X-Container-Meta-Temp-URL-Key": KEY}).status == 201
    assert request(pithos_server, "PUT", f"{me.path}/fp2", token=me.token).status == 201
    return me


def sign(path: str, redirect: str = "", max_size: int = 1024, max_count: int = 2,
         expires: int | None = None, key: str = KEY) -> dict[str, str]:
    expires = expires if expires is not None else int(time.time()) + 600
    sig = hmac.new(key.encode(), f"{path}\n{redirect}\n{max_size}\n{max_count}\n{expires}"
                   .encode(), hashlib.sha256).hexdigest()
    return {"redirect": redirect, "max_file_size": str(max_size),
            "max_file_count": str(max_count), "expires": str(expires), "signature": sig}


def form(fields: dict[str, str], files: list[tuple[str, bytes]]) -> bytes:
    out = b""
    for k, v in fields.items():
        out += (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
                ).encode()
    for i, (name, data) in enumerate(files):
        out += (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file{i}\"; "
                f"filename=\"{name}\"\r\nContent-Type: text/plain\r\n\r\n").encode()
        out += data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def post(server, path: str, body: bytes):
    return request(server, "POST", path, body=body,
                   headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})


def test_upload_two_files_with_prefix(pithos_server, me):
    path = f"{me.path}/fp/up/"
    r = post(pithos_server, path, form(sign(path), [("a.txt", b"AAA"), ("b.txt", b"B\r\nB")]))
    assert r.status == 201 and r.body == b"201 Created"
    got = request(pithos_server, "GET", f"{path}a.txt", token=me.token)
    assert got.body == b"AAA" and got.headers["content-type"] == "text/plain"
    assert request(pithos_server, "GET", f"{path}b.txt", token=me.token).body == b"B\r\nB"


def test_redirect(pithos_server, me):
    path = f"{me.path}/fp"
    r = post(pithos_server, path, form(sign(path, redirect="https://x.test/done?a=1"),
                                       [("r.txt", b"r")]))
    assert r.status == 303
    assert r.headers["location"] == "https://x.test/done?a=1&status=201&message="
    assert request(pithos_server, "GET", f"{path}/r.txt", token=me.token).body == b"r"


@pytest.mark.parametrize("case,status,body", [
    ("bad-signature", 401, b"FormPost: Invalid Signature"),
    ("expired", 401, b"FormPost: Form Expired"),
    ("other-container", 401, b"FormPost: Invalid Signature"),
    ("too-big", 400, b"FormPost: max_file_size exceeded"),
    ("too-many", 400, b"400 Bad Request\r\nFormPost: Max File Count Exceeded"),
    ("no-files", 400, b"400 Bad Request\r\nFormPost: No Files To Process"),
])
def test_refusals(pithos_server, me, case, status, body):
    path = f"{me.path}/fp"
    fields = sign(path, max_size=10, max_count=1)
    files = [("x", b"x")]
    if case == "bad-signature":
        fields["signature"] = "0" * 64
    elif case == "expired":
        fields = sign(path, max_size=10, max_count=1, expires=int(time.time()) - 10)
    elif case == "other-container":
        path = f"{me.path}/fp2"
    elif case == "too-big":
        files = [("big", b"x" * 11)]
    elif case == "too-many":
        files = [("one", b"1"), ("two", b"2")]
    elif case == "no-files":
        files = []
    r = post(pithos_server, path, form(fields, files))
    assert (r.status, r.body) == (status, body)
    if case in ("bad-signature", "expired", "too-big"):
        assert request(pithos_server, "HEAD", f"{path}/{files[0][0]}", token=me.token
                       ).status == 404


def test_bad_starting_boundary(pithos_server, me):
    r = post(pithos_server, f"{me.path}/fp", b"x" * 200000)
    assert r.status == 400 and r.body == b"FormPost: invalid starting boundary"


def _endless(server, path: str, head: bytes, filler: bytes) -> tuple[int, bytes]:
    """Send a chunked form that would never end; the answer must come anyway."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                  f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n".encode())
        s.sendall(b"%x\r\n%s\r\n" % (len(head), head))
        got = b""
        try:
            for _ in range(2000):  # up to ~130 MB: far past every limit
                s.sendall(b"%x\r\n%s\r\n" % (len(filler), filler))
                s.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    got += s.recv(65536)
                s.setblocking(True)
                if b"\r\n\r\n" in got:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
        s.settimeout(30)
        while b"\r\n\r\n" not in got:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        head_text, _, body = got.partition(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head_text.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length and (chunk := s.recv(65536)):
            body += chunk
    return int(head_text.split(b" ", 2)[1]), body


def test_endless_field_is_refused(pithos_server, me):
    path = f"{me.path}/fp"
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"redirect\"\r\n\r\n"
            ).encode()
    status, body = _endless(pithos_server, path, head, b"y" * 65536)
    assert status == 400 and body.startswith(b"FormPost: a form field is too long")


def test_endless_file_is_refused(pithos_server, me):
    path = f"{me.path}/fp"
    fields = sign(path, max_size=1 << 20, max_count=1)
    head = form(fields, []).rsplit(f"--{BOUNDARY}--".encode(), 1)[0]
    head += (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"f\"; "
             f"filename=\"endless\"\r\n\r\n").encode()
    status, body = _endless(pithos_server, path, head, b"z" * 65536)
    assert status == 400 and body.startswith(b"FormPost: max_file_size exceeded")
    assert request(pithos_server, "HEAD", f"{path}/endless", token=me.token).status == 404


def test_refused_file_is_not_read_to_its_end(pithos_server, me):
    # A file the form may not write (a name too long): refused at once, though it never ends.
    path = f"{me.path}/fp"
    fields = sign(path, max_size=1 << 30, max_count=1)
    head = form(fields, []).rsplit(f"--{BOUNDARY}--".encode(), 1)[0]
    head += (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"f\"; "
             f"filename=\"{'n' * 2000}\"\r\n\r\n").encode()
    status, body = _endless(pithos_server, path, head, b"z" * 65536)
    assert status == 400 and body.startswith(b"400 Bad Request")


def test_info_lists_formpost(pithos_server):
    assert "sha256" in request(pithos_server, "GET", "/info").json()["formpost"][
        "allowed_digests"]

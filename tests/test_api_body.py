"""Reading request bodies straight from gunicorn's socket (pithos/api/body.py)."""

import io
import os
import socket
import threading

import pytest
from gunicorn.http.body import Body, ChunkedReader, LengthReader
from gunicorn.http.unreader import SocketUnreader

from pithos.api.body import SocketBody, request_body


def gunicorn_body(sock, length, buffered=b"", body_buffered=b""):
    unreader = SocketUnreader(sock)
    unreader.buf.write(buffered)  # received with the headers, not yet taken
    reader = LengthReader(unreader, length - len(body_buffered))
    body = Body(reader)
    body.buf.write(body_buffered)  # already taken from the reader
    return body, unreader


@pytest.mark.parametrize("buffered,body_buffered", [(0, 0), (100, 0), (5000, 37), (0, 37)])
def test_reads_the_body_exactly_and_leaves_the_next_request(buffered, body_buffered):
    data = os.urandom(300_000)
    next_request = b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n"
    server, client = socket.socketpair()
    try:
        body, unreader = gunicorn_body(
            server, len(data), buffered=data[body_buffered:body_buffered + buffered],
            body_buffered=data[:body_buffered])
        # From a thread: the socket buffer holds less than the body.
        sender = threading.Thread(
            target=client.sendall, args=(data[body_buffered + buffered:] + next_request,))
        sender.start()
        stream = request_body({"wsgi.input": body, "gunicorn.socket": server})
        assert isinstance(stream, SocketBody)
        got = bytearray()
        for size in (1, 4096, 65_536, 10**6):
            got += stream.read(size)
        assert bytes(got) == data
        assert stream.read(10) == b""
        # gunicorn finds the connection where the next request starts.
        assert body.reader.length == 0 and body.read() == b""
        assert unreader.read(len(next_request)) == next_request
        sender.join()
    finally:
        server.close()
        client.close()


def test_a_client_gone_mid_body_gives_a_short_read():
    server, client = socket.socketpair()
    try:
        body, _ = gunicorn_body(server, 1000)
        client.sendall(b"x" * 400)
        client.close()
        stream = request_body({"wsgi.input": body, "gunicorn.socket": server})
        assert len(stream.read(1000)) == 400
    finally:
        server.close()


def test_other_bodies_are_read_through_the_wsgi_input():
    plain = io.BytesIO(b"abc")
    assert request_body({"wsgi.input": plain}) is plain
    server, client = socket.socketpair()
    try:
        chunked = Body(ChunkedReader(None, SocketUnreader(server)))
        assert request_body({"wsgi.input": chunked, "gunicorn.socket": server}) is chunked
    finally:
        server.close()
        client.close()

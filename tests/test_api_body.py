"""Reading request bodies straight from gunicorn's socket (pithos/api/body.py)."""

import io
import os
import socket
import threading
from collections import deque

import pytest
from gunicorn.http.body import Body, ChunkedReader, LengthReader
from gunicorn.http.unreader import SocketUnreader

from pithos.api.body import PieceBuffers, SocketBody, request_body


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


@pytest.mark.parametrize("pooled", [False, True])
def test_a_client_gone_mid_body_gives_a_short_read(pooled):
    server, client = socket.socketpair()
    try:
        body, _ = gunicorn_body(server, 1000)
        client.sendall(b"x" * 400)
        client.close()
        pool = PieceBuffers(1000, keep=2) if pooled else None
        stream = request_body({"wsgi.input": body, "gunicorn.socket": server}, pool)
        assert stream.read(1000) == b"x" * 400
        if pool is not None:
            assert len(pool.take()) == 1000  # (a copy was returned: the buffer kept its size)
    finally:
        server.close()
        client.close()


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


def test_piece_buffers_are_reused_only_once_nothing_refers_to_them():
    def is_one_of(buf, *others):
        return any(buf is o for o in others)

    pool = PieceBuffers(64, keep=3)
    a = pool.take()
    a_id = id(a)
    b = pool.take()
    assert b is not a
    del a
    a = pool.take()
    assert id(a) == a_id  # the pool alone held it
    # Whatever still holds a buffer keeps it out of use: a view, a queue, a list.
    view = memoryview(b)
    queued = deque([a])
    del a
    c = pool.take()
    assert not is_one_of(c, queued[0], b)
    assert len(pool) == 3
    d = pool.take()  # every kept buffer in use: a fresh one, not kept
    assert not is_one_of(d, queued[0], b, c) and len(pool) == 3
    del d
    assert not is_one_of(pool.take(), queued[0], b, c) and len(pool) == 3
    b_id = id(b)
    del b
    assert not is_one_of(pool.take(), queued[0], c)  # the view still holds b
    view.release()
    del view
    assert id(pool.take()) == b_id
    a = queued.popleft()
    assert not is_one_of(pool.take(), a, c)
    del a
    assert id(pool.take()) == a_id and len(pool) == 3


def test_pieces_read_into_reused_buffers_keep_their_content_while_held():
    piece = 4096
    data = os.urandom(piece * 40 + 123)
    server, client = socket.socketpair()
    try:
        body, _ = gunicorn_body(server, len(data))
        sender = threading.Thread(target=client.sendall, args=(data,))
        sender.start()
        pool = PieceBuffers(piece, keep=8)
        stream = request_body({"wsgi.input": body, "gunicorn.socket": server}, pool)
        held = deque()
        got = []
        while True:
            chunk = stream.read(piece)
            if not chunk:
                break
            held.append(chunk)
            if len(held) > 5:  # like the MD5 queue: a few pieces held, the oldest let go
                got.append(bytes(held.popleft()))
        got.extend(bytes(c) for c in held)
        sender.join()
        assert b"".join(got) == data
        assert len(pool) <= 8
    finally:
        server.close()
        client.close()

"""A chunked request body's parse shares the worker's event loop (pithos.api.body,
`_share_the_loop`): gunicorn parses chunk after chunk on the loop, and a body of one-byte
chunks that never makes a read wait on the socket kept every other request of the worker
waiting until it ended.  Checked on gunicorn's own chunked reader, fed from memory (every
byte available at once, as from a client that keeps the buffers full), under gevent in a
process of its own: another greenlet must run while the body is read."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    from gevent import monkey
    monkey.patch_all()
    import gevent
    from gunicorn.http.body import Body, ChunkedReader
    from gunicorn.http.unreader import IterUnreader
    from pithos.api import body

    class Request:
        trailers = None
        must_close = False

    CHUNKS = 200_000
    wire = b"1\\r\\nx\\r\\n" * CHUNKS + b"0\\r\\n\\r\\n"
    pieces = [wire[i:i + 8192] for i in range(0, len(wire), 8192)]
    stream = Body(ChunkedReader(Request(), IterUnreader(pieces)))
    ticks = []

    def other_request():
        while True:
            ticks.append(1)
            gevent.sleep(0)

    gevent.spawn(other_request)
    gevent.sleep(0)
    before = len(ticks)
    body.timed_body({"wsgi.input": stream}, None)  # (no socket: not timed, only shared)
    got = stream.read(CHUNKS + 1)
    print(len(got), got == b"x" * CHUNKS, len(ticks) - before)
""")


def test_a_body_of_one_byte_chunks_lets_other_greenlets_run():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    size, intact, ran = int(out[0]), out[1] == "True", int(out[2])
    assert size == 200_000 and intact
    # The parse took far more than one slice (CHUNKS_SLICE_S): the other greenlet ran in it.
    assert ran >= 2, out

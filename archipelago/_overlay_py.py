"""Pure-Python twin of native/overlay.pyx: the hot path of a volume and of the NBD server.

Both implementations must give identical results; tests/test_archipelago_twins.py compares them
with hypothesis.  `archipelago.overlay` picks the native one when it is built.

The overlay bitmap has one bit per sector of a volume: set means "this sector's content is in
the volume's delta file", clear means "read it from the base map".  Bit `i` is bit `i & 7`
(least significant first) of byte `i >> 3`.

NBD wire formats (big-endian, from the NBD protocol document):

    request       magic u32 (0x25609513) | flags u16 | type u16 | handle u64 | offset u64 |
                  length u32                                                     28 bytes
    simple reply  magic u32 (0x67446698) | error u32 | handle u64               16 bytes
"""

from __future__ import annotations

import os
import socket
import struct
import time

REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
# recv_spin stops when one try took longer than this: the CPU went to another task.
SPIN_GAP_NS = 20_000
REQUEST = struct.Struct(">IHHQQI")
REPLY = struct.Struct(">IIQ")

_POPCOUNT = bytes(bin(i).count("1") for i in range(256))


def parse_request(header: bytes | bytearray | memoryview) -> tuple[int, int, int, int, int]:
    """(flags, type, handle, offset, length) of a 28-byte request header.  ValueError when the
    header is short or its magic is wrong (the stream is then out of step: hang up)."""
    if len(header) != REQUEST.size:
        raise ValueError(f"request header of {len(header)} bytes")
    magic, flags, type_, handle, offset, length = REQUEST.unpack(header)
    if magic != REQUEST_MAGIC:
        raise ValueError(f"bad request magic {magic:#x}")
    return flags, type_, handle, offset, length


def simple_reply(error: int, handle: int) -> bytes:
    """The 16-byte simple reply header."""
    return REPLY.pack(SIMPLE_REPLY_MAGIC, error, handle)


def _check(bits: bytearray, start: int, stop: int) -> None:
    if start < 0 or stop < start or stop > len(bits) * 8:
        raise ValueError(f"sector range [{start}, {stop}) outside the bitmap")


def runs(bits: bytearray, start: int, stop: int) -> list[tuple[bool, int, int]]:
    """Maximal runs `(in_delta, first, end)` of equal bits covering sectors [start, stop)."""
    _check(bits, start, stop)
    out: list[tuple[bool, int, int]] = []
    i = start
    while i < stop:
        value = bool(bits[i >> 3] >> (i & 7) & 1)
        j = i + 1
        while j < stop:
            if j & 7 == 0 and j + 8 <= stop:
                byte = bits[j >> 3]
                if byte == (0xFF if value else 0):
                    j += 8
                    continue
            if bool(bits[j >> 3] >> (j & 7) & 1) != value:
                break
            j += 1
        out.append((value, i, j))
        i = j
    return out


def count(bits: bytearray, start: int, stop: int) -> int:
    """How many sectors of [start, stop) have their bit set."""
    _check(bits, start, stop)
    n = 0
    i = start
    while i < stop:
        if i & 7 == 0 and i + 8 <= stop:
            n += _POPCOUNT[bits[i >> 3]]
            i += 8
        else:
            n += bits[i >> 3] >> (i & 7) & 1
            i += 1
    return n


def mark(bits: bytearray, start: int, stop: int) -> int:
    """Set the bits of sectors [start, stop); returns how many were clear before."""
    _check(bits, start, stop)
    newly = 0
    i = start
    while i < stop:
        if i & 7 == 0 and i + 8 <= stop:
            newly += 8 - _POPCOUNT[bits[i >> 3]]
            bits[i >> 3] = 0xFF
            i += 8
        else:
            mask = 1 << (i & 7)
            if not bits[i >> 3] & mask:
                bits[i >> 3] |= mask
                newly += 1
            i += 1
    return newly


def recv_spin(sock: socket.socket, buf: bytearray | memoryview, spin_ns: int) -> int:
    """Receive into `buf` without blocking, retrying for up to `spin_ns` nanoseconds: the
    byte count (0: the peer closed), or -1 when nothing arrived in time (then block in an
    ordinary recv).  Waiting busy for a short while keeps a VM's vCPU awake: waking an idle
    one costs tens of microseconds, more than a request's whole work.  It uses idle CPU only:
    each unsuccessful try yields the CPU (sched_yield), and once the thread was kept off the
    CPU for more than SPIN_GAP_NS (another task needed it) it stops early.  OSError on
    errors."""
    if len(buf) == 0:
        raise ValueError("recv_spin into an empty buffer")
    clock = time.perf_counter_ns
    last = clock()
    deadline = last + spin_ns
    recv_into = sock.recv_into
    while True:
        try:
            return recv_into(buf, 0, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            t = clock()
            if t >= deadline or t - last > SPIN_GAP_NS:
                return -1
            os.sched_yield()
            last = clock()

# cython: language_level=3, boundscheck=False, wraparound=False
"""Native twin of archipelago/_overlay_py.py (see there for the bitmap and wire layouts).

Built by setup.py into archipelago._overlay.  Results must equal the pure twin's exactly;
tests/test_archipelago_twins.py checks it with hypothesis.
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING

from os import strerror as os_strerror

DEF REQUEST_MAGIC = 0x25609513
DEF SIMPLE_REPLY_MAGIC = 0x67446698
DEF SPIN_GAP_NS = 20000  # see _overlay_py.SPIN_GAP_NS


cdef inline uint32_t be32(const uint8_t* p):
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline uint64_t be64(const uint8_t* p):
    return (<uint64_t>be32(p) << 32) | be32(p + 4)


cdef inline void put32(uint8_t* p, uint32_t v):
    p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v


def parse_request(const uint8_t[::1] header):
    if header.shape[0] != 28:
        raise ValueError(f"request header of {header.shape[0]} bytes")
    cdef const uint8_t* p = &header[0]
    cdef uint32_t magic = be32(p)
    if magic != REQUEST_MAGIC:
        raise ValueError(f"bad request magic {magic:#x}")
    return ((<uint16_t>p[4] << 8) | p[5], (<uint16_t>p[6] << 8) | p[7], be64(p + 8),
            be64(p + 16), be32(p + 24))


def simple_reply(uint32_t error, uint64_t handle):
    cdef bytes out = PyBytes_FromStringAndSize(NULL, 16)
    cdef uint8_t* p = <uint8_t*>PyBytes_AS_STRING(out)
    put32(p, SIMPLE_REPLY_MAGIC)
    put32(p + 4, error)
    put32(p + 8, <uint32_t>(handle >> 32))
    put32(p + 12, <uint32_t>handle)
    return out


cdef inline int bit(const uint8_t* b, Py_ssize_t i) noexcept nogil:
    return (b[i >> 3] >> (i & 7)) & 1


cdef void check(Py_ssize_t nbytes, Py_ssize_t start, Py_ssize_t stop) except *:
    if start < 0 or stop < start or stop > nbytes * 8:
        raise ValueError(f"sector range [{start}, {stop}) outside the bitmap")


def runs(uint8_t[::1] bits, Py_ssize_t start, Py_ssize_t stop):
    check(bits.shape[0], start, stop)
    cdef list out = []
    if stop == start:
        return out
    cdef const uint8_t* b = &bits[0]
    cdef Py_ssize_t i = start, j
    cdef int value
    cdef uint8_t full
    while i < stop:
        value = bit(b, i)
        full = 0xFF if value else 0
        j = i + 1
        while j < stop:
            if (j & 7) == 0 and j + 8 <= stop and b[j >> 3] == full:
                j += 8
                continue
            if bit(b, j) != value:
                break
            j += 1
        out.append((bool(value), i, j))
        i = j
    return out


cdef inline int popcount8(uint8_t v) noexcept nogil:
    return __builtin_popcount(v)


cdef extern from *:
    int __builtin_popcount(unsigned int) nogil


def count(uint8_t[::1] bits, Py_ssize_t start, Py_ssize_t stop):
    check(bits.shape[0], start, stop)
    if stop == start:
        return 0
    cdef const uint8_t* b = &bits[0]
    cdef Py_ssize_t i = start, n = 0
    while i < stop:
        if (i & 7) == 0 and i + 8 <= stop:
            n += popcount8(b[i >> 3])
            i += 8
        else:
            n += bit(b, i)
            i += 1
    return n


def mark(uint8_t[::1] bits, Py_ssize_t start, Py_ssize_t stop):
    check(bits.shape[0], start, stop)
    if stop == start:
        return 0
    cdef uint8_t* b = &bits[0]
    cdef Py_ssize_t i = start, newly = 0
    cdef uint8_t mask
    while i < stop:
        if (i & 7) == 0 and i + 8 <= stop:
            newly += 8 - popcount8(b[i >> 3])
            b[i >> 3] = 0xFF
            i += 8
        else:
            mask = 1 << (i & 7)
            if not (b[i >> 3] & mask):
                b[i >> 3] |= mask
                newly += 1
            i += 1
    return newly


cdef extern from "<sys/socket.h>" nogil:
    ssize_t c_recv "recv" (int fd, void* buf, size_t n, int flags)
    int MSG_DONTWAIT

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec* ts)
    int CLOCK_MONOTONIC

cdef extern from "<errno.h>" nogil:
    int errno
    int EAGAIN
    int EWOULDBLOCK
    int EINTR


cdef extern from "<sched.h>" nogil:
    int sched_yield()


cdef inline long long now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <long long>ts.tv_sec * 1000000000 + ts.tv_nsec


def recv_spin(sock, unsigned char[::1] buf, long long spin_ns):
    if buf.shape[0] == 0:
        raise ValueError("recv_spin into an empty buffer")
    cdef int fd = sock.fileno()
    cdef unsigned char* p = &buf[0]
    cdef size_t n = buf.shape[0]
    cdef ssize_t got
    cdef int err = 0
    cdef long long deadline, t, last
    with nogil:
        last = now_ns()
        deadline = last + spin_ns
        while True:
            got = c_recv(fd, p, n, MSG_DONTWAIT)
            if got >= 0:
                break
            err = errno
            if err != EAGAIN and err != EWOULDBLOCK and err != EINTR:
                break
            t = now_ns()
            if t >= deadline or t - last > SPIN_GAP_NS:
                break
            sched_yield()
            last = now_ns()
    if got >= 0:
        return got
    if err == EAGAIN or err == EWOULDBLOCK or err == EINTR:
        return -1
    raise OSError(err, os_strerror(err))

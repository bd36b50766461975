# cython: language_level=3, boundscheck=False, wraparound=False
"""Native twin of pithos/mapper/_mapcodec_py.py (see there for the page layout).

Built by setup.py into pithos.mapper._mapcodec.  Results must equal the pure twin's exactly;
tests/test_native_twins.py checks it with hypothesis.
"""

from libc.string cimport memcmp, memcpy
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING

cdef bytes MAGIC = b"PMP1"
DEF HEADER_SIZE = 16
DEF LEAF_SIZE = 36
DEF NODE_SIZE = 48
DEF HASH_SIZE = 32

cdef inline void put_u32(char* p, uint32_t v):
    memcpy(p, &v, 4)   # little-endian hosts only (x86_64, aarch64)

cdef inline void put_u64(char* p, uint64_t v):
    memcpy(p, &v, 8)

cdef inline uint32_t get_u32(const char* p):
    cdef uint32_t v
    memcpy(&v, p, 4)
    return v

cdef inline uint64_t get_u64(const char* p):
    cdef uint64_t v
    memcpy(&v, p, 8)
    return v

cdef bytes _header(int level, Py_ssize_t count, Py_ssize_t entry_size):
    cdef bytes out = PyBytes_FromStringAndSize(NULL, HEADER_SIZE + count * entry_size)
    cdef char* p = PyBytes_AS_STRING(out)
    memcpy(p, <const char*>MAGIC, 4)
    p[4] = <char>level
    p[5] = 0; p[6] = 0; p[7] = 0
    put_u32(p + 8, <uint32_t>count)
    put_u32(p + 12, 0)
    return out


def encode_leaf(list hashes, list lengths):
    cdef Py_ssize_t n = len(hashes), i
    if n != len(lengths):
        raise ValueError("hashes and lengths differ in count")
    cdef bytes out = _header(0, n, LEAF_SIZE)
    cdef char* p = PyBytes_AS_STRING(out) + HEADER_SIZE
    cdef bytes h
    cdef object length
    for i in range(n):
        h = hashes[i]
        length = lengths[i]
        if len(h) != HASH_SIZE or not 0 < length <= 0xFFFFFFFF:
            raise ValueError("bad leaf entry")
        memcpy(p, PyBytes_AS_STRING(h), HASH_SIZE)
        put_u32(p + HASH_SIZE, <uint32_t>length)
        p += LEAF_SIZE
    return out


def encode_node(int level, list hashes, list sizes, list counts):
    cdef Py_ssize_t n = len(hashes), i
    if not 0 < level < 256:
        raise ValueError(f"bad level {level}")
    if not (n == len(sizes) == len(counts)):
        raise ValueError("hashes, sizes and counts differ in count")
    cdef bytes out = _header(level, n, NODE_SIZE)
    cdef char* p = PyBytes_AS_STRING(out) + HEADER_SIZE
    cdef bytes h
    cdef object size, count
    for i in range(n):
        h = hashes[i]
        size = sizes[i]
        count = counts[i]
        if len(h) != HASH_SIZE or size < 0 or count <= 0:
            raise ValueError("bad node entry")
        memcpy(p, PyBytes_AS_STRING(h), HASH_SIZE)
        put_u64(p + HASH_SIZE, <uint64_t>size)
        put_u64(p + HASH_SIZE + 8, <uint64_t>count)
        p += NODE_SIZE
    return out


def decode_page(bytes data):
    cdef Py_ssize_t size = len(data), i
    if size < HEADER_SIZE:
        raise ValueError("too short for a map page")
    cdef const char* p = PyBytes_AS_STRING(data)
    if memcmp(p, <const char*>MAGIC, 4) != 0:
        raise ValueError("not a map page (bad magic)")
    cdef int level = <uint8_t>p[4]
    cdef Py_ssize_t count = get_u32(p + 8)
    cdef Py_ssize_t entry_size = LEAF_SIZE if level == 0 else NODE_SIZE
    if size != HEADER_SIZE + count * entry_size:
        raise ValueError("map page length does not match its entry count")
    cdef list hashes = [None] * count
    cdef list sizes = [None] * count
    cdef list counts = [] if level == 0 else [None] * count
    cdef uint32_t length
    cdef uint64_t c
    p += HEADER_SIZE
    for i in range(count):
        hashes[i] = PyBytes_FromStringAndSize(p, HASH_SIZE)
        if level == 0:
            length = get_u32(p + HASH_SIZE)
            if length == 0:
                raise ValueError("map page has an empty entry")
            sizes[i] = length
        else:
            sizes[i] = get_u64(p + HASH_SIZE)
            c = get_u64(p + HASH_SIZE + 8)
            if c == 0:
                raise ValueError("map page names an empty child")
            counts[i] = c
        p += entry_size
    return level, hashes, sizes, counts


def locate(list sizes, long long offset, long long length):
    cdef list pieces = []
    if length <= 0 or offset < 0:
        return pieces
    cdef long long end = offset + length
    cdef long long start = 0, stop, n, lo, hi
    cdef Py_ssize_t i
    for i in range(len(sizes)):
        n = sizes[i]
        stop = start + n
        if stop > offset:
            if start >= end:
                break
            lo = offset if offset > start else start
            hi = end if end < stop else stop
            pieces.append((i, lo - start, hi - lo))
        start = stop
    return pieces


def is_zero(data):
    cdef const unsigned char[::1] view = data
    cdef Py_ssize_t n = view.shape[0], i = 0
    cdef const uint64_t* words
    if n == 0:
        return True
    cdef const unsigned char* p = &view[0]
    # Word-at-a-time scan; the tail byte by byte.
    while i + 8 <= n:
        if (<const uint64_t*>(p + i))[0] != 0:
            return False
        i += 8
    while i < n:
        if p[i] != 0:
            return False
        i += 1
    return True

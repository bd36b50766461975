# cython: language_level=3, boundscheck=False, wraparound=False
"""MD5 objects whose bulk can be hashed beside other streams' (multi-buffer MD5, md5lanes.h):
`update_many` feeds a batch of digests one buffer each, side by side in vector lanes.

Built by setup.py into pithos.core._md5lanes.  Its twin is hashlib's MD5 (pithos.core.md5):
digests must be equal, tests/test_md5lanes.py checks it with hypothesis, alone and in batches.
Little-endian hosts only (x86_64, aarch64), as the rest of native/.
"""

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy

cdef extern from "md5lanes.h" nogil:
    void md5_compress(uint32_t* st, const unsigned char* p, size_t nblocks)
    void md5lanes_many(uint32_t** st, const unsigned char** p, size_t* nblocks, size_t count)
    int md5lanes_vector()
    int md5lanes_set_vector(int level)

# The vector code, by the md5lanes.h level: 0 portable C, 1 AVX2 (8 lanes a register), 2 AVX-512.
LEVELS = ("scalar", "avx2", "avx512")


def vector_available():
    """The best vector code this CPU runs: "avx512", "avx2" or "scalar" (then a batch is
    hashed one stream after the other)."""
    return LEVELS[md5lanes_vector()]


def set_vector(level):
    """Use at most `level` (a name of LEVELS; for tests and benchmarks, while nothing hashes);
    returns the level now in use."""
    return LEVELS[md5lanes_set_vector(LEVELS.index(level))]


cdef class LaneMd5:
    """MD5 with hashlib's update/digest/hexdigest/copy.  One thread at a time per object.
    `update` hashes one stream (portable C, without the GIL); `update_many` hashes several
    objects' bytes side by side in the vector lanes."""

    cdef uint32_t st[4]
    cdef unsigned char tail[64]
    cdef Py_ssize_t ntail
    cdef uint64_t length

    name = "md5"
    digest_size = 16
    block_size = 64

    def __cinit__(self, data=None):
        self.st[0] = 0x67452301
        self.st[1] = 0xefcdab89
        self.st[2] = 0x98badcfe
        self.st[3] = 0x10325476
        self.ntail = 0
        self.length = 0

    def __init__(self, data=None):
        if data is not None:
            self.update(data)

    cdef const unsigned char* _head(self, const unsigned char* p, Py_ssize_t* n):
        """Complete a partial block from `p` (hashed once whole); returns where whole blocks
        start, `n` reduced to what is left."""
        cdef Py_ssize_t take
        self.length += n[0]
        if self.ntail:
            take = min(64 - self.ntail, n[0])
            memcpy(&self.tail[self.ntail], p, take)
            self.ntail += take
            p += take
            n[0] -= take
            if self.ntail == 64:
                md5_compress(self.st, self.tail, 1)
                self.ntail = 0
        return p

    cdef void _keep_tail(self, const unsigned char* p, Py_ssize_t n):
        if n:
            memcpy(&self.tail[self.ntail], p, n)
            self.ntail += n

    def update(self, data):
        cdef const unsigned char[::1] view = memoryview(data).cast("B")
        cdef const unsigned char* p = &view[0] if view.shape[0] else NULL
        cdef Py_ssize_t n = view.shape[0]
        cdef size_t blocks
        p = self._head(p, &n)
        blocks = n // 64
        if blocks:
            with nogil:
                md5_compress(self.st, p, blocks)
        self._keep_tail(p + blocks * 64, n - blocks * 64)

    def digest(self):
        cdef uint32_t st[4]
        cdef unsigned char last[128]
        cdef Py_ssize_t size = 64 if self.ntail < 56 else 128
        cdef uint64_t bits = self.length * 8
        memcpy(st, self.st, 16)
        memcpy(last, self.tail, self.ntail)
        last[self.ntail] = 0x80
        for i in range(self.ntail + 1, size - 8):
            last[i] = 0
        memcpy(&last[size - 8], &bits, 8)
        md5_compress(st, last, size // 64)
        return (<char*>st)[:16]

    def hexdigest(self):
        return self.digest().hex()

    def copy(self):
        cdef LaneMd5 other = LaneMd5.__new__(LaneMd5)
        memcpy(other.st, self.st, 16)
        memcpy(other.tail, self.tail, self.ntail)
        other.ntail = self.ntail
        other.length = self.length
        return other


def update_many(digests, datas):
    """`digests[i].update(datas[i])` for every i, the bulk side by side in vector lanes (without
    the GIL).  Every buffer is checked before anything is hashed: on an error no digest has
    changed.  A digest may appear only once."""
    cdef Py_ssize_t count = len(digests), i, n
    cdef LaneMd5 digest
    cdef const unsigned char[::1] view
    cdef const unsigned char* p
    if len(datas) != count:
        raise ValueError("one buffer per digest")
    checked = [(<LaneMd5?>d) for d in digests]
    if len({id(d) for d in checked}) != count:
        raise ValueError("a digest appears twice")
    views = [memoryview(d).cast("B") for d in datas]
    cdef uint32_t** st = <uint32_t**>PyMem_Malloc(count * sizeof(uint32_t*) + 1)
    cdef const unsigned char** ptr = <const unsigned char**>PyMem_Malloc(
        count * sizeof(unsigned char*) + 1)
    cdef size_t* nblocks = <size_t*>PyMem_Malloc(count * sizeof(size_t) + 1)
    cdef Py_ssize_t* left = <Py_ssize_t*>PyMem_Malloc(count * sizeof(Py_ssize_t) + 1)
    try:
        if not st or not ptr or not nblocks or not left:
            raise MemoryError()
        for i in range(count):
            digest = checked[i]
            view = views[i]
            n = view.shape[0]
            p = &view[0] if n else NULL
            p = digest._head(p, &n)
            st[i] = digest.st
            ptr[i] = p
            nblocks[i] = n // 64
            left[i] = n - (n // 64) * 64
        with nogil:
            md5lanes_many(st, ptr, nblocks, count)
        for i in range(count):
            (<LaneMd5>checked[i])._keep_tail(ptr[i], left[i])
    finally:
        PyMem_Free(st)
        PyMem_Free(ptr)
        PyMem_Free(nblocks)
        PyMem_Free(left)

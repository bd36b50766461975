# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""FastCDC cut points and each chunk's BLAKE3 in one call, without the GIL: the sync
client's scan cuts and names ~60,000 chunks a GB, and a call per chunk (with a Python
object and a bytes copy each) held the GIL that its upload threads wait for.  And the
BLAKE3 of each of many chunks already cut (`hash_each`), as the server names the batch of
chunks a sync client sends: one call and one release of the GIL for the batch.

Built by setup.py into pithos.core._cdchash when BLAKE3's C sources are there (as
pithos.core._treehash); its twin is pithos/core/_cdc_py.py's `cut_hash`, and
tests/test_cdc_hash.py checks that both give the same bytes.  The cuts are native/cdc.pyx's
(the same scan, native/cdc_scan.pxi)."""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport uint32_t
from libc.stdlib cimport free, malloc, realloc

include "cdc_scan.pxi"

cdef extern from "blake3.h" nogil:
    ctypedef struct blake3_hasher:
        pass
    void blake3_hasher_init(blake3_hasher *self)
    void blake3_hasher_update(blake3_hasher *self, const void *input, size_t input_len)
    void blake3_hasher_finalize(const blake3_hasher *self, uint8_t *out, size_t out_len)

# One entry per chunk: its BLAKE3 (32 bytes), its length (u32, little-endian): the form of a
# chunk list in the sync state (pithos.sync.state), so it is stored as it comes.
cdef enum:
    ENTRY = 36


cdef void _entry(uint8_t* out, const uint8_t* p, Py_ssize_t n) noexcept nogil:
    cdef blake3_hasher h
    cdef uint32_t length = <uint32_t>n
    blake3_hasher_init(&h)
    blake3_hasher_update(&h, p, <size_t>n)
    blake3_hasher_finalize(&h, out, 32)
    memcpy(out + 32, &length, 4)   # little-endian hosts only, as the gear table


def cut_hash(const uint8_t[::1] data, Py_ssize_t start, Py_ssize_t end, bint final,
             Py_ssize_t min_size, Py_ssize_t avg_size, Py_ssize_t max_size,
             uint64_t mask_s, uint64_t mask_l, const uint8_t[::1] gear):
    """(the offset where the last chunk cut ends, its chunks as entries back to back): the
    chunks `cuts` (native/cdc.pyx) gives for the same arguments, each as its BLAKE3 and
    its length (u32 little-endian)."""
    _check_cut_args(data.shape[0], start, end, gear.shape[0], min_size, max_size)
    if max_size > 0xFFFFFFFF:
        raise ValueError("max_size does not fit a chunk list entry's u32 length")
    cdef uint64_t table[256]
    memcpy(table, &gear[0], sizeof(table))
    cdef const uint8_t* p = &data[0] if data.shape[0] else NULL
    # Chunks are at least 1 byte, and all but the last of them of any `min_size` bytes
    # end at most twice in them (a zero run's start, then the run): this bounds the count.
    cdef Py_ssize_t capacity = 2 * ((end - start) // min_size + 1) + 1
    cdef uint8_t* out = <uint8_t*>malloc(capacity * ENTRY)
    if out == NULL:
        raise MemoryError()
    cdef Py_ssize_t pos = start, cut, count = 0
    cdef uint8_t* grown
    cdef bint failed = False
    try:
        with nogil:
            while True:
                cut = _next_cut(p, pos, end, final, min_size, avg_size, max_size, mask_s,
                                mask_l, table)
                if cut < 0:
                    break
                if count == capacity:   # (the bound above holds; this is belt and braces)
                    capacity *= 2
                    grown = <uint8_t*>realloc(out, capacity * ENTRY)
                    if grown == NULL:
                        failed = True
                        break
                    out = grown
                _entry(out + count * ENTRY, p + pos, cut - pos)
                count += 1
                pos = cut
        if failed:
            raise MemoryError()
        return pos, PyBytes_FromStringAndSize(<char*>out, count * ENTRY)
    finally:
        free(out)


def hash_each(blocks):
    """[BLAKE3-256 of each of `blocks`] (any objects with a contiguous buffer: bytes,
    bytearray, memoryview), hashed one after the other with the GIL released once for
    all of them: the twin of `[blake3(b).digest() for b in blocks]`, which releases and
    takes it again for each block (a batch of a sync client's chunks is ~500 of them)."""
    cdef Py_ssize_t n = len(blocks), i, got = 0
    if n == 0:
        return []
    cdef Py_buffer* views = <Py_buffer*>malloc(n * sizeof(Py_buffer))
    cdef uint8_t* out = <uint8_t*>malloc(n * 32)
    cdef blake3_hasher h
    if views == NULL or out == NULL:
        free(views)
        free(out)
        raise MemoryError()
    try:
        for i in range(n):
            PyObject_GetBuffer(blocks[i], &views[i], PyBUF_SIMPLE)
            got += 1
        with nogil:
            for i in range(n):
                blake3_hasher_init(&h)
                blake3_hasher_update(&h, views[i].buf, <size_t>views[i].len)
                blake3_hasher_finalize(&h, out + i * 32, 32)
        return [PyBytes_FromStringAndSize(<char*>out + i * 32, 32) for i in range(n)]
    finally:
        for i in range(got):
            PyBuffer_Release(&views[i])
        free(views)
        free(out)

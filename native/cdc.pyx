# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Native twin of pithos/core/_cdc_py.py: FastCDC cut points (see there for the scan, and
pithos/core/cdc.py for the table and masks, which both twins are given).

Built by setup.py into pithos.core._cdc.  Results must equal the pure twin's exactly;
tests/test_cdc.py checks it with hypothesis.
"""

from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcpy


cdef inline Py_ssize_t _scan(const uint8_t* p, Py_ssize_t i, Py_ssize_t stop, uint64_t* h,
                             uint64_t mask, const uint64_t* table) noexcept nogil:
    """Hash bytes from i on; the offset just past the first whose hash has no bit of `mask`
    set, or -1 at `stop` (h holds the hash there)."""
    cdef uint64_t x = h[0]
    while i < stop:
        x = (x << 1) + table[p[i]]
        i += 1
        if not (x & mask):
            h[0] = x
            return i
    h[0] = x
    return -1


def cuts(const uint8_t[::1] data, Py_ssize_t start, Py_ssize_t end, bint final,
         Py_ssize_t scanned, Py_ssize_t min_size, Py_ssize_t avg_size, Py_ssize_t max_size,
         uint64_t mask_s, uint64_t mask_l, const uint8_t[::1] gear):
    if gear.shape[0] != 256 * 8:
        raise ValueError("gear table is not 256 u64")
    if not (0 <= start <= end <= data.shape[0]) or not (start <= scanned <= end):
        raise ValueError("start, scanned and end out of range")
    cdef uint64_t table[256]
    memcpy(table, &gear[0], sizeof(table))   # little-endian hosts only (x86_64, aarch64)
    cdef const uint8_t* p = &data[0] if data.shape[0] else NULL
    cdef list out = []
    cdef Py_ssize_t pos = start, remaining, center, limit, i, j, cut
    cdef uint64_t h
    while True:
        remaining = end - pos
        if remaining <= 0:
            return out
        if remaining <= min_size:
            if final:
                out.append(end)
            return out
        center = pos + avg_size
        if center > end:
            center = end
        limit = pos + max_size
        if limit > end:
            limit = end
        h = 0
        i = pos + min_size
        if pos == start and scanned > i:
            j = scanned - 64
            if j < i:
                j = i
            while j < scanned:
                h = (h << 1) + table[p[j]]
                j += 1
            i = scanned
        cut = -1
        with nogil:
            if i < center:
                cut = _scan(p, i, center, &h, mask_s, table)
                i = center
            if cut < 0 and i < limit:
                cut = _scan(p, i, limit, &h, mask_l, table)
        if cut < 0:
            if pos + max_size <= end:
                cut = pos + max_size
            elif final:
                cut = end
            else:
                return out
        out.append(cut)
        pos = cut

# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Native twin of pithos/core/_cdc_py.py: FastCDC cut points with runs of zeros cut apart
(see there for the rules, and pithos/core/cdc.py for the table and masks, which both twins
are given).

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


cdef inline Py_ssize_t _zeros_end(const uint8_t* p, Py_ssize_t i, Py_ssize_t stop) noexcept nogil:
    """The first offset in [i, stop) holding a nonzero byte, else `stop`; 8 bytes a step."""
    cdef uint64_t w
    while i + 8 <= stop:
        memcpy(&w, p + i, 8)
        if w:
            break
        i += 8
    while i < stop and p[i] == 0:
        i += 1
    return i


cdef Py_ssize_t _run_start(const uint8_t* p, Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t end,
                           Py_ssize_t z) noexcept nogil:
    """The pure twin's run_start: the first zero run's start in [lo, hi), else hi."""
    cdef Py_ssize_t stop = hi + z - 1, j = lo, r, e
    if stop > end:
        stop = end
    while j < stop:
        if p[j]:
            j += z
            continue
        r = j
        while r > lo and p[r - 1] == 0:
            r -= 1
        e = _zeros_end(p, j, r + z if r + z < end else end)
        if p[r - 1] and e - r >= z:
            return r if r < hi else hi
        e = _zeros_end(p, e, stop)
        j += (e - j + z - 1) // z * z
    return hi


def cuts(const uint8_t[::1] data, Py_ssize_t start, Py_ssize_t end, bint final,
         Py_ssize_t min_size, Py_ssize_t avg_size, Py_ssize_t max_size,
         uint64_t mask_s, uint64_t mask_l, const uint8_t[::1] gear):
    if gear.shape[0] != 256 * 8:
        raise ValueError("gear table is not 256 u64")
    if not (0 <= start <= end <= data.shape[0]):
        raise ValueError("start and end out of range")
    cdef uint64_t table[256]
    memcpy(table, &gear[0], sizeof(table))   # little-endian hosts only (x86_64, aarch64)
    cdef const uint8_t* p = &data[0] if data.shape[0] else NULL
    cdef list out = []
    cdef Py_ssize_t pos = start, remaining, center, limit, stop, i, cut
    cdef Py_ssize_t z = min_size
    cdef uint64_t h
    while True:
        remaining = end - pos
        if remaining <= 0 or (not final and remaining < max_size + z):
            return out
        limit = pos + max_size
        if limit > end:
            limit = end
        with nogil:
            if pos + z <= end and _zeros_end(p, pos, pos + z) == pos + z:
                cut = _zeros_end(p, pos + z, limit)
            elif remaining <= min_size:
                cut = end
            else:
                stop = _run_start(p, pos + 1, limit, end, z)
                center = pos + avg_size
                if center > stop:
                    center = stop
                h = 0
                i = pos + min_size
                cut = -1
                if i < center:
                    cut = _scan(p, i, center, &h, mask_s, table)
                    i = center
                if cut < 0 and i < stop:
                    cut = _scan(p, i, stop, &h, mask_l, table)
                if cut < 0:
                    cut = stop
        out.append(cut)
        pos = cut

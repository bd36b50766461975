# The FastCDC scan shared by native/cdc.pyx (cut points) and native/cdchash.pyx (cut points
# and each chunk's BLAKE3): one copy of the rules, included by both (cut points must be the
# same everywhere and forever; pithos/core/_cdc_py.py says what they are).

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


cdef Py_ssize_t _next_cut(const uint8_t* p, Py_ssize_t pos, Py_ssize_t end, bint final,
                          Py_ssize_t min_size, Py_ssize_t avg_size, Py_ssize_t max_size,
                          uint64_t mask_s, uint64_t mask_l, const uint64_t* table
                          ) noexcept nogil:
    """The end of the chunk that starts at `pos`, or -1 when it cannot be cut yet (not
    `final` and fewer than max_size + min_size bytes known) or nothing is left."""
    cdef Py_ssize_t remaining = end - pos, center, limit, stop, i, cut
    cdef Py_ssize_t z = min_size
    cdef uint64_t h
    if remaining <= 0 or (not final and remaining < max_size + z):
        return -1
    limit = pos + max_size
    if limit > end:
        limit = end
    if pos + z <= end and _zeros_end(p, pos, pos + z) == pos + z:
        return _zeros_end(p, pos + z, limit)
    if remaining <= min_size:
        return end
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
    return cut


cdef int _check_cut_args(Py_ssize_t length, Py_ssize_t start, Py_ssize_t end,
                         Py_ssize_t gear_len, Py_ssize_t min_size,
                         Py_ssize_t max_size) except -1:
    if gear_len != 256 * 8:
        raise ValueError("gear table is not 256 u64")
    if not (0 <= start <= end <= length):
        raise ValueError("start and end out of range")
    # Every chunk at least a byte: a min_size of 0 divided by zero (cdchash's bound: the
    # process killed by SIGFPE) or cut empty chunks for ever without the GIL, as did a
    # max_size of 0; and no chunk past max_size (a min_size above it made longer ones).
    if not (0 < min_size <= max_size):
        raise ValueError("need 0 < min_size <= max_size")
    return 0

# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Native twin of pithos/core/_cdc_py.py: FastCDC cut points with runs of zeros cut apart
(see there for the rules, and pithos/core/cdc.py for the table and masks, which both twins
are given).

Built by setup.py into pithos.core._cdc.  Results must equal the pure twin's exactly;
tests/test_cdc.py checks it with hypothesis.
"""

include "cdc_scan.pxi"


def cuts(const uint8_t[::1] data, Py_ssize_t start, Py_ssize_t end, bint final,
         Py_ssize_t min_size, Py_ssize_t avg_size, Py_ssize_t max_size,
         uint64_t mask_s, uint64_t mask_l, const uint8_t[::1] gear):
    _check_cut_args(data.shape[0], start, end, gear.shape[0], min_size, max_size)
    cdef uint64_t table[256]
    memcpy(table, &gear[0], sizeof(table))   # little-endian hosts only (x86_64, aarch64)
    cdef const uint8_t* p = &data[0] if data.shape[0] else NULL
    cdef list out = []
    cdef Py_ssize_t pos = start, cut
    while True:
        with nogil:
            cut = _next_cut(p, pos, end, final, min_size, avg_size, max_size, mask_s, mask_l,
                            table)
        if cut < 0:
            return out
        out.append(cut)
        pos = cut

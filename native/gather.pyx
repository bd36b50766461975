# cython: language_level=3, boundscheck=False, wraparound=False
"""Native twin of pithos/blocker/_gather_py.py: parts copied back to back into a buffer,
without the GIL.

A pack append written direct (pithos.blocker.direct_io) copies its records, a header and a
chunk each (~1,000 parts in a sync client's batch of 8 MiB), into page-aligned buffers: a
slice assignment per part in Python cost ~1.7 us each, four times the copy itself, with the
GIL held throughout.  Built by setup.py into pithos.blocker._gather; tests/test_direct_io.py
checks that both twins give the same bytes and the same answers."""

from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy


def gather_into(dest, parts, Py_ssize_t index, Py_ssize_t skip):
    """Copy parts[index][skip:], parts[index + 1], ... back to back into `dest` (a writable
    buffer) until it is full or the parts run out; returns (index, skip, filled): where the
    next copy begins (a part, and how many of its bytes are copied already) and how many
    bytes of `dest` were filled."""
    cdef Py_ssize_t n = len(parts)
    if not 0 <= index <= n:
        raise ValueError(f"index {index} is not within the {n} parts")
    if skip < 0:
        raise ValueError(f"skip {skip} is negative")
    cdef Py_buffer out
    PyObject_GetBuffer(dest, &out, PyBUF_SIMPLE | PyBUF_WRITABLE)
    cdef Py_buffer* views = NULL
    cdef Py_ssize_t* starts = NULL
    cdef Py_ssize_t* takes = NULL
    cdef Py_ssize_t got = 0, i, room = out.len, fill = 0, take
    try:
        views = <Py_buffer*>malloc((n - index + 1) * sizeof(Py_buffer))
        starts = <Py_ssize_t*>malloc((n - index + 1) * sizeof(Py_ssize_t))
        takes = <Py_ssize_t*>malloc((n - index + 1) * sizeof(Py_ssize_t))
        if views == NULL or starts == NULL or takes == NULL:
            raise MemoryError()
        # What of each part fits, its buffer taken with the GIL; copied without it.
        while index < n and room:
            PyObject_GetBuffer(parts[index], &views[got], PyBUF_SIMPLE)
            got += 1
            if skip > views[got - 1].len:
                raise ValueError(f"skip {skip} is past the end of part {index}")
            take = views[got - 1].len - skip
            if take > room:
                take = room
            starts[got - 1] = skip
            takes[got - 1] = take
            room -= take
            if skip + take == views[got - 1].len:
                index += 1
                skip = 0
            else:
                skip += take
        with nogil:
            for i in range(got):
                memcpy(<char*>out.buf + fill, <const char*>views[i].buf + starts[i], takes[i])
                fill += takes[i]
        return index, skip, fill
    finally:
        for i in range(got):
            PyBuffer_Release(&views[i])
        free(views)
        free(starts)
        free(takes)
        PyBuffer_Release(&out)

# cython: language_level=3, boundscheck=False, wraparound=False
"""BLAKE3 subtrees (b3subtree.h): a part of a block hashed at its offset in the block's tree,
and parent nodes.  Built by setup.py into pithos.core._treehash, from the BLAKE3 team's C
sources.  Without it, blocks carry no tree outboard and are verified whole
(pithos.core.treehash).  tests/test_treehash.py checks every result against blake3's."""

from libc.stdint cimport uint8_t, uint64_t

cdef extern from "b3subtree.h" nogil:
    ctypedef struct b3s_state:
        pass
    void b3s_init(b3s_state *self, uint64_t base_chunk)
    void b3s_update(b3s_state *self, const uint8_t *input, size_t input_len)
    void b3s_finalize(const b3s_state *self, int root, uint8_t out[32])
    void b3s_parent(const uint8_t left[32], const uint8_t right[32], int root, uint8_t out[32])

# Below this, hashing without the GIL costs more in the hand-off than it lets run beside it.
cdef size_t _NOGIL_MIN = 16 * 1024


cdef class Subtree:
    """An incremental hasher of the subtree that starts at byte `offset` of a block (a
    multiple of 1024).  One thread at a time per object."""
    cdef b3s_state state

    def __cinit__(self, uint64_t offset=0):
        if offset % 1024:
            raise ValueError(f"a subtree starts at a chunk boundary, not at {offset}")
        b3s_init(&self.state, offset // 1024)

    def update(self, const uint8_t[::1] data not None):
        cdef size_t n = data.shape[0]
        if n == 0:
            return
        if n < _NOGIL_MIN:
            b3s_update(&self.state, &data[0], n)
        else:
            with nogil:
                b3s_update(&self.state, &data[0], n)

    def chaining_value(self):
        """The subtree's chaining value (it is not the whole input)."""
        cdef uint8_t out[32]
        b3s_finalize(&self.state, 0, out)
        return out[:32]

    def root(self):
        """The hash of the input, when this subtree is all of it (offset 0)."""
        cdef uint8_t out[32]
        b3s_finalize(&self.state, 1, out)
        return out[:32]


def parent(const uint8_t[::1] left not None, const uint8_t[::1] right not None, bint root):
    """The parent of two chaining values: its chaining value, or with `root` the hash."""
    if left.shape[0] != 32 or right.shape[0] != 32:
        raise ValueError("chaining values are 32 bytes")
    cdef uint8_t out[32]
    b3s_parent(&left[0], &right[0], root, out)
    return out[:32]

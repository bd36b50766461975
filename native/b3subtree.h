/* BLAKE3 subtrees: hash a part of a block at its offset in the block's tree, and join two
 * chaining values into their parent.  With these a block can be verified part by part
 * against its name (pithos/core/treehash.py).  Built on the BLAKE3 team's C implementation
 * (Debian's librust-blake3-dev ships it), whose public API hashes whole inputs only. */
#ifndef PITHOS_B3SUBTREE_H
#define PITHOS_B3SUBTREE_H

#include <stddef.h>
#include <stdint.h>

#include "blake3.h"

typedef struct {
    blake3_hasher h;  /* its chunk counter is absolute (the block's), its stack relative */
    uint64_t base;    /* the chunk the subtree starts at */
} b3s_state;

/* A subtree starting at chunk `base_chunk` (its byte offset / 1024).  A subtree that is not
 * the whole input must be a power of two of chunks, aligned to its size, or the input's
 * right edge: as BLAKE3's left-balanced tree cuts it. */
void b3s_init(b3s_state *self, uint64_t base_chunk);
void b3s_update(b3s_state *self, const uint8_t *input, size_t input_len);
/* The subtree's chaining value (root = 0), or the hash of the input when the subtree is the
 * whole input (root = 1, base 0). */
void b3s_finalize(const b3s_state *self, int root, uint8_t out[32]);
/* The parent node of two chaining values: its chaining value, or the root hash. */
void b3s_parent(const uint8_t left[32], const uint8_t right[32], int root, uint8_t out[32]);

#endif

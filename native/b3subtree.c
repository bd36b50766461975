/* See b3subtree.h.  The functions a subtree needs are static in blake3.c, so this file
 * includes it, and with it the rest of BLAKE3's portable C (the build names only sources of
 * ours: the BLAKE3 directory is on the include path; the SIMD code comes
 * through native/b3_*.S).  b3s_update and b3s_finalize
 * are blake3_hasher_update and blake3_hasher_finalize_seek with two changes: the stack
 * merges by the chunk count within the subtree, not since the start of the input, and the
 * end gives a chaining value unless asked for the root. */
#include "blake3.c"
#include "blake3_dispatch.c"
#include "blake3_portable.c"

#include "b3subtree.h"

void b3s_init(b3s_state *self, uint64_t base_chunk) {
    blake3_hasher_init(&self->h);
    self->h.chunk.chunk_counter = base_chunk;
    self->base = base_chunk;
}

static void b3s_merge(b3s_state *self, uint64_t chunk_counter) {
    blake3_hasher *h = &self->h;
    size_t post_merge_stack_len = (size_t)popcnt(chunk_counter - self->base);
    while (h->cv_stack_len > post_merge_stack_len) {
        uint8_t *parent_node = &h->cv_stack[(h->cv_stack_len - 2) * BLAKE3_OUT_LEN];
        output_t output = parent_output(parent_node, h->key, h->chunk.flags);
        output_chaining_value(&output, parent_node);
        h->cv_stack_len -= 1;
    }
}

static void b3s_push(b3s_state *self, const uint8_t cv[BLAKE3_OUT_LEN],
                     uint64_t chunk_counter) {
    b3s_merge(self, chunk_counter);
    memcpy(&self->h.cv_stack[self->h.cv_stack_len * BLAKE3_OUT_LEN], cv, BLAKE3_OUT_LEN);
    self->h.cv_stack_len += 1;
}

void b3s_update(b3s_state *self, const uint8_t *input, size_t input_len) {
    blake3_hasher *h = &self->h;
    if (input_len == 0) {
        return;
    }
    if (chunk_state_len(&h->chunk) > 0) {
        size_t take = BLAKE3_CHUNK_LEN - chunk_state_len(&h->chunk);
        if (take > input_len) {
            take = input_len;
        }
        chunk_state_update(&h->chunk, input, take);
        input += take;
        input_len -= take;
        if (input_len == 0) {
            return;
        }
        /* The chunk is full and more follows: it is not the root. */
        output_t output = chunk_state_output(&h->chunk);
        uint8_t chunk_cv[BLAKE3_OUT_LEN];
        output_chaining_value(&output, chunk_cv);
        b3s_push(self, chunk_cv, h->chunk.chunk_counter);
        chunk_state_reset(&h->chunk, h->key, h->chunk.chunk_counter + 1);
    }
    while (input_len > BLAKE3_CHUNK_LEN) {
        size_t subtree_len = round_down_to_power_of_2(input_len);
        uint64_t count_so_far = (h->chunk.chunk_counter - self->base) * BLAKE3_CHUNK_LEN;
        while ((((uint64_t)(subtree_len - 1)) & count_so_far) != 0) {
            subtree_len /= 2;
        }
        uint64_t subtree_chunks = subtree_len / BLAKE3_CHUNK_LEN;
        if (subtree_len <= BLAKE3_CHUNK_LEN) {
            blake3_chunk_state chunk_state;
            chunk_state_init(&chunk_state, h->key, h->chunk.flags);
            chunk_state.chunk_counter = h->chunk.chunk_counter;
            chunk_state_update(&chunk_state, input, subtree_len);
            output_t output = chunk_state_output(&chunk_state);
            uint8_t cv[BLAKE3_OUT_LEN];
            output_chaining_value(&output, cv);
            b3s_push(self, cv, chunk_state.chunk_counter);
        } else {
            uint8_t cv_pair[2 * BLAKE3_OUT_LEN];
            compress_subtree_to_parent_node(input, subtree_len, h->key, h->chunk.chunk_counter,
                                            h->chunk.flags, cv_pair);
            b3s_push(self, cv_pair, h->chunk.chunk_counter);
            b3s_push(self, &cv_pair[BLAKE3_OUT_LEN],
                     h->chunk.chunk_counter + (subtree_chunks / 2));
        }
        h->chunk.chunk_counter += subtree_chunks;
        input += subtree_len;
        input_len -= subtree_len;
    }
    if (input_len > 0) {
        chunk_state_update(&h->chunk, input, input_len);
        b3s_merge(self, h->chunk.chunk_counter);
    }
}

static void b3s_out(const output_t *output, int root, uint8_t out[32]) {
    if (root) {
        output_root_bytes(output, 0, out, 32);
    } else {
        output_chaining_value(output, out);
    }
}

void b3s_finalize(const b3s_state *self, int root, uint8_t out[32]) {
    const blake3_hasher *h = &self->h;
    if (h->cv_stack_len == 0) {
        output_t output = chunk_state_output(&h->chunk);
        b3s_out(&output, root, out);
        return;
    }
    output_t output;
    size_t cvs_remaining;
    if (chunk_state_len(&h->chunk) > 0) {
        cvs_remaining = h->cv_stack_len;
        output = chunk_state_output(&h->chunk);
    } else {
        /* The top of the stack is the last chunk; there are at least two CVs. */
        cvs_remaining = h->cv_stack_len - 2;
        output = parent_output(&h->cv_stack[cvs_remaining * 32], h->key, h->chunk.flags);
    }
    while (cvs_remaining > 0) {
        cvs_remaining -= 1;
        uint8_t parent_block[BLAKE3_BLOCK_LEN];
        memcpy(parent_block, &h->cv_stack[cvs_remaining * 32], 32);
        output_chaining_value(&output, &parent_block[32]);
        output = parent_output(parent_block, h->key, h->chunk.flags);
    }
    b3s_out(&output, root, out);
}

void b3s_parent(const uint8_t left[32], const uint8_t right[32], int root, uint8_t out[32]) {
    uint8_t block[BLAKE3_BLOCK_LEN];
    memcpy(block, left, 32);
    memcpy(block + 32, right, 32);
    output_t output = parent_output(block, IV, 0);
    b3s_out(&output, root, out);
}

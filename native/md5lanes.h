/* MD5 of many streams at once: multi-buffer MD5 for a server's concurrent uploads.
 *
 * One MD5 stream cannot be split (each 64-byte block needs the state the previous one left),
 * so a core hashes one stream at ~4.5 cycles per byte however wide its vectors are.  Several
 * streams can share the vectors: with AVX2, 8 independent streams ("lanes") advance in one
 * instruction stream, each lane a 32-bit element (16 with AVX-512, or with two AVX2 register
 * sets side by side), for about the cost of two.  A server with many uploads in flight then
 * pays a fraction of the MD5 it would otherwise.
 *
 * md5lanes_many() hashes a batch of streams (each its own state and whole 64-byte blocks) side
 * by side; the caller (pithos/objects/digest.py) gathers the batch from the uploads in flight.
 * A lone stream is hashed by the portable code (a vector lane is no faster for one stream).
 *
 * The portable compression function is RFC 1321's, used also for the tail and padding.
 */
#ifndef PITHOS_MD5LANES_H
#define PITHOS_MD5LANES_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define MD5LANES_X86 1
#endif

#define MD5LANES_MAX 16
#define MD5LANES_SCALAR 0
#define MD5LANES_AVX2 1
#define MD5LANES_AVX512 2

static const uint32_t md5_k[64] = {
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613,
    0xfd469501, 0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193,
    0xa679438e, 0x49b40821, 0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d,
    0x02441453, 0xd8a1e681, 0xe7d3fbc8, 0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed,
    0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a, 0xfffa3942, 0x8771f681, 0x6d9d6122,
    0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70, 0x289b7ec6, 0xeaa127fa,
    0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665, 0xf4292244,
    0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
    0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb,
    0xeb86d391};

static inline uint32_t md5_rol(uint32_t x, int s) { return (x << s) | (x >> (32 - s)); }

/* One step of the portable code.  Each step waits for the previous one's result (b), so only
 * what follows b counts: the message word, the constant and whatever does not need b are added
 * to a first.  G's two terms are disjoint (b & d, c & ~d), so G is their sum and c & ~d joins
 * early: one operation fewer after b, in 16 of the 64 steps (4% faster than OpenSSL's MD5
 * here, against 5% slower with G as one expression). */
#define MD5_STEP_F(a, b, c, d, w, k, s) a += (w) + (k); a += ((c ^ d) & b) ^ d
#define MD5_STEP_G(a, b, c, d, w, k, s) a += (w) + (k) + (c & ~d); a += b & d
#define MD5_STEP_H(a, b, c, d, w, k, s) a += (w) + (k); a += (c ^ d) ^ b
#define MD5_STEP_I(a, b, c, d, w, k, s) a += (w) + (k); a += (b | ~d) ^ c
#define SCALAR_STEP(f, a, b, c, d, j, i, s) \
    MD5_STEP_##f(a, b, c, d, w[j], md5_k[i], s); a = b + md5_rol(a, s);

/* The 64 steps once, for every implementation: S(function, a, b, c, d, message word, constant, shift). */
#define MD5_STEPS(S) \
    S(F, a, b, c, d, 0, 0, 7) \
    S(F, d, a, b, c, 1, 1, 12) \
    S(F, c, d, a, b, 2, 2, 17) \
    S(F, b, c, d, a, 3, 3, 22) \
    S(F, a, b, c, d, 4, 4, 7) \
    S(F, d, a, b, c, 5, 5, 12) \
    S(F, c, d, a, b, 6, 6, 17) \
    S(F, b, c, d, a, 7, 7, 22) \
    S(F, a, b, c, d, 8, 8, 7) \
    S(F, d, a, b, c, 9, 9, 12) \
    S(F, c, d, a, b, 10, 10, 17) \
    S(F, b, c, d, a, 11, 11, 22) \
    S(F, a, b, c, d, 12, 12, 7) \
    S(F, d, a, b, c, 13, 13, 12) \
    S(F, c, d, a, b, 14, 14, 17) \
    S(F, b, c, d, a, 15, 15, 22) \
    S(G, a, b, c, d, 1, 16, 5) \
    S(G, d, a, b, c, 6, 17, 9) \
    S(G, c, d, a, b, 11, 18, 14) \
    S(G, b, c, d, a, 0, 19, 20) \
    S(G, a, b, c, d, 5, 20, 5) \
    S(G, d, a, b, c, 10, 21, 9) \
    S(G, c, d, a, b, 15, 22, 14) \
    S(G, b, c, d, a, 4, 23, 20) \
    S(G, a, b, c, d, 9, 24, 5) \
    S(G, d, a, b, c, 14, 25, 9) \
    S(G, c, d, a, b, 3, 26, 14) \
    S(G, b, c, d, a, 8, 27, 20) \
    S(G, a, b, c, d, 13, 28, 5) \
    S(G, d, a, b, c, 2, 29, 9) \
    S(G, c, d, a, b, 7, 30, 14) \
    S(G, b, c, d, a, 12, 31, 20) \
    S(H, a, b, c, d, 5, 32, 4) \
    S(H, d, a, b, c, 8, 33, 11) \
    S(H, c, d, a, b, 11, 34, 16) \
    S(H, b, c, d, a, 14, 35, 23) \
    S(H, a, b, c, d, 1, 36, 4) \
    S(H, d, a, b, c, 4, 37, 11) \
    S(H, c, d, a, b, 7, 38, 16) \
    S(H, b, c, d, a, 10, 39, 23) \
    S(H, a, b, c, d, 13, 40, 4) \
    S(H, d, a, b, c, 0, 41, 11) \
    S(H, c, d, a, b, 3, 42, 16) \
    S(H, b, c, d, a, 6, 43, 23) \
    S(H, a, b, c, d, 9, 44, 4) \
    S(H, d, a, b, c, 12, 45, 11) \
    S(H, c, d, a, b, 15, 46, 16) \
    S(H, b, c, d, a, 2, 47, 23) \
    S(I, a, b, c, d, 0, 48, 6) \
    S(I, d, a, b, c, 7, 49, 10) \
    S(I, c, d, a, b, 14, 50, 15) \
    S(I, b, c, d, a, 5, 51, 21) \
    S(I, a, b, c, d, 12, 52, 6) \
    S(I, d, a, b, c, 3, 53, 10) \
    S(I, c, d, a, b, 10, 54, 15) \
    S(I, b, c, d, a, 1, 55, 21) \
    S(I, a, b, c, d, 8, 56, 6) \
    S(I, d, a, b, c, 15, 57, 10) \
    S(I, c, d, a, b, 6, 58, 15) \
    S(I, b, c, d, a, 13, 59, 21) \
    S(I, a, b, c, d, 4, 60, 6) \
    S(I, d, a, b, c, 11, 61, 10) \
    S(I, c, d, a, b, 2, 62, 15) \
    S(I, b, c, d, a, 9, 63, 21)

/* The portable compression function: `nblocks` 64-byte blocks into `st` (a, b, c, d). */
static void md5_compress(uint32_t st[4], const unsigned char *p, size_t nblocks)
{
    uint32_t a = st[0], b = st[1], c = st[2], d = st[3];
    for (; nblocks; nblocks--, p += 64) {
        uint32_t w[16];
        memcpy(w, p, 64); /* little-endian words: x86-64 and aarch64 (see md5lanes.pyx) */
        uint32_t aa = a, bb = b, cc = c, dd = d;
        MD5_STEPS(SCALAR_STEP)
        a += aa;
        b += bb;
        c += cc;
        d += dd;
    }
    st[0] = a;
    st[1] = b;
    st[2] = c;
    st[3] = d;
}

#ifdef MD5LANES_X86
/* AVX-512 steps (md5_x16, below the AVX2 code whose loads it shares). */
#define V_STEP(imm, a, b, c, d, w, i, s)                                               \
    a = _mm512_add_epi32(a, _mm512_add_epi32(_mm512_ternarylogic_epi32(b, c, d, imm), \
                                             _mm512_add_epi32(w, _mm512_set1_epi32(  \
                                                 (int)md5_k[i]))));                  \
    a = _mm512_add_epi32(b, _mm512_rol_epi32(a, s))
#define Z_IMM_F 0xca
#define Z_IMM_G 0xe4
#define Z_IMM_H 0x96
#define Z_IMM_I 0x39
#define Z_STEP(f, a, b, c, d, j, i, s) V_STEP(Z_IMM_##f, a, b, c, d, w[j], i, s);

/* 8 or 16 lanes with AVX2 (8 per 256-bit register; two register sets side by side when 16,
 * so each set's dependency chain hides in the other's).  Message words are loaded a lane's
 * 32 bytes at a time and transposed (gathers are slow on many AVX2 CPUs); rotations are two
 * shifts and an or. */
#define Y_F(b, c, d) _mm256_xor_si256(d, _mm256_and_si256(b, _mm256_xor_si256(c, d)))
#define Y_G(b, c, d) _mm256_xor_si256(c, _mm256_and_si256(d, _mm256_xor_si256(b, c)))
#define Y_H(b, c, d) _mm256_xor_si256(_mm256_xor_si256(b, c), d)
#define Y_I(b, c, d) _mm256_xor_si256(c, _mm256_or_si256(b, _mm256_xor_si256(d, ones)))
#define Y_ONE(f, a, b, c, d, wv, i, s)                                                      \
    a = _mm256_add_epi32(a, _mm256_add_epi32(Y_##f(b, c, d),                               \
                                             _mm256_add_epi32(wv, _mm256_set1_epi32(       \
                                                 (int)md5_k[i]))));                        \
    a = _mm256_add_epi32(b, _mm256_or_si256(_mm256_slli_epi32(a, s),                        \
                                            _mm256_srli_epi32(a, 32 - s)))
/* A block's input state kept (Y_SAVE) and added back after its 64 steps (Y_FEED_FORWARD), for
 * register set `g` (a0..d0 or a1..d1). */
#define Y_SAVE(g) __m256i aa##g = a##g, bb##g = b##g, cc##g = c##g, dd##g = d##g;
#define Y_FEED_FORWARD(g)                  \
    a##g = _mm256_add_epi32(a##g, aa##g); \
    b##g = _mm256_add_epi32(b##g, bb##g); \
    c##g = _mm256_add_epi32(c##g, cc##g); \
    d##g = _mm256_add_epi32(d##g, dd##g);
#define Y_STEP1(f, a, b, c, d, j, i, s) Y_ONE(f, a##0, b##0, c##0, d##0, w[0][j], i, s);
#define Y_STEP2(f, a, b, c, d, j, i, s) \
    Y_ONE(f, a##0, b##0, c##0, d##0, w[0][j], i, s); \
    Y_ONE(f, a##1, b##1, c##1, d##1, w[1][j], i, s);

/* Words 0-7 (half 0) or 8-15 (half 1) of the current block of 8 lanes, one register per word. */
__attribute__((target("avx2"))) static inline void md5_y_words(__m256i out[16],
                                                              const unsigned char *const p[8])
{
    for (int half = 0; half < 2; half++) {
        __m256i r[8], t[8], u[8];
        for (int i = 0; i < 8; i++)
            r[i] = _mm256_loadu_si256((const __m256i *)(p[i] + 32 * half));
        for (int i = 0; i < 8; i += 2) {
            t[i] = _mm256_unpacklo_epi32(r[i], r[i + 1]);
            t[i + 1] = _mm256_unpackhi_epi32(r[i], r[i + 1]);
        }
        for (int i = 0; i < 8; i += 4) {
            u[i] = _mm256_unpacklo_epi64(t[i], t[i + 2]);
            u[i + 1] = _mm256_unpackhi_epi64(t[i], t[i + 2]);
            u[i + 2] = _mm256_unpacklo_epi64(t[i + 1], t[i + 3]);
            u[i + 3] = _mm256_unpackhi_epi64(t[i + 1], t[i + 3]);
        }
        for (int k = 0; k < 4; k++) {
            out[8 * half + k] = _mm256_permute2x128_si256(u[k], u[k + 4], 0x20);
            out[8 * half + k + 4] = _mm256_permute2x128_si256(u[k], u[k + 4], 0x31);
        }
    }
}

__attribute__((target("avx2"))) static inline __m256i md5_y_load(uint32_t *const st[8], int word)
{
    uint32_t v[8];
    for (int i = 0; i < 8; i++)
        v[i] = st[i][word];
    return _mm256_loadu_si256((const __m256i *)v);
}

__attribute__((target("avx2"))) static inline void md5_y_store(uint32_t *const st[8], int word,
                                                              __m256i x)
{
    uint32_t v[8];
    _mm256_storeu_si256((__m256i *)v, x);
    for (int i = 0; i < 8; i++)
        st[i][word] = v[i];
}

/* Lanes 0-7, or 0-15 when `groups` is 2. */
__attribute__((target("avx2"))) static void md5_y(uint32_t *const st[MD5LANES_MAX],
                                                 const unsigned char *const ptr[MD5LANES_MAX],
                                                 size_t nblocks, int groups)
{
    const __m256i ones = _mm256_set1_epi32(-1);
    const unsigned char *p[MD5LANES_MAX];
    memcpy(p, ptr, sizeof p);
    __m256i a0 = md5_y_load(st, 0), b0 = md5_y_load(st, 1);
    __m256i c0 = md5_y_load(st, 2), d0 = md5_y_load(st, 3);
    if (groups == 1) {
        for (; nblocks; nblocks--) {
            __m256i w[1][16];
            md5_y_words(w[0], p);
            for (int i = 0; i < 8; i++)
                p[i] += 64;
            Y_SAVE(0)
            MD5_STEPS(Y_STEP1)
            Y_FEED_FORWARD(0)
        }
    } else {
        __m256i a1 = md5_y_load(st + 8, 0), b1 = md5_y_load(st + 8, 1);
        __m256i c1 = md5_y_load(st + 8, 2), d1 = md5_y_load(st + 8, 3);
        for (; nblocks; nblocks--) {
            __m256i w[2][16];
            md5_y_words(w[0], p);
            md5_y_words(w[1], p + 8);
            for (int i = 0; i < 16; i++)
                p[i] += 64;
            Y_SAVE(0)
            Y_SAVE(1)
            MD5_STEPS(Y_STEP2)
            Y_FEED_FORWARD(0)
            Y_FEED_FORWARD(1)
        }
        md5_y_store(st + 8, 0, a1);
        md5_y_store(st + 8, 1, b1);
        md5_y_store(st + 8, 2, c1);
        md5_y_store(st + 8, 3, d1);
    }
    md5_y_store(st, 0, a0);
    md5_y_store(st, 1, b0);
    md5_y_store(st, 2, c0);
    md5_y_store(st, 3, d0);
}

/* State word `word` of 16 lanes, as two sets of 8. */
__attribute__((target("avx512f"))) static inline __m512i md5_z_load(uint32_t *const st[16],
                                                                   int word)
{
    return _mm512_inserti64x4(_mm512_castsi256_si512(md5_y_load(st, word)),
                              md5_y_load(st + 8, word), 1);
}

__attribute__((target("avx512f"))) static inline void md5_z_store(uint32_t *const st[16],
                                                                 int word, __m512i x)
{
    md5_y_store(st, word, _mm512_castsi512_si256(x));
    md5_y_store(st + 8, word, _mm512_extracti64x4_epi64(x, 1));
}

/* 16 lanes: lane i hashes `nblocks` blocks from ptr[i] into st[i].  Message words are
 * loaded a lane's 32 bytes at a time and transposed, 8 lanes at a time, as for AVX2 (gathers
 * ran at half the speed on AMD Zen 4); F, G, H and I are one ternary-logic instruction each,
 * the rotations native. */
__attribute__((target("avx512f"))) static void md5_x16(uint32_t *const st[MD5LANES_MAX],
                                                       const unsigned char *const ptr[MD5LANES_MAX],
                                                       size_t nblocks)
{
    const unsigned char *p[MD5LANES_MAX];
    memcpy(p, ptr, sizeof p);
    __m512i a = md5_z_load(st, 0), b = md5_z_load(st, 1);
    __m512i c = md5_z_load(st, 2), d = md5_z_load(st, 3);
    for (; nblocks; nblocks--) {
        __m256i lo[16], hi[16];
        __m512i w[16];
        md5_y_words(lo, p);
        md5_y_words(hi, p + 8);
        for (int j = 0; j < 16; j++)
            w[j] = _mm512_inserti64x4(_mm512_castsi256_si512(lo[j]), hi[j], 1);
        for (int i = 0; i < 16; i++)
            p[i] += 64;
        __m512i aa = a, bb = b, cc = c, dd = d;
        MD5_STEPS(Z_STEP)
        a = _mm512_add_epi32(a, aa);
        b = _mm512_add_epi32(b, bb);
        c = _mm512_add_epi32(c, cc);
        d = _mm512_add_epi32(d, dd);
    }
    md5_z_store(st, 0, a);
    md5_z_store(st, 1, b);
    md5_z_store(st, 2, c);
    md5_z_store(st, 3, d);
}

/* 8 lanes with AVX-512's instructions on 256-bit registers (AVX-512VL): ternary logic and
 * native rotations, half the work of md5_y's single register set. */
#define W_STEP(f, a, b, c, d, j, i, s)                                                     \
    a = _mm256_add_epi32(a, _mm256_add_epi32(_mm256_ternarylogic_epi32(b, c, d, Z_IMM_##f), \
                                             _mm256_add_epi32(w[j], _mm256_set1_epi32(     \
                                                 (int)md5_k[i]))));                        \
    a = _mm256_add_epi32(b, _mm256_rol_epi32(a, s));

__attribute__((target("avx512f,avx512vl"))) static void md5_v8(
    uint32_t *const st[MD5LANES_MAX], const unsigned char *const ptr[MD5LANES_MAX],
    size_t nblocks)
{
    const unsigned char *p[MD5LANES_MAX];
    memcpy(p, ptr, sizeof p);
    __m256i a = md5_y_load(st, 0), b = md5_y_load(st, 1);
    __m256i c = md5_y_load(st, 2), d = md5_y_load(st, 3);
    for (; nblocks; nblocks--) {
        __m256i w[16];
        md5_y_words(w, p);
        for (int i = 0; i < 8; i++)
            p[i] += 64;
        __m256i aa = a, bb = b, cc = c, dd = d;
        MD5_STEPS(W_STEP)
        a = _mm256_add_epi32(a, aa);
        b = _mm256_add_epi32(b, bb);
        c = _mm256_add_epi32(c, cc);
        d = _mm256_add_epi32(d, dd);
    }
    md5_y_store(st, 0, a);
    md5_y_store(st, 1, b);
    md5_y_store(st, 2, c);
    md5_y_store(st, 3, d);
}

/* Which vector code this CPU runs: MD5LANES_AVX512, MD5LANES_AVX2 or MD5LANES_SCALAR. */
static int md5lanes_vector(void)
{
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl"))
        return MD5LANES_AVX512;
    return __builtin_cpu_supports("avx2") ? MD5LANES_AVX2 : MD5LANES_SCALAR;
}
#else
static void md5_x16(uint32_t *const st[MD5LANES_MAX], const unsigned char *const ptr[MD5LANES_MAX],
                    size_t nblocks)
{
    for (int i = 0; i < MD5LANES_MAX; i++)
        md5_compress(st[i], ptr[i], nblocks);
}
static void md5_y(uint32_t *const st[MD5LANES_MAX], const unsigned char *const ptr[MD5LANES_MAX],
                  size_t nblocks, int groups)
{
    md5_x16(st, ptr, nblocks);
}
static int md5lanes_vector(void) { return MD5LANES_SCALAR; }
#endif

/* -- batches -------------------------------------------------------------------------------- */

static int md5lanes_use_vector = -1; /* -1: not decided yet */

static int md5lanes_level(void)
{
    int use = __atomic_load_n(&md5lanes_use_vector, __ATOMIC_RELAXED);
    if (use < 0) {
        use = md5lanes_vector();
        __atomic_store_n(&md5lanes_use_vector, use, __ATOMIC_RELAXED);
    }
    return use;
}

/* Hash `count` streams side by side: stream i's nblocks[i] whole blocks from p[i] into st[i]
 * (p and nblocks are advanced to the end).  Up to 16 streams share the lanes at a time; when
 * one runs out, the lanes go on with the others (an idle lane re-reads a live lane's bytes
 * into a state nobody uses). */
static void md5lanes_many(uint32_t *const *st, const unsigned char **p, size_t *nblocks,
                          size_t count)
{
    int use = md5lanes_level();
    uint32_t idle_state[MD5LANES_MAX][4];
    for (;;) {
        size_t idx[MD5LANES_MAX];
        int active = 0;
        for (size_t i = 0; i < count && active < MD5LANES_MAX; i++)
            if (nblocks[i])
                idx[active++] = i;
        if (!active)
            return;
        if (active == 1 || use == MD5LANES_SCALAR) {
            for (int k = 0; k < active; k++) {
                size_t i = idx[k];
                md5_compress(st[i], p[i], nblocks[i]);
                p[i] += 64 * nblocks[i];
                nblocks[i] = 0;
            }
            continue;
        }
        size_t n = nblocks[idx[0]];
        for (int k = 1; k < active; k++)
            if (nblocks[idx[k]] < n)
                n = nblocks[idx[k]];
        uint32_t *lst[MD5LANES_MAX];
        const unsigned char *lptr[MD5LANES_MAX];
        for (int k = 0; k < MD5LANES_MAX; k++) {
            size_t i = idx[k < active ? k : 0];
            lst[k] = k < active ? st[i] : idle_state[k];
            lptr[k] = p[i];
        }
        if (use == MD5LANES_AVX512 && active <= 8)
            md5_v8(lst, lptr, n);
        else if (use == MD5LANES_AVX512)
            md5_x16(lst, lptr, n);
        else
            md5_y(lst, lptr, n, active > 8 ? 2 : 1);
        for (int k = 0; k < active; k++) {
            p[idx[k]] += 64 * n;
            nblocks[idx[k]] -= n;
        }
    }
}

/* For tests and benchmarks: the vector code to use (MD5LANES_*), at most what the CPU runs;
 * returns the one now in use.  Only while nothing hashes. */
static int md5lanes_set_vector(int level)
{
    int best = md5lanes_vector();
    int use = level < best ? level : best;
    __atomic_store_n(&md5lanes_use_vector, use, __ATOMIC_RELAXED);
    return use;
}

#endif

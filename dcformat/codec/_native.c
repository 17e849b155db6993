/* Native decode kernels for dcformat (see dcformat/native.py, which validates the
 * header-level rules before calling in and turns the results into FormatErrors).
 *
 * Huffman streams are canonical, LSB-first, most significant code bit first, codes
 * of at most 16 bits, cut into chunks of chunk_size symbols. Decoding is table
 * driven: an 11-bit root table whose entries hold a symbol and its length (in the low bits: a
 * shift count as it is, off the critical path of the next lookup), with
 * second-level tables for longer codes; where at least half of the root entries begin with two
 * complete codes, a table of code pairs decodes both in one lookup. Several chunks are decoded
 * interleaved, and each 64-bit peek makes three lookups. Every read is bounds checked (bits past the
 * end of the buffer read as zero) and every write lands inside the caller's buffer,
 * whatever the input; a chunk that does not end exactly where the next one starts is
 * reported to the caller. The GIL is released while decoding (short calls excepted), so
 * Python threads can decode disjoint chunk ranges of one stream in parallel.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LEN 16
#define ROOT_BITS 11
#define SUB_FLAG 0x40u /* bit 6: a root entry that points to a subtable */
#define NZ_FLAG 0x80u  /* bit 7: the symbol's value is nonzero */
#ifndef GROUP
#define GROUP 4 /* chunks decoded interleaved */
#endif
#ifndef STEPS
#define STEPS 8 /* three-symbol steps between bounds checks */
#endif
#define MAX_ALPHABET 65536

/* The GIL is released only around work worth handing it over for: on two threads that both run
 * Python between calls, each release of a short call lets the other thread take the GIL and this
 * one then waits for it back, which costs more than the call. */
#define RELEASE_MIN_ITEMS (1 << 15)      /* symbols or entries */
#define RELEASE_MIN_BYTES (1 << 18)      /* checksummed bytes */
#define BEGIN_RELEASE(worth) { PyThreadState *save_ = (worth) ? PyEval_SaveThread() : NULL;
#define END_RELEASE if (save_) PyEval_RestoreThread(save_); }

#if defined(__GNUC__)
#define INLINE static inline __attribute__((always_inline))
#else
#define INLINE static inline
#endif

typedef struct {
    /* length | NZ_FLAG | symbol << 8 | value << 32 (values of up to 4 bytes), or
     * SUB_FLAG | subtable base << 8 */
    uint64_t root[1 << ROOT_BITS];
    uint64_t *sub;
    unsigned root_bits;
    uint64_t root_mask, sub_mask;
} Lut;

typedef struct {
    const uint8_t *data;
    uint64_t size; /* bytes */
    uint64_t bit_length;
    const uint64_t *offsets; /* bit offsets of chunks 1..n_chunks-1 */
    uint64_t count, chunk_size, n_chunks;
} Stream;

/* A table entry for symbol s of code length len: its value (vsize bytes, of up to 4) and nonzero
 * flag come with it, so decoding reads them from the entry it looked up. */
INLINE uint64_t entry_of(unsigned len, Py_ssize_t s, const uint8_t *values, int vsize, const uint8_t *nonzero) {
    uint64_t e = (uint64_t)len | (uint64_t)s << 8 | (nonzero && nonzero[s] ? NZ_FLAG : 0);
    if (vsize == 4) {
        uint32_t v;
        memcpy(&v, values + 4 * s, 4);
        e |= (uint64_t)v << 32;
    } else if (vsize == 2) {
        uint16_t v;
        memcpy(&v, values + 2 * s, 2);
        e |= (uint64_t)v << 32;
    }
    return e;
}

/* The low `len` bits of c reversed (the stream holds each code most significant bit first). */
static uint64_t reversed(uint64_t c, unsigned len) {
    static uint8_t rev8[256];
    static int ready;
    if (!ready) { /* idempotent: threads racing here write the same bytes */
        for (unsigned b = 0; b < 256; b++) {
            unsigned r = 0;
            for (unsigned i = 0; i < 8; i++) r |= ((b >> i) & 1) << (7 - i);
            rev8[b] = (uint8_t)r;
        }
        ready = 1;
    }
    uint64_t r16 = (uint64_t)rev8[c & 0xFF] << 8 | rev8[(c >> 8) & 0xFF];
    return r16 >> (16 - len);
}

/* Build the lookup tables of a complete canonical code, each entry with its symbol's value and
 * nonzero flag (`values` NULL or `nonzero` NULL: none). Returns NULL or an error text. */
static const char *build_lut(const uint8_t *lengths, Py_ssize_t k, Lut *t, const uint8_t *values, int vsize,
                             const uint8_t *nonzero) {
    if (!values) vsize = 0;
    uint64_t bl_count[MAX_LEN + 1] = {0}, next_code[MAX_LEN + 1] = {0}, kraft = 0, code = 0;
    unsigned max_len = 0;
    Py_ssize_t used = 0;
    t->sub = NULL;
    for (Py_ssize_t s = 0; s < k; s++) {
        unsigned len = lengths[s];
        if (len > MAX_LEN) return "code length above 16";
        if (len) {
            bl_count[len]++;
            used++;
            kraft += (uint64_t)1 << (MAX_LEN - len);
            if (len > max_len) max_len = len;
        }
    }
    if (used < 2 || kraft != (uint64_t)1 << MAX_LEN)
        return "the table must be a complete code of two or more symbols";
    for (unsigned bits = 1; bits <= MAX_LEN; bits++) {
        code = (code + bl_count[bits - 1]) << 1;
        next_code[bits] = code;
    }
    unsigned root_bits = max_len < ROOT_BITS ? max_len : ROOT_BITS;
    unsigned sub_bits = max_len - root_bits;
    t->root_bits = root_bits;
    t->root_mask = ((uint64_t)1 << root_bits) - 1;
    t->sub_mask = ((uint64_t)1 << sub_bits) - 1;
    /* Pass 1: short codes into the root (a complete code fills every entry the short codes and
     * the subtable pointers do not); one subtable per root prefix of long codes. */
    if (max_len > root_bits) memset(t->root, 0, sizeof(uint64_t) << root_bits);
    uint64_t n_sub = 0;
    uint64_t codes_next[MAX_LEN + 1];
    memcpy(codes_next, next_code, sizeof(codes_next));
    for (Py_ssize_t s = 0; s < k; s++) {
        unsigned len = lengths[s];
        if (!len) continue;
        uint64_t r = reversed(codes_next[len]++, len);
        if (len <= root_bits) {
            const uint64_t e = entry_of(len, s, values, vsize, nonzero);
            for (uint64_t f = r; f < (uint64_t)1 << root_bits; f += (uint64_t)1 << len) t->root[f] = e;
        } else if (!(t->root[r & t->root_mask] & SUB_FLAG)) {
            t->root[r & t->root_mask] = SUB_FLAG | n_sub << 8;
            n_sub += (uint64_t)1 << sub_bits;
        }
    }
    if (!n_sub) return NULL;
    t->sub = malloc(n_sub * sizeof(uint64_t));
    if (!t->sub) return "out of memory";
    /* Pass 2: long codes into their subtables. */
    memcpy(codes_next, next_code, sizeof(codes_next));
    for (Py_ssize_t s = 0; s < k; s++) {
        unsigned len = lengths[s];
        if (!len) continue;
        uint64_t c = codes_next[len]++;
        if (len <= root_bits) continue;
        uint64_t r = reversed(c, len);
        uint64_t base = (t->root[r & t->root_mask] >> 8) & 0xFFFFu, rest = r >> root_bits;
        const uint64_t e = entry_of(len, s, values, vsize, nonzero);
        for (uint64_t f = rest; f < (uint64_t)1 << sub_bits; f += (uint64_t)1 << (len - root_bits))
            t->sub[base + f] = e;
    }
    return NULL;
}

INLINE uint64_t lookup(const Lut *t, uint64_t w) {
    uint64_t e = t->root[w & t->root_mask];
    if (e & SUB_FLAG) e = t->sub[((e >> 8) & 0xFFFFFFu) + ((w >> t->root_bits) & t->sub_mask)];
    return e;
}

INLINE uint64_t load64(const uint8_t *p) {
    uint64_t w;
    memcpy(&w, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    w = __builtin_bswap64(w);
#endif
    return w;
}

/* At least 57 stream bits from bit `pos`; bits past the end of the buffer read as 0. */
INLINE uint64_t peek_safe(const Stream *s, uint64_t pos) {
    uint64_t byte = pos >> 3, w = 0;
    if (byte + 8 <= s->size) return load64(s->data + byte) >> (pos & 7);
    for (unsigned i = 0; i < 8 && byte + i < s->size; i++) w |= (uint64_t)s->data[byte + i] << (8 * i);
    return w >> (pos & 7);
}

/* The last bit position from which load64 reads inside the data: (size - 8) * 8. Data shorter
 * than 8 bytes has none; it gives 0, so a caller must also check size >= 8 or, as the
 * interleaved loops do, demand room past the limit. */
INLINE uint64_t fast_limit_of(const Stream *s) { return s->size >= 8 ? (s->size - 8) * 8 : 0; }

INLINE uint64_t chunk_start(const Stream *s, uint64_t c) { return c ? s->offsets[c - 1] : 0; }

INLINE uint64_t chunk_end(const Stream *s, uint64_t c) {
    return c + 1 < s->n_chunks ? s->offsets[c] : s->bit_length;
}

INLINE uint64_t chunk_count(const Stream *s, uint64_t c) {
    return c + 1 < s->n_chunks ? s->chunk_size : s->count - c * s->chunk_size;
}

typedef struct {
    const uint8_t *values; /* symbol -> value, vsize bytes each */
    const uint8_t *nonzero; /* symbol -> 1 if its value is nonzero */
    uint8_t *out;          /* symbol i of the stream goes to out + i * vsize */
    uint64_t nonzeros;
    uint64_t symbol_sum;   /* sum of the decoded symbols (the gaps of a sparse tensor) */
    int64_t bad_chunk;     /* first chunk that does not end where it must, or -1 */
} Sink;

#define COUNT_NZ 1 /* what a decode adds up besides writing values (the `what` of the kernels) */
#define SUM 2

#define EMIT(j, i, e)                                                                           \
    do {                                                                                        \
        const uint64_t e_ = (e);                                                                \
        if (vsize == 4) {                                                                       \
            uint32_t v_ = (uint32_t)(e_ >> 32);                                                 \
            memcpy(o[j] + (i) * 4, &v_, 4);                                                     \
        } else if (vsize == 2) {                                                                \
            uint16_t v_ = (uint16_t)(e_ >> 32);                                                 \
            memcpy(o[j] + (i) * 2, &v_, 2);                                                     \
        } else {                                                                                \
            memcpy(o[j] + (i) * vsize, vals + ((e_ >> 8) & 0xFFFFu) * vsize, vsize);            \
        }                                                                                       \
        if (what & COUNT_NZ) nz += e_ & NZ_FLAG; /* NZ_FLAG (128) a nonzero: divided out below */  \
        if (what & SUM) sum += (e_ >> 8) & 0xFFFFu;                                             \
    } while (0)

/* lookup() on the tables' fields held in locals: stores into the output (bytes, which may alias
 * anything) then do not make the compiler reload them. */
#define LOOKUP(w) lookup_in(root, sub, root_mask, root_bits, sub_mask, (w))

INLINE uint64_t lookup_in(const uint64_t *root, const uint64_t *sub, uint64_t root_mask, unsigned root_bits,
                          uint64_t sub_mask, uint64_t w) {
    uint64_t e = root[w & root_mask];
    if (e & SUB_FLAG) e = sub[((e >> 8) & 0xFFFFFFu) + ((w >> root_bits) & sub_mask)];
    return e;
}

/* Decode symbols i0..n-1 of g interleaved lanes (lane j: chunk bits from pos[j], values to o[j]),
 * three symbols a 64-bit peek while every lane is far enough from the end of the data. */
INLINE void decode_lanes(const Lut *t, const Stream *s, const uint8_t *vals, uint64_t *pos, uint8_t **o,
                         const int g, uint64_t i, uint64_t n, const int vsize, const int what, uint64_t *nz_out,
                         uint64_t *sum_out) {
    uint64_t nz = 0, sum = 0;
    const uint8_t *const data = s->data;
    const uint64_t *const root = t->root, *const sub = t->sub;
    const uint64_t root_mask = t->root_mask, sub_mask = t->sub_mask;
    const unsigned root_bits = t->root_bits;
    const uint64_t fast_limit = fast_limit_of(s);
    for (; i + 3 * STEPS <= n; i += 3 * STEPS) {
        int near_end = 0;
        for (int j = 0; j < g; j++) near_end |= pos[j] > fast_limit || fast_limit - pos[j] < 48 * STEPS;
        if (near_end) break;
        for (int step = 0; step < STEPS; step++) {
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC unroll 4
#endif
            for (int j = 0; j < g; j++) {
                uint64_t w = load64(data + (pos[j] >> 3)) >> (pos[j] & 7);
                uint64_t e0 = LOOKUP(w);
                unsigned l0 = e0 & 63; /* the length is the low bits: a shift count as it is */
                w >>= l0;
                uint64_t e1 = LOOKUP(w);
                unsigned l1 = e1 & 63;
                w >>= l1;
                uint64_t e2 = LOOKUP(w);
                pos[j] += l0 + l1 + (e2 & 63);
                uint64_t at = i + 3 * step;
                EMIT(j, at, e0);
                EMIT(j, at + 1, e1);
                EMIT(j, at + 2, e2);
            }
        }
    }
    for (int j = 0; j < g; j++) {
        for (uint64_t k = i; k < n; k++) {
            uint64_t e = lookup(t, peek_safe(s, pos[j]));
            pos[j] += e & 63;
            EMIT(j, k, e);
        }
    }
    *nz_out += nz;
    *sum_out += sum;
}

/* Two codes a lookup, as zstd's double-symbol Huffman tables: the pair entry of root index i
 * holds the values of the one or two codes that the root_bits bits i begin with (two when the
 * second is complete within them too), so a lookup decodes both. Root indices whose first code
 * is longer than root_bits keep the root entry (SUB_FLAG) and go on to its subtable. For values
 * of 2 and 4 bytes. */
typedef struct {
    uint64_t vals; /* the first value in the low vsize bytes, the second in the next vsize */
    uint64_t info; /* bits consumed | SUB_FLAG | nonzeros << 7 | symbol sum << 32 | symbols << 56 */
} Pair;

#define PAIR_NZ_MASK (3u << 7) /* nonzeros (0-2) times NZ_FLAG: counted as EMIT counts them */
#define PAIR_SUM(info) (((info) >> 32) & 0x1FFFFu)

/* Fill the pair table of t; returns the number of entries with two codes. A stream's bits are
 * close to uniform, so their share of the table is the share of lookups that yield two codes. */
static uint64_t build_pairs(const Lut *t, Pair *p, int vsize) {
    uint64_t two = 0;
    const uint64_t size = (uint64_t)1 << t->root_bits, vmask = vsize == 4 ? 0xFFFFFFFFu : 0xFFFFu;
    for (uint64_t i = 0; i < size; i++) {
        const uint64_t e0 = t->root[i];
        if (e0 & SUB_FLAG) {
            p[i].vals = e0;
            p[i].info = SUB_FLAG;
            continue;
        }
        const unsigned l0 = e0 & 63;
        uint64_t vals = (e0 >> 32) & vmask, bits = l0, n = 1, nz = (e0 & NZ_FLAG) != 0;
        uint64_t sum = (e0 >> 8) & 0xFFFFu;
        const uint64_t e1 = t->root[i >> l0]; /* its low root_bits - l0 bits are i's next bits */
        if (!(e1 & SUB_FLAG) && l0 + (e1 & 63) <= t->root_bits) {
            vals |= ((e1 >> 32) & vmask) << (8 * vsize);
            bits += e1 & 63;
            n = 2;
            nz += (e1 & NZ_FLAG) != 0;
            sum += (e1 >> 8) & 0xFFFFu;
            two++;
        }
        p[i].vals = vals;
        p[i].info = bits | nz << 7 | sum << 32 | n << 56;
    }
    return two;
}

/* One pair lookup on the bits w of lane j: writes one or two values at o[j] + k, then advances
 * k, w and used (the bits consumed). */
#define PAIR_STEP(j, w, k, used)                                                                   \
    do {                                                                                           \
        const Pair *p_ = pairs + ((w) & root_mask);                                                \
        const uint64_t info_ = p_->info;                                                           \
        if (__builtin_expect(info_ & SUB_FLAG, 0)) {                                               \
            const uint64_t e1_ = sub[((p_->vals >> 8) & 0xFFFFFFu) + (((w) >> root_bits) & sub_mask)]; \
            EMIT(j, k, e1_);                                                                       \
            (k) += 1;                                                                              \
            (w) >>= e1_ & 63;                                                                      \
            (used) += e1_ & 63;                                                                    \
        } else {                                                                                   \
            if (vsize == 4) {                                                                      \
                memcpy(o[j] + (k) * 4, &p_->vals, 8);                                              \
            } else {                                                                               \
                const uint32_t v2_ = (uint32_t)p_->vals;                                           \
                memcpy(o[j] + (k) * 2, &v2_, 4);                                                   \
            }                                                                                      \
            (k) += info_ >> 56;                                                                    \
            (w) >>= info_ & 63;                                                                    \
            (used) += info_ & 63;                                                                  \
            if (what & COUNT_NZ) nz += info_ & PAIR_NZ_MASK;                                       \
            if (what & SUM) sum += PAIR_SUM(info_);                                                \
        }                                                                                          \
    } while (0)

/* Decode g interleaved lanes with pair lookups (lane j: bits from pos[j], symbols at[j] ..
 * end[j]-1 to o[j]), three lookups a 64-bit peek, while every lane has room for STEPS steps of
 * six symbols and is far enough from the end of the data. Lanes stop wherever they are. */
INLINE void pair_lanes(const Lut *t, const Pair *pairs, const Stream *s, uint64_t *pos, uint8_t **o, uint64_t *at,
                       const uint64_t *end, const int g, const int vsize, const int what, uint64_t *nz_out,
                       uint64_t *sum_out) {
    uint64_t nz = 0, sum = 0;
    const uint8_t *const data = s->data, *const vals = NULL; /* EMIT's 8-byte values: no pairs */
    const uint64_t *const sub = t->sub;
    const uint64_t root_mask = t->root_mask, sub_mask = t->sub_mask;
    const unsigned root_bits = t->root_bits;
    const uint64_t fast_limit = fast_limit_of(s);
    (void)vals;
    for (;;) {
        int stop = 0;
        for (int j = 0; j < g; j++)
            stop |= pos[j] > fast_limit || fast_limit - pos[j] < 48 * STEPS || end[j] - at[j] < 6 * STEPS;
        if (stop) break;
        for (int step = 0; step < STEPS; step++) {
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC unroll 4
#endif
            for (int j = 0; j < g; j++) {
                uint64_t w = load64(data + (pos[j] >> 3)) >> (pos[j] & 7);
                uint64_t k = at[j], used = 0;
                PAIR_STEP(j, w, k, used);
                PAIR_STEP(j, w, k, used);
                PAIR_STEP(j, w, k, used);
                pos[j] += used;
                at[j] = k;
            }
        }
    }
    *nz_out += nz;
    *sum_out += sum;
}

/* Lane j alone to its end: pair lookups while two symbols are left and a 64-bit load stays in
 * the data, then one symbol at a time with reads past the data as zeros. */
INLINE void finish_lane(const Lut *t, const Pair *pairs, const Stream *s, uint64_t *pos, uint8_t **o, uint64_t *at,
                        const uint64_t *end, const int j, const int vsize, const int what, uint64_t *nz_out,
                        uint64_t *sum_out) {
    uint64_t nz = 0, sum = 0, k = at[j], p = pos[j];
    const uint8_t *const data = s->data, *const vals = NULL; /* EMIT's 8-byte values: no pairs */
    const uint64_t *const sub = t->sub;
    const uint64_t root_mask = t->root_mask, sub_mask = t->sub_mask;
    const unsigned root_bits = t->root_bits;
    const uint64_t fast_limit = fast_limit_of(s);
    (void)vals;
    while (end[j] - k >= 2 && s->size >= 8 && p <= fast_limit) { /* a load of 8 bytes stays inside */
        uint64_t w = load64(data + (p >> 3)) >> (p & 7), used = 0;
        PAIR_STEP(j, w, k, used);
        p += used;
    }
    for (; k < end[j]; k++) {
        const uint64_t e = lookup(t, peek_safe(s, p));
        p += e & 63;
        EMIT(j, k, e);
    }
    at[j] = k;
    pos[j] = p;
    *nz_out += nz;
    *sum_out += sum;
}

/* Decode chunks c .. c+g-1 (all but the stream's last chunk hold chunk_size symbols) interleaved,
 * with the pair table where there is one; returns 0, or 1 when one ends badly. */
INLINE int decode_group(const Lut *t, const Pair *pairs, const Stream *s, Sink *sink, uint64_t c, const int g,
                        const int vsize, const int what) {
    uint64_t pos[GROUP], at[GROUP], end[GROUP];
    uint8_t *o[GROUP];
    uint64_t nz = 0, sum = 0, total = 0;
    for (int j = 0; j < g; j++) {
        pos[j] = chunk_start(s, c + j);
        o[j] = sink->out + (c + j) * s->chunk_size * vsize;
        at[j] = 0;
        end[j] = chunk_count(s, c + j);
        total += end[j];
    }
    const int short_last = g > 1 && end[g - 1] < end[0]; /* the stream's last chunk: the rest go on */
    if (vsize != 8 && pairs) {
        pair_lanes(t, pairs, s, pos, o, at, end, g, vsize, what, &nz, &sum);
        if (short_last) {
            finish_lane(t, pairs, s, pos, o, at, end, g - 1, vsize, what, &nz, &sum);
            pair_lanes(t, pairs, s, pos, o, at, end, g - 1, vsize, what, &nz, &sum);
        }
        for (int j = 0; j < g; j++) finish_lane(t, pairs, s, pos, o, at, end, j, vsize, what, &nz, &sum);
    } else {
        decode_lanes(t, s, sink->values, pos, o, g, 0, end[g - 1], vsize, what, &nz, &sum);
        if (short_last) decode_lanes(t, s, sink->values, pos, o, g - 1, end[g - 1], end[0], vsize, what, &nz, &sum);
    }
    sink->nonzeros += what & COUNT_NZ ? nz / NZ_FLAG : total;
    sink->symbol_sum += sum;
    for (int j = 0; j < g; j++) {
        if (pos[j] != chunk_end(s, c + j)) {
            sink->bad_chunk = (int64_t)(c + j);
            return 1;
        }
    }
    return 0;
}

INLINE void decode_range(const Lut *t, const Pair *pairs, const Stream *s, Sink *sink, uint64_t first,
                         uint64_t last, const int vsize, const int what) {
    uint64_t c = first;
    for (; c + GROUP <= last; c += GROUP)
        if (decode_group(t, pairs, s, sink, c, GROUP, vsize, what)) return;
    for (; c < last; c++)
        if (decode_group(t, pairs, s, sink, c, 1, vsize, what)) return;
}

/* One kernel per value size and per `what`: nonzeros are counted only where some used symbol's
 * value is zero (else each decoded symbol counts), symbol sums only when asked for. On x86-64 a
 * second set is compiled for CPUs with BMI2 (shifts by a register count in one operation, not
 * three: about 7% faster) and chosen when the module loads. */
#define RANGE(v, w, attr, suffix)                                                                \
    attr static void decode_range_##v##_##w##suffix(const Lut *t, const Pair *p, const Stream *s, Sink *k, \
                                                    uint64_t a, uint64_t b) {                    \
        decode_range(t, p, s, k, a, b, v, w);                                                    \
    }
#define RANGES(v, attr, suffix) \
    RANGE(v, 0, attr, suffix) RANGE(v, 1, attr, suffix) RANGE(v, 2, attr, suffix) RANGE(v, 3, attr, suffix)
#define KERNELS(attr, suffix) RANGES(2, attr, suffix) RANGES(4, attr, suffix) RANGES(8, attr, suffix)
#define TABLE(suffix)                                                                                          \
    {                                                                                                          \
        {decode_range_2_0##suffix, decode_range_2_1##suffix, decode_range_2_2##suffix, decode_range_2_3##suffix}, \
        {decode_range_4_0##suffix, decode_range_4_1##suffix, decode_range_4_2##suffix, decode_range_4_3##suffix}, \
        {decode_range_8_0##suffix, decode_range_8_1##suffix, decode_range_8_2##suffix, decode_range_8_3##suffix}, \
    }
typedef void (*RangeFn)(const Lut *, const Pair *, const Stream *, Sink *, uint64_t, uint64_t);
KERNELS(, )
static const RangeFn RANGE_FNS[3][4] = TABLE();
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
KERNELS(__attribute__((target("bmi2"))), _bmi2)
static const RangeFn RANGE_FNS_BMI2[3][4] = TABLE(_bmi2);
static int bmi2_ok(void) { return __builtin_cpu_supports("bmi2"); }
#else
#define RANGE_FNS_BMI2 RANGE_FNS
static int bmi2_ok(void) { return 0; }
#endif
static const RangeFn (*range_fns)[4] = RANGE_FNS;

static const uint8_t ZEROS[MAX_ALPHABET];

static int check_vsize(Py_ssize_t vsize) {
    if (vsize == 2 || vsize == 4 || vsize == 8) return 0;
    PyErr_SetString(PyExc_ValueError, "value size must be 2, 4 or 8 bytes");
    return -1;
}

PyDoc_STRVAR(decode_doc,
"decode(data, bit_length, lengths, chunk_size, offsets, count, first, last, values, vsize, nonzero, out,\n"
"       sums=True)\n"
"--\n\n"
"Decode chunks first..last-1 of a Huffman stream of `count` symbols, writing values[symbol]\n"
"(vsize bytes each) at out[index]. `offsets` holds the uint64 bit offsets of chunks 1..n-1,\n"
"`nonzero` (or None) one byte per symbol, counted over the decoded symbols.\n"
"Returns (bad_chunk, nonzeros, symbol_sum): bad_chunk is -1, or the first chunk in the\n"
"range that does not end at the next chunk's offset (bit_length for the last); symbol_sum\n"
"is the sum of the symbols decoded (0 when `sums` is false).");

static PyObject *py_decode(PyObject *self, PyObject *args) {
    Py_buffer data = {0}, lengths = {0}, offsets = {0}, values = {0}, nonzero = {0}, out = {0};
    unsigned long long bit_length, chunk_size, count, first, last;
    Py_ssize_t vsize;
    PyObject *nonzero_obj, *result = NULL;
    int sums = 1;
    if (!PyArg_ParseTuple(args, "y*Ky*Ky*KKKy*nOw*|p", &data, &bit_length, &lengths, &chunk_size, &offsets,
                          &count, &first, &last, &values, &vsize, &nonzero_obj, &out, &sums))
        return NULL;
    if (nonzero_obj != Py_None && PyObject_GetBuffer(nonzero_obj, &nonzero, PyBUF_SIMPLE) < 0) goto done;
    if (check_vsize(vsize) < 0) goto done;
    Py_ssize_t k = lengths.len;
    uint64_t n_chunks = chunk_size ? (count + chunk_size - 1) / chunk_size : 0;
    const char *err = NULL;
    if (k < 1 || k > MAX_ALPHABET) err = "the alphabet must have 1 to 65536 symbols";
    else if (!chunk_size) err = "chunk_size must be positive";
    else if (bit_length > (uint64_t)data.len * 8) err = "bit_length exceeds the data";
    else if ((uint64_t)offsets.len != (n_chunks ? n_chunks - 1 : 0) * 8) err = "wrong number of chunk offsets";
    else if (first > last || last > n_chunks) err = "chunk range out of bounds";
    else if ((uint64_t)values.len < (uint64_t)k * vsize) err = "values shorter than the alphabet";
    else if (nonzero.buf && nonzero.len < k) err = "nonzero flags shorter than the alphabet";
    else if ((uint64_t)out.len / vsize < count) err = "output buffer too small";
    if (!err) {
        const uint64_t *offs = offsets.buf;
        for (uint64_t c = 0; c + 1 < n_chunks && !err; c++)
            if (offs[c] > bit_length || (c && offs[c] < offs[c - 1])) err = "chunk offsets out of order or range";
    }
    if (err) {
        PyErr_SetString(PyExc_ValueError, err);
        goto done;
    }
    Lut *t = malloc(sizeof(Lut));
    if (!t) {
        PyErr_NoMemory();
        goto done;
    }
    Stream s = {data.buf, (uint64_t)data.len, bit_length, offsets.buf, count, chunk_size, n_chunks};
    Sink sink = {values.buf, nonzero.buf ? nonzero.buf : ZEROS, out.buf, 0, 0, -1};
    BEGIN_RELEASE((last - first) * chunk_size >= RELEASE_MIN_ITEMS)
    err = build_lut(lengths.buf, k, t, values.buf, (int)vsize, nonzero.buf);
    if (!err) {
        int what = sums ? SUM : 0;
        const uint8_t *len = lengths.buf;
        for (Py_ssize_t i = 0; i < k && !(what & COUNT_NZ); i++)
            if (len[i] && !sink.nonzero[i]) what |= COUNT_NZ;
        /* Pair tables where the range has more symbols than the table has entries. */
        const uint64_t symbols = (last * chunk_size < count ? last * chunk_size : count) - first * chunk_size;
        Pair *pairs = vsize != 8 && first < last && symbols >= (uint64_t)1 << t->root_bits
                          ? malloc(sizeof(Pair) << t->root_bits)
                          : NULL;
        if (pairs && build_pairs(t, pairs, (int)vsize) < (uint64_t)1 << (t->root_bits - 1)) {
            free(pairs); /* under half the lookups would yield two codes: one code a lookup is faster */
            pairs = NULL;
        }
        range_fns[vsize == 2 ? 0 : vsize == 4 ? 1 : 2][what](t, pairs, &s, &sink, first, last);
        free(pairs);
        if (!nonzero.buf) sink.nonzeros = 0;
    }
    free(t->sub);
    END_RELEASE
    free(t);
    if (err) PyErr_SetString(PyExc_ValueError, err);
    else result = Py_BuildValue("LKK", (long long)sink.bad_chunk, (unsigned long long)sink.nonzeros,
                                (unsigned long long)sink.symbol_sum);
done:
    PyBuffer_Release(&data);
    PyBuffer_Release(&lengths);
    PyBuffer_Release(&offsets);
    PyBuffer_Release(&values);
    PyBuffer_Release(&out);
    if (nonzero.obj) PyBuffer_Release(&nonzero);
    return result;
}

INLINE int64_t scatter_impl(const uint16_t *gaps, const uint16_t *codes, uint64_t n, const uint8_t *values,
                            uint64_t k, const uint8_t *nonzero, uint8_t *out, uint64_t numel, int64_t *position,
                            uint64_t *nonzeros, const int vsize) {
    int64_t p = *position;
    uint64_t nz = 0;
    for (uint64_t i = 0; i < n; i++) {
        p += (int64_t)gaps[i] + 1;
        uint16_t c = codes[i];
        if ((uint64_t)p >= numel || c >= k) {
            *nonzeros += nz;
            *position = p;
            return (int64_t)i;
        }
        memcpy(out + (uint64_t)p * vsize, values + (uint64_t)c * vsize, vsize);
        nz += nonzero[c];
    }
    *nonzeros += nz;
    *position = p;
    return -1;
}

/* Format 1.1 row scales (spec 5.6): out[p] = values[c] * row_scales[p / row_len] in float32,
 * counting the products that are not zero (NaN counts, -0.0 does not). */
static int64_t scatter_scaled(const uint16_t *gaps, const uint16_t *codes, uint64_t n, const float *values,
                              uint64_t k, const float *row_scales, uint64_t row_len, float *out, uint64_t numel,
                              int64_t *position, uint64_t *nonzeros) {
    int64_t p = *position;
    uint64_t nz = 0, row = p < 0 ? 0 : (uint64_t)p / row_len, row_end = (row + 1) * row_len;
    for (uint64_t i = 0; i < n; i++) {
        p += (int64_t)gaps[i] + 1;
        uint16_t c = codes[i];
        if ((uint64_t)p >= numel || c >= k) {
            *nonzeros += nz;
            *position = p;
            return (int64_t)i;
        }
        while ((uint64_t)p >= row_end) { /* at most rows + n steps in all: positions only grow */
            row++;
            row_end += row_len;
        }
        float v = values[c] * row_scales[row];
        out[p] = v;
        nz += v != 0.0f;
    }
    *nonzeros += nz;
    *position = p;
    return -1;
}

PyDoc_STRVAR(scatter_doc,
"scatter(gaps, codes, values, vsize, nonzero, out, position, row_scales=None, row_len=0)\n"
"--\n\n"
"Place entries into a dense output: for each (gap, code) pair of the uint16 buffers,\n"
"position += gap + 1 and out[position] = values[code] (vsize bytes each). `position`\n"
"starts as the position of the entry before the first (-1 at the start of a tensor).\n"
"Returns (bad_entry, position, nonzeros): bad_entry is -1, or the first entry whose\n"
"position falls outside out or whose code is outside values; position is then its position.\n"
"With `row_scales` (float32, one per row of `row_len` elements; values and out float32, vsize 4)\n"
"out[position] = values[code] * row_scales[position / row_len], and nonzeros counts the\n"
"products that are not zero (`nonzero` is ignored).");

static PyObject *py_scatter(PyObject *self, PyObject *args) {
    Py_buffer gaps = {0}, codes = {0}, values = {0}, nonzero = {0}, out = {0};
    Py_ssize_t vsize;
    long long position;
    PyObject *nonzero_obj, *scales_obj = Py_None, *result = NULL;
    Py_buffer scales = {0};
    unsigned long long row_len = 0;
    if (!PyArg_ParseTuple(args, "y*y*y*nOw*L|OK", &gaps, &codes, &values, &vsize, &nonzero_obj, &out, &position,
                          &scales_obj, &row_len))
        return NULL;
    if (scales_obj != Py_None && PyObject_GetBuffer(scales_obj, &scales, PyBUF_SIMPLE) < 0) goto done;
    if (nonzero_obj != Py_None && PyObject_GetBuffer(nonzero_obj, &nonzero, PyBUF_SIMPLE) < 0) goto done;
    if (check_vsize(vsize) < 0) goto done;
    const char *err = NULL;
    uint64_t k = (uint64_t)values.len / vsize, n = (uint64_t)gaps.len / 2;
    if (gaps.len != codes.len || gaps.len % 2) err = "gaps and codes must be uint16 buffers of one length";
    else if (k > MAX_ALPHABET) err = "more than 65536 values";
    else if (nonzero.buf && (uint64_t)nonzero.len < k) err = "nonzero flags shorter than the values";
    else if (position < -1 || position >= (long long)(out.len / vsize)) err = "position outside the output";
    else if (scales.buf && (vsize != 4 || !row_len || (uint64_t)scales.len / 4 < ((uint64_t)out.len / 4 + row_len - 1) / row_len))
        err = "row scales need float32 values, row_len >= 1 and a scale for every row";
    if (err) {
        PyErr_SetString(PyExc_ValueError, err);
        goto done;
    }
    uint64_t numel = (uint64_t)out.len / vsize, nz = 0;
    int64_t pos = position, bad;
    const uint8_t *flags = nonzero.buf ? nonzero.buf : ZEROS;
    BEGIN_RELEASE(n >= RELEASE_MIN_ITEMS)
    if (scales.buf)
        bad = scatter_scaled(gaps.buf, codes.buf, n, values.buf, k, scales.buf, row_len, out.buf, numel, &pos, &nz);
    else if (vsize == 2) bad = scatter_impl(gaps.buf, codes.buf, n, values.buf, k, flags, out.buf, numel, &pos, &nz, 2);
    else if (vsize == 4) bad = scatter_impl(gaps.buf, codes.buf, n, values.buf, k, flags, out.buf, numel, &pos, &nz, 4);
    else bad = scatter_impl(gaps.buf, codes.buf, n, values.buf, k, flags, out.buf, numel, &pos, &nz, 8);
    END_RELEASE
    result = Py_BuildValue("LLK", (long long)bad, (long long)pos, (unsigned long long)nz);
done:
    PyBuffer_Release(&gaps);
    PyBuffer_Release(&codes);
    PyBuffer_Release(&values);
    PyBuffer_Release(&out);
    if (nonzero.obj) PyBuffer_Release(&nonzero);
    if (scales.obj) PyBuffer_Release(&scales);
    return result;
}

PyDoc_STRVAR(scale_rows_doc,
"scale_rows(out, row_scales, row_len)\n"
"--\n\n"
"Multiply the float32 buffer `out`, rows of `row_len` elements, by its float32 row scales in\n"
"place (format 1.1, spec 5.6); returns how many products are not zero (NaN counts).");

static PyObject *py_scale_rows(PyObject *self, PyObject *args) {
    Py_buffer out = {0}, scales = {0};
    unsigned long long row_len;
    PyObject *result = NULL;
    if (!PyArg_ParseTuple(args, "w*y*K", &out, &scales, &row_len)) return NULL;
    uint64_t numel = (uint64_t)out.len / 4;
    if (out.len % 4 || scales.len % 4 || (numel && (!row_len || numel % row_len ||
                                                    (uint64_t)scales.len / 4 < numel / row_len))) {
        PyErr_SetString(PyExc_ValueError, "out must be float32 rows of row_len, with a scale for every row");
        goto done;
    }
    uint64_t nz = 0;
    float *o = out.buf;
    const float *rs = scales.buf;
    BEGIN_RELEASE(numel >= RELEASE_MIN_ITEMS)
    for (uint64_t r = 0; numel && r < numel / row_len; r++) {
        const float sc = rs[r];
        float *row = o + r * row_len;
        uint64_t rnz = 0;
        for (uint64_t j = 0; j < row_len; j++) {
            float v = row[j] * sc;
            row[j] = v;
            rnz += v != 0.0f;
        }
        nz += rnz;
    }
    END_RELEASE
    result = PyLong_FromUnsignedLongLong(nz);
done:
    PyBuffer_Release(&out);
    PyBuffer_Release(&scales);
    return result;
}

/* Packed header tables (format 1.2, spec 5.8 and 7.6; dcformat/codec/packed.py). These are the
 * fast path of a check the numpy code makes: any input they do not accept in full (every rule of
 * packed.py) returns an error text, and the caller runs the numpy code for the error it raises. */

#define MINI_MAX_LEN 7

/* A minimal LEB128 varint of at most 3 bytes at *pos. */
static int mini_varint(const uint8_t *d, uint64_t n, uint64_t *pos, uint64_t *value) {
    uint64_t v = 0;
    for (unsigned k = 0; k < 3 && *pos + k < n; k++) {
        uint8_t byte = d[*pos + k];
        v |= (uint64_t)(byte & 0x7F) << (7 * k);
        if (byte < 0x80) {
            if (byte == 0 && k) return -1;
            *pos += k + 1;
            *value = v;
            return 0;
        }
    }
    return -1;
}

/* The symbols of the mini stream at the start of d[0..n): returns NULL and sets *syms (malloc'd,
 * for the caller to free), *count and *end, or an error text. */
static const char *mini_stream(const uint8_t *d, uint64_t n, unsigned alphabet, uint64_t max_count,
                               uint16_t **syms, uint64_t *count, uint64_t *end) {
    uint64_t pos = 0, cnt, bits;
    *syms = NULL;
    if (mini_varint(d, n, &pos, &cnt) || mini_varint(d, n, &pos, &bits)) return "bad varint";
    if (cnt < 1 || cnt > max_count) return "bad count";
    if (pos >= n || d[pos] < 1 || d[pos] > alphabet) return "bad listed";
    unsigned listed = d[pos];
    uint64_t table_end = pos + 1 + (3 * (uint64_t)listed + 7) / 8;
    if (table_end > n) return "table cut short";
    uint8_t lengths[64] = {0};
    const uint8_t *f = d + pos + 1;
    uint64_t nbits = (table_end - pos - 1) * 8;
    for (uint64_t b = 0; b < nbits; b++) {
        unsigned bit = (f[b >> 3] >> (b & 7)) & 1;
        if (b < 3 * (uint64_t)listed) lengths[b / 3] |= (uint8_t)(bit << (b % 3));
        else if (bit) return "padding bits";
    }
    unsigned used = 0, only = 0, lo = MINI_MAX_LEN, hi = 0;
    for (unsigned s = 0; s < listed; s++) {
        if (!lengths[s]) continue;
        used++;
        only = s;
        if (lengths[s] < lo) lo = lengths[s];
        if (lengths[s] > hi) hi = lengths[s];
    }
    if (!used) return "empty table";
    if (bits < cnt * lo || bits > cnt * hi) return "bit length";
    *end = table_end + (bits + 7) / 8;
    if (*end > n) return "symbols cut short";
    Stream s = {d + table_end, *end - table_end, bits, NULL, cnt, cnt, 1};
    if ((bits & 7) && (s.data[s.size - 1] >> (bits & 7))) return "stream padding";
    if (used == 1) {
        if (lengths[only] != 1 || bits != cnt) return "one-symbol table";
        for (uint64_t i = 0; i < s.size; i++)
            if (s.data[i]) return "one-symbol stream";
    }
    uint16_t *out = malloc(cnt * sizeof(uint16_t));
    if (!out) return "out of memory";
    *syms = out;
    *count = cnt;
    if (used == 1) {
        for (uint64_t i = 0; i < cnt; i++) out[i] = (uint16_t)only;
        return NULL;
    }
    Lut *t = malloc(sizeof(Lut));
    if (!t) return "out of memory";
    const char *err = build_lut(lengths, alphabet, t, NULL, 0, NULL);
    uint64_t at = 0;
    for (uint64_t i = 0; !err && i < cnt; i++) {
        uint64_t e = lookup(t, peek_safe(&s, at));
        at += e & 63;
        out[i] = (uint16_t)((e >> 8) & 0xFFFFu);
    }
    free(t->sub); /* none: mini codes are shorter than the root table's bits */
    free(t);
    return err ? err : at == bits ? NULL : "stream does not end at its bit length";
}

/* The code-length table (bytes) a packed table holds, or NULL with *err set. */
static PyObject *unpack_table_impl(const uint8_t *d, uint64_t n, const char **err) {
    uint64_t cnt, end, total = 0;
    uint16_t *syms;
    PyObject *result = NULL;
    *err = mini_stream(d, n, 33, MAX_ALPHABET, &syms, &cnt, &end);
    if (!*err && end != n) *err = "bytes after the table";
    for (uint64_t i = 0; !*err && i < cnt; i++) {
        total += syms[i] > 16 ? (uint64_t)1 << (syms[i] - 16) : 1;
        if (total > MAX_ALPHABET) *err = "too many lengths";
    }
    if (!*err && (result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total))) {
        uint8_t *out = (uint8_t *)PyBytes_AS_STRING(result);
        memset(out, 0, total); /* unused symbols */
        uint64_t at = 0, acc = 0;
        for (uint64_t i = 0; i < cnt; i++) {
            unsigned s = syms[i];
            if (s >= 1 && s <= 16) {
                acc += s - 1;
                out[at] = (uint8_t)((acc + 15) % 16 + 1);
            }
            at += s > 16 ? (uint64_t)1 << (s - 16) : 1;
        }
    }
    free(syms);
    return result;
}

/* The little-endian values (bytes) a packed codebook holds, or NULL with *err set. */
static PyObject *unpack_codebook_impl(const uint8_t *d, uint64_t n, unsigned itemsize, const char **err) {
    uint64_t cnt, end, k = 0, total = 0;
    uint16_t *syms;
    PyObject *result = NULL;
    *err = mini_stream(d, n, 34, 2 * (uint64_t)MAX_ALPHABET, &syms, &cnt, &end);
    for (uint64_t i = 0; !*err && i < cnt; i++) {
        if (syms[i] == 33) {
            if (i + 1 == cnt || syms[i + 1] == 0 || syms[i + 1] == 33) *err = "bad negation";
            continue;
        }
        k++;
        total += syms[i] ? syms[i] - 1 : 0;
    }
    if (!*err && k > MAX_ALPHABET) *err = "too many values";
    if (!*err && n - end != (total + 7) / 8) *err = "extra-bit bytes";
    const uint8_t *area = d + end;
    if (!*err && (total & 7) && (area[n - end - 1] >> (total & 7))) *err = "extra-bit padding";
    if (!*err && (result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(k * itemsize)))) {
        uint8_t *out = (uint8_t *)PyBytes_AS_STRING(result);
        const unsigned width = itemsize * 8;
        const int64_t top = (int64_t)1 << (width - 1), limit = (int64_t)1 << width;
        int64_t key = top;
        uint64_t bit = 0, v = 0;
        int negate = 0;
        for (uint64_t i = 0; !*err && i < cnt; i++) {
            unsigned s = syms[i];
            if (s == 33) {
                negate = 1;
                continue;
            }
            int64_t magnitude = 0;
            if (s) {
                unsigned w = s - 1; /* at most 31 bits, inside the area (checked above) */
                Stream extra_bits = {area, n - end, total, NULL, 0, 0, 0};
                uint64_t extra = peek_safe(&extra_bits, bit) & (((uint64_t)1 << w) - 1);
                bit += w;
                magnitude = (int64_t)(((uint64_t)1 << w) | extra);
            }
            key += negate ? -magnitude : magnitude;
            negate = 0;
            if (key < 0 || key >= limit) {
                *err = "value out of range";
                break;
            }
            uint64_t pattern = key < top ? (uint64_t)key ^ (uint64_t)(limit - 1) : (uint64_t)key ^ (uint64_t)top;
            for (unsigned b = 0; b < itemsize; b++) out[v * itemsize + b] = (uint8_t)(pattern >> (8 * b));
            v++;
        }
        if (*err) Py_CLEAR(result);
    }
    free(syms);
    return result;
}

PyDoc_STRVAR(unpack_doc,
"unpack(data, itemsize)\n"
"--\n\n"
"A packed header table (itemsize 0: the code-length table, bytes) or codebook (itemsize 4 or 2:\n"
"its little-endian values, bytes) that follows every rule of spec 5.8 / 7.6, or None for any\n"
"input that breaks one (dcformat.codec.packed then raises the error).");

static PyObject *py_unpack(PyObject *self, PyObject *args) {
    Py_buffer data = {0};
    Py_ssize_t itemsize;
    PyObject *result = NULL;
    const char *err = NULL;
    if (!PyArg_ParseTuple(args, "y*n", &data, &itemsize)) return NULL;
    if (itemsize != 0 && itemsize != 2 && itemsize != 4) PyErr_SetString(PyExc_ValueError, "itemsize must be 0, 2 or 4");
    else if (itemsize) result = unpack_codebook_impl(data.buf, (uint64_t)data.len, (unsigned)itemsize, &err);
    else result = unpack_table_impl(data.buf, (uint64_t)data.len, &err);
    if (err && !PyErr_Occurred()) {
        Py_XDECREF(result);
        result = Py_None;
        Py_INCREF(result);
    }
    PyBuffer_Release(&data);
    return result;
}

/* CRC-32 (zlib's) of section data: on x86-64 with PCLMULQDQ, 64-byte blocks folded four at a
 * time by carry-less multiplication (Intel, "Fast CRC Computation for Generic Polynomials Using
 * PCLMULQDQ", 2009; the bit-reflected constants as in zlib-ng and Chromium), the rest a byte at
 * a time from a table; several times zlib's speed. */
static uint32_t crc_table[256];

static void crc_init(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[n] = c;
    }
}

static uint32_t crc_bytes(const uint8_t *buf, size_t len, uint32_t crc) {
    crc = ~crc;
    while (len--) crc = crc_table[(crc ^ *buf++) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_FOLD 1
/* The CRC of buf[0..len), len >= 64 and a multiple of 16, continuing from crc. */
__attribute__((target("pclmul,sse4.1"))) static uint32_t crc_fold(const uint8_t *buf, size_t len, uint32_t crc) {
    static const uint64_t __attribute__((aligned(16))) k1k2[] = {0x0154442bd4, 0x01c6e41596};
    static const uint64_t __attribute__((aligned(16))) k3k4[] = {0x01751997d0, 0x00ccaa009e};
    static const uint64_t __attribute__((aligned(16))) k5k0[] = {0x0163cd6124, 0x0000000000};
    static const uint64_t __attribute__((aligned(16))) poly[] = {0x01db710641, 0x01f7011641};
    __m128i x0, x1, x2, x3, x4, x5, x6, x7, x8, y5, y6, y7, y8;
    crc = ~crc;
    x1 = _mm_loadu_si128((const __m128i *)(buf + 0x00));
    x2 = _mm_loadu_si128((const __m128i *)(buf + 0x10));
    x3 = _mm_loadu_si128((const __m128i *)(buf + 0x20));
    x4 = _mm_loadu_si128((const __m128i *)(buf + 0x30));
    x1 = _mm_xor_si128(x1, _mm_cvtsi32_si128((int)crc));
    x0 = _mm_load_si128((const __m128i *)k1k2);
    buf += 64; len -= 64;
    while (len >= 64) {
        x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
        x6 = _mm_clmulepi64_si128(x2, x0, 0x00);
        x7 = _mm_clmulepi64_si128(x3, x0, 0x00);
        x8 = _mm_clmulepi64_si128(x4, x0, 0x00);
        x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
        x2 = _mm_clmulepi64_si128(x2, x0, 0x11);
        x3 = _mm_clmulepi64_si128(x3, x0, 0x11);
        x4 = _mm_clmulepi64_si128(x4, x0, 0x11);
        y5 = _mm_loadu_si128((const __m128i *)(buf + 0x00));
        y6 = _mm_loadu_si128((const __m128i *)(buf + 0x10));
        y7 = _mm_loadu_si128((const __m128i *)(buf + 0x20));
        y8 = _mm_loadu_si128((const __m128i *)(buf + 0x30));
        x1 = _mm_xor_si128(_mm_xor_si128(x1, x5), y5);
        x2 = _mm_xor_si128(_mm_xor_si128(x2, x6), y6);
        x3 = _mm_xor_si128(_mm_xor_si128(x3, x7), y7);
        x4 = _mm_xor_si128(_mm_xor_si128(x4, x8), y8);
        buf += 64; len -= 64;
    }
    x0 = _mm_load_si128((const __m128i *)k3k4);
    x5 = _mm_clmulepi64_si128(x1, x0, 0x00); x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
    x1 = _mm_xor_si128(_mm_xor_si128(x1, x2), x5);
    x5 = _mm_clmulepi64_si128(x1, x0, 0x00); x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
    x1 = _mm_xor_si128(_mm_xor_si128(x1, x3), x5);
    x5 = _mm_clmulepi64_si128(x1, x0, 0x00); x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
    x1 = _mm_xor_si128(_mm_xor_si128(x1, x4), x5);
    while (len >= 16) {
        x2 = _mm_loadu_si128((const __m128i *)buf);
        x5 = _mm_clmulepi64_si128(x1, x0, 0x00); x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
        x1 = _mm_xor_si128(_mm_xor_si128(x1, x2), x5);
        buf += 16; len -= 16;
    }
    x2 = _mm_clmulepi64_si128(x1, x0, 0x10);
    x3 = _mm_setr_epi32(~0, 0, ~0, 0);
    x1 = _mm_srli_si128(x1, 8);
    x1 = _mm_xor_si128(x1, x2);
    x0 = _mm_loadl_epi64((const __m128i *)k5k0);
    x2 = _mm_srli_si128(x1, 4);
    x1 = _mm_and_si128(x1, x3);
    x1 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x1 = _mm_xor_si128(x1, x2);
    x0 = _mm_load_si128((const __m128i *)poly);
    x2 = _mm_and_si128(x1, x3);
    x2 = _mm_clmulepi64_si128(x2, x0, 0x10);
    x2 = _mm_and_si128(x2, x3);
    x2 = _mm_clmulepi64_si128(x2, x0, 0x00);
    x1 = _mm_xor_si128(x1, x2);
    return ~(uint32_t)_mm_extract_epi32(x1, 1);
}

static int fold_ok(void) { return __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1"); }
#else
#define HAVE_FOLD 0
static uint32_t crc_fold(const uint8_t *buf, size_t len, uint32_t crc) { return crc_bytes(buf, len, crc); }
static int fold_ok(void) { return 0; }
#endif

static int use_fold;

PyDoc_STRVAR(crc32_doc,
"crc32(data, crc=0)\n"
"--\n\n"
"zlib.crc32(data, crc), fast where the CPU folds (see FAST_CRC32); the GIL is released for 256 KiB or more.");

static PyObject *py_crc32(PyObject *self, PyObject *args) {
    Py_buffer data = {0};
    unsigned long crc_in = 0;
    if (!PyArg_ParseTuple(args, "y*|k", &data, &crc_in)) return NULL;
    uint32_t crc = (uint32_t)crc_in;
    const uint8_t *buf = data.buf;
    size_t len = (size_t)data.len;
    BEGIN_RELEASE(len >= RELEASE_MIN_BYTES)
    if (use_fold && len >= 64) {
        size_t head = len & ~(size_t)15;
        crc = crc_fold(buf, head, crc);
        buf += head;
        len -= head;
    }
    crc = crc_bytes(buf, len, crc);
    END_RELEASE
    PyBuffer_Release(&data);
    return PyLong_FromUnsignedLong(crc);
}

PyDoc_STRVAR(stream_ok_doc,
"stream_ok(lengths, count, chunk_size, bit_length, offsets, data_length, alphabet, max_chunk)\n"
"--\n\n"
"Whether a Huffman stream record follows every rule of dcformat.encodings.coded.check_stream\n"
"(table, chunking, sizes; `offsets` the uint64 chunk offsets). False for any record that breaks\n"
"one, and for sizes near 2^62 it leaves to that code, which then raises the error.");

static PyObject *py_stream_ok(PyObject *self, PyObject *args) {
    Py_buffer lengths = {0}, offsets = {0};
    unsigned long long count, chunk, bits, data_length, alphabet, max_chunk;
    if (!PyArg_ParseTuple(args, "y*KKKy*KKK", &lengths, &count, &chunk, &bits, &offsets, &data_length, &alphabet,
                          &max_chunk))
        return NULL;
    int ok = 0;
    const uint8_t *len = lengths.buf;
    const uint64_t *offs = offsets.buf;
    uint64_t m = (uint64_t)offsets.len / 8, used = 0, kraft = 0;
    unsigned lo = MAX_LEN + 1, hi = 0;
    if ((uint64_t)lengths.len != alphabet || offsets.len % 8 || count >= (1ULL << 58) || bits >= (1ULL << 62))
        goto done;
    for (Py_ssize_t i = 0; i < lengths.len; i++) {
        if (!len[i]) continue;
        if (len[i] > MAX_LEN) goto done;
        used++;
        kraft += (uint64_t)1 << (MAX_LEN - len[i]);
        if (len[i] < lo) lo = len[i];
        if (len[i] > hi) hi = len[i];
    }
    if (used == 0 ? count != 0 : used == 1 ? hi != 1 : kraft != (uint64_t)1 << MAX_LEN) goto done;
    if (chunk < 1 || chunk > max_chunk) goto done;
    uint64_t n_chunks = (count + chunk - 1) / chunk;
    if (m != (n_chunks ? n_chunks - 1 : 0)) goto done;
    if (count ? bits < count * lo || bits > count * hi : bits != 0) goto done;
    for (uint64_t j = 0; j < m; j++) { /* chunk j+1 starts in [b*lo, b*hi], b its symbols before */
        uint64_t start = offs[j], before = (j + 1) * chunk, after = bits - start;
        if (start == 0 || (j && start <= offs[j - 1]) || start >= bits) goto done;
        if (start < before * lo || start > before * hi) goto done;
        if (after < (count - before) * lo || after > (count - before) * hi) goto done;
    }
    ok = data_length == (bits + 7) / 8;
done:
    PyBuffer_Release(&lengths);
    PyBuffer_Release(&offsets);
    return PyBool_FromLong(ok);
}

static PyMethodDef methods[] = {
    {"decode", py_decode, METH_VARARGS, decode_doc},
    {"scatter", py_scatter, METH_VARARGS, scatter_doc},
    {"scale_rows", py_scale_rows, METH_VARARGS, scale_rows_doc},
    {"unpack", py_unpack, METH_VARARGS, unpack_doc},
    {"crc32", py_crc32, METH_VARARGS, crc32_doc},
    {"stream_ok", py_stream_ok, METH_VARARGS, stream_ok_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "dcformat.codec._native", "Native Huffman decode and scatter kernels.", -1, methods,
};

PyMODINIT_FUNC PyInit__native(void) {
    crc_init();
    use_fold = HAVE_FOLD && fold_ok();
    /* DCNN_DECODE_ISA=generic keeps the generic kernels (to test both sets on one machine). */
    const char *cap = getenv("DCNN_DECODE_ISA");
    int bmi2 = !(cap && strcmp(cap, "generic") == 0) && bmi2_ok();
    if (bmi2) range_fns = RANGE_FNS_BMI2;
    PyObject *m = PyModule_Create(&module);
    if (m && PyModule_AddIntConstant(m, "FAST_CRC32", use_fold) < 0) Py_CLEAR(m);
    if (m && PyModule_AddStringConstant(m, "DECODE_ISA", bmi2 ? "bmi2" : "generic") < 0) Py_CLEAR(m);
    return m;
}

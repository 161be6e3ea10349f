#include "tollgate_shim.h"
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <zlib.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

// gzip for _bulk bodies, written here rather than through zlib's deflate. Bulk bodies repeat
// themselves record after record, so nearly all the compression comes from long matches a
// single hash probe (or the last match's distance) finds; zlib's level 1 spends its time
// comparing those matches a byte at a time. This encoder (the shape of zlib-ng's "quick"
// strategy) probes once, compares sixteen bytes at a time (SSE2; eight without) and writes one
// block with the fixed Huffman code of RFC 1951 §3.2.6, which needs no tree building: about
// three times zlib's level 1 speed for a slightly larger body.

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the bit writer and the gzip trailer assume a little-endian host"
#endif

// 4096 entries (16 KiB, which stays in the level-1 cache beside the event loop's data): with
// the last distance tried first, a table of 32768 compressed no better.
enum { HASH_BITS = 12, WINDOW = 32768, MIN_MATCH = 4, MAX_MATCH = 258 };

typedef struct {
    unsigned char *out;
    size_t at;
    uint64_t bits;
    unsigned count;
} bit_writer;

// Appends the low `n` bits of `value` (n <= 32), flushing whole 32-bit words.
static inline void put_bits(bit_writer *w, uint64_t value, unsigned n) {
    w->bits |= value << w->count;
    w->count += n;
    if (w->count >= 32) {
        memcpy(w->out + w->at, &w->bits, 8);  // the caller guarantees 8 bytes of room
        w->at += 4;
        w->bits >>= 32;
        w->count -= 32;
    }
}

static inline unsigned reverse_bits(unsigned code, unsigned length) {
    unsigned reversed = 0;
    for (unsigned k = 0; k < length; k++) reversed |= ((code >> k) & 1u) << (length - 1 - k);
    return reversed;
}

static inline uint32_t load32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t load64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline unsigned floor_log2(unsigned v) { return 31u - (unsigned)__builtin_clz(v); }

// Where each 4-byte hash was last seen, kept from chunk to chunk so that no chunk pays for
// clearing it. Entries hold a position + 1 counted across all chunks (mod 2^32); `base` is where
// the current chunk starts in that count. An entry from an earlier chunk, or one aliased by the
// count's wrap-around, lands outside the current chunk or is refuted by the byte compare that
// checks every candidate, so it costs a probe at worst, never a wrong match.
struct tg_deflate_table {
    uint32_t head[1u << HASH_BITS];
    uint32_t base;
};

tg_deflate_table *tg_deflate_table_new(void) { return calloc(1, sizeof(tg_deflate_table)); }

void tg_deflate_table_free(tg_deflate_table *table) { free(table); }

// The fixed Huffman code of RFC 1951 §3.2.6, bit-reversed because deflate sends Huffman codes
// most significant bit first: built once, not per chunk.
static uint16_t literal_code[288];
static uint8_t literal_length[288];
static uint8_t distance_code[30];  // the codes' five fixed bits, reversed likewise
static pthread_once_t fixed_code_once = PTHREAD_ONCE_INIT;

static void build_fixed_code(void) {
    for (unsigned s = 0; s < 288; s++) {
        unsigned code, length;
        if (s < 144) { code = 0x30 + s; length = 8; }
        else if (s < 256) { code = 0x190 + s - 144; length = 9; }
        else if (s < 280) { code = s - 256; length = 7; }
        else { code = 0xC0 + s - 280; length = 8; }
        literal_code[s] = (uint16_t)reverse_bits(code, length);
        literal_length[s] = (uint8_t)length;
    }
    for (unsigned d = 0; d < 30; d++) distance_code[d] = (uint8_t)reverse_bits(d, 5);
}

// One fixed-Huffman block of `len` bytes of `src`, matches reaching no further back than `src`.
static void deflate_block(bit_writer *writer, tg_deflate_table *table, const unsigned char *src, size_t len, int final) {
    pthread_once(&fixed_code_once, build_fixed_code);
    // A local copy of the writer: kept in registers, where through the pointer every store of
    // output bytes made the compiler reload it.
    bit_writer local = *writer, *w = &local;
    put_bits(w, (final ? 1 : 0) | (1 << 1), 3);  // BFINAL, BTYPE 01 (fixed Huffman)
    uint32_t *head = table->head, base = table->base;
    table->base = base + (uint32_t)len;
    size_t pos = 0, rep = 0;
    while (pos + 8 <= len) {
        uint32_t hash = (load32(src + pos) * 2654435761u) >> (32 - HASH_BITS);
        uint32_t entry = head[hash];
        head[hash] = base + (uint32_t)pos + 1;
        size_t candidate, distance;
        // The last match's distance first: a record repeats the ones before it, so past a value
        // that differs the next match is mostly at the same distance, found without the table
        // (and a few bytes sooner than the table finds it).
        if (rep != 0 && rep <= pos && load32(src + pos - rep) == load32(src + pos)) {
            distance = rep;
            candidate = pos - rep;
        } else {
            candidate = (uint32_t)(entry - 1 - base);  // its position in this chunk
            distance = pos - candidate;
            if (candidate >= pos || distance > WINDOW || load32(src + candidate) != load32(src + pos)) {
                unsigned s = src[pos++];
                put_bits(w, literal_code[s], literal_length[s]);
                continue;
            }
        }
        rep = distance;
        const unsigned char *a = src + pos, *b = src + candidate;
        size_t limit = len - pos < MAX_MATCH ? len - pos : MAX_MATCH;
        size_t length = MIN_MATCH;
#if defined(__SSE2__)
        while (length + 16 <= limit) {
            __m128i equal = _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(a + length)), _mm_loadu_si128((const __m128i *)(b + length)));
            unsigned differ = (unsigned)_mm_movemask_epi8(equal) ^ 0xFFFFu;
            if (differ) { length += (size_t)__builtin_ctz(differ); goto found; }
            length += 16;
        }
#endif
        while (length + 8 <= limit) {
            uint64_t diff = load64(a + length) ^ load64(b + length);
            if (diff) { length += (size_t)__builtin_ctzll(diff) / 8; goto found; }
            length += 8;
        }
        while (length < limit && a[length] == b[length]) length++;
    found:;
        // Length: symbols 257..285 with 0..5 extra bits (RFC 1951 §3.2.5).
        unsigned l = (unsigned)length - 3, symbol, extra_bits, extra;
        if (length == MAX_MATCH) { symbol = 285; extra_bits = 0; extra = 0; }
        else if (l < 8) { symbol = 257 + l; extra_bits = 0; extra = 0; }
        else {
            unsigned nb = floor_log2(l);
            symbol = 257 + 4 * (nb - 1) + ((l >> (nb - 2)) & 3);
            extra_bits = nb - 2;
            extra = l & ((1u << extra_bits) - 1);
        }
        put_bits(w, literal_code[symbol] | (extra << literal_length[symbol]), literal_length[symbol] + extra_bits);
        // Distance: codes 0..29 in five fixed bits with 0..13 extra bits.
        unsigned d = (unsigned)distance - 1, code;
        if (d < 4) { code = d; extra_bits = 0; extra = 0; }
        else {
            unsigned nb = floor_log2(d);
            code = 2 * nb + ((d >> (nb - 1)) & 1);
            extra_bits = nb - 1;
            extra = d & ((1u << extra_bits) - 1);
        }
        put_bits(w, distance_code[code] | (extra << 5), 5 + extra_bits);
        pos += length;
    }
    while (pos < len) {
        unsigned s = src[pos++];
        put_bits(w, literal_code[s], literal_length[s]);
    }
    put_bits(w, literal_code[256], literal_length[256]);
    *writer = local;
}

// Writes the bits still held, padding the last byte with zeros; returns the size.
static size_t flush_bits(bit_writer *w) {
    memcpy(w->out + w->at, &w->bits, 8);
    w->at += (w->count + 7) / 8;
    w->bits = 0;
    w->count = 0;
    return w->at;
}

size_t tg_gzip_start(void *out) {
    // RFC 1952 §2.3: deflate, no name or time, fastest compression, unknown OS.
    static const unsigned char header[TG_GZIP_FRAME_BYTES] = {0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 4, 0xff};
    memcpy(out, header, sizeof header);
    return sizeof header;
}

// The member's trailer: CRC-32 and length (mod 2^32) of the uncompressed data.
static size_t put_trailer(unsigned char *out, uint32_t crc, uint64_t len) {
    uint32_t trailer[2] = {crc, (uint32_t)len};  // little-endian hosts
    memcpy(out, trailer, sizeof trailer);
    return sizeof trailer;
}

size_t tg_gzip_finish_chunks(void *out, uint32_t crc, uint64_t len) {
    unsigned char *at = out;
    at[0] = 0x03;  // BFINAL, fixed Huffman, and the end-of-block code: an empty final block
    at[1] = 0x00;
    return 2 + put_trailer(at + 2, crc, len);
}

long tg_gzip(const void *in, size_t len, void *out, size_t cap) {
    if (cap < tg_gzip_bound(len) || len > 0xFFFFFFF0u) return -1;
    tg_deflate_table *table = tg_deflate_table_new();
    if (!table) return -1;
    bit_writer w = {.out = out, .at = tg_gzip_start(out)};
    deflate_block(&w, table, in, len, 1);
    tg_deflate_table_free(table);
    flush_bits(&w);
    return (long)(w.at + put_trailer(w.out + w.at, tg_crc32(0, in, len), len));
}

long tg_deflate_chunk(tg_deflate_table *table, const void *in, size_t len, void *out, size_t cap) {
    if (cap < tg_gzip_bound(len) || len > 0xFFFFFFF0u) return -1;
    bit_writer w = {.out = out};
    deflate_block(&w, table, in, len, 0);
    // A sync flush: an empty stored block ends the chunk on a byte boundary (RFC 1951 §3.2.4),
    // so chunks can be laid one after another in a stream.
    put_bits(&w, 0, 3);
    flush_bits(&w);
    static const unsigned char empty_stored[4] = {0, 0, 0xff, 0xff};
    memcpy(w.out + w.at, empty_stored, 4);
    return (long)(w.at + 4);
}

// Every byte as a 9-bit literal at worst, plus header, trailer and the writer's 8-byte stores.
size_t tg_gzip_bound(size_t len) { return len + len / 8 + 64; }

// zlib's inflate of a whole gzip stream (window_bits 15 + 16: must end) or of one raw deflate
// chunk (-15: must be used up, ending on the sync flush).
static long inflate_into(const void *in, size_t len, void *out, size_t cap, int window_bits) {
    int whole = window_bits > 0;
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    if (inflateInit2(&zs, window_bits) != Z_OK) return -1;
    zs.next_in = (Bytef *)in;
    zs.avail_in = (uInt)len;
    zs.next_out = out;
    zs.avail_out = (uInt)cap;
    int rc = inflate(&zs, whole ? Z_FINISH : Z_SYNC_FLUSH);
    long produced = (long)zs.total_out;
    int ok = whole ? rc == Z_STREAM_END : (rc == Z_OK || rc == Z_STREAM_END) && zs.avail_in == 0;
    inflateEnd(&zs);
    return ok ? produced : -1;
}

long tg_gunzip(const void *in, size_t len, void *out, size_t cap) { return inflate_into(in, len, out, cap, 15 + 16); }

long tg_inflate_chunk(const void *in, size_t len, void *out, size_t cap) { return inflate_into(in, len, out, cap, -15); }

uint32_t tg_crc32_combine(uint32_t first, uint32_t second, size_t second_length) {
    return (uint32_t)crc32_combine(first, second, (z_off_t)second_length);
}

int tg_gzip_file(const char *source, const char *destination) {
    FILE *in = fopen(source, "rb");
    if (!in) return -1;
    gzFile out = gzopen(destination, "wb6");
    if (!out) { fclose(in); return -1; }
    char buffer[65536];
    size_t n;
    int rc = 0;
    while ((n = fread(buffer, 1, sizeof buffer, in)) > 0) {
        if (gzwrite(out, buffer, (unsigned)n) != (int)n) { rc = -1; break; }
    }
    if (ferror(in)) rc = -1;
    fclose(in);
    if (gzclose(out) != Z_OK) rc = -1;
    return rc;
}

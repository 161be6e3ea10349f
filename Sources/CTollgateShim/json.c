#include "tollgate_shim.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

// The two byte loops of every flow record — escaping string values, lower-casing header
// names — sixteen bytes at a time with SSE2 (part of x86-64 itself). Most values are header
// values a few dozen bytes long that need no escaping: one compare and one store per sixteen.

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

// The escape of a control character, quote, backslash or DEL; returns its length.
static size_t escape_byte(unsigned char *out, unsigned char byte) {
    static const char hex[] = "0123456789abcdef";
    unsigned char short_form = 0;
    switch (byte) {
    case '"': short_form = '"'; break;
    case '\\': short_form = '\\'; break;
    case '\n': short_form = 'n'; break;
    case '\r': short_form = 'r'; break;
    case '\t': short_form = 't'; break;
    }
    out[0] = '\\';
    if (short_form) { out[1] = short_form; return 2; }
    memcpy(out + 1, "u00", 3);
    out[4] = (unsigned char)hex[byte >> 4];
    out[5] = (unsigned char)hex[byte & 15];
    return 6;
}

#if defined(__SSE2__)

// Sixteen bytes of `p`, of which only the first `rest` (1...15) may exist. The load reads past
// them only when that cannot leave the page; the rare value ending just before a page boundary
// goes through a copy.
__attribute__((no_sanitize("address")))
static inline __m128i load_tail(const unsigned char *p, size_t rest) {
    if (((uintptr_t)p & 4095) <= 4096 - 16) return _mm_loadu_si128((const __m128i *)p);
    unsigned char copy[16] = {0};
    memcpy(copy, p, rest);
    return _mm_loadu_si128((const __m128i *)copy);
}

size_t tg_json_escape(void *dst, const void *src, size_t len) {
    unsigned char *out = dst;
    const unsigned char *in = src;
    const __m128i below_space = _mm_set1_epi8(0x1f), quote = _mm_set1_epi8('"');
    const __m128i backslash = _mm_set1_epi8('\\'), del = _mm_set1_epi8(0x7f);
    size_t i = 0, o = 0;
    while (i < len) {
        size_t rest = len - i, n = rest < 16 ? rest : 16;
        __m128i v = rest >= 16 ? _mm_loadu_si128((const __m128i *)(in + i)) : load_tail(in + i, rest);
        // Unsigned v <= 0x1f exactly when min(v, 0x1f) == v.
        __m128i special = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(_mm_min_epu8(v, below_space), v), _mm_cmpeq_epi8(v, quote)),
                                       _mm_or_si128(_mm_cmpeq_epi8(v, backslash), _mm_cmpeq_epi8(v, del)));
        unsigned mask = (unsigned)_mm_movemask_epi8(special) & (unsigned)((1u << n) - 1);
        _mm_storeu_si128((__m128i *)(out + o), v);
        if (!mask) { i += n; o += n; continue; }
        unsigned clean = (unsigned)__builtin_ctz(mask);
        i += clean;
        o += clean;
        o += escape_byte(out + o, in[i]);
        i += 1;
    }
    return o;
}

static void lowercase_token(void *dst, const void *src, size_t len) {
    unsigned char *out = dst;
    const unsigned char *in = src;
    const __m128i before_a = _mm_set1_epi8('A' - 1), after_z = _mm_set1_epi8('Z' + 1), case_bit = _mm_set1_epi8(0x20);
    for (size_t i = 0; i < len; i += 16) {
        size_t rest = len - i;
        __m128i v = rest >= 16 ? _mm_loadu_si128((const __m128i *)(in + i)) : load_tail(in + i, rest);
        // Signed compares: bytes from 0x80 up are negative, so never taken for capitals.
        __m128i capital = _mm_and_si128(_mm_cmpgt_epi8(v, before_a), _mm_cmplt_epi8(v, after_z));
        _mm_storeu_si128((__m128i *)(out + i), _mm_or_si128(v, _mm_and_si128(capital, case_bit)));
    }
}

#else  // other CPUs: the same, a byte at a time

size_t tg_json_escape(void *dst, const void *src, size_t len) {
    unsigned char *out = dst;
    const unsigned char *in = src;
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char byte = in[i];
        if (byte < 0x20 || byte == '"' || byte == '\\' || byte == 0x7f) o += escape_byte(out + o, byte);
        else out[o++] = byte;
    }
    return o;
}

static void lowercase_token(void *dst, const void *src, size_t len) {
    unsigned char *out = dst;
    const unsigned char *in = src;
    for (size_t i = 0; i < len; i++) out[i] = in[i] >= 'A' && in[i] <= 'Z' ? (unsigned char)(in[i] | 0x20) : in[i];
}

#endif

static size_t token_key(unsigned char *out, const unsigned char *name, size_t name_len) {
    out[0] = '"';
    lowercase_token(out + 1, name, name_len);
    memcpy(out + 1 + name_len, "\":", 2);
    return name_len + 3;
}

// Header fields as one JSON object (flow records' http.*.headers), a dozen per message: one
// call per object, where a call per field and the Swift loop around it cost twice as much.

struct tg_secret_headers {
    uint64_t bits;          // name_bit of every name: most fields are ruled out by this word alone
    size_t count;
    uint64_t *keys;         // name_key of each name, compared before its bytes
    unsigned char **names;  // lower case
    unsigned char *marker;
    size_t marker_len;
};

// A name's length (high half) and first four bytes with bit 0x20 set (low half): names equal
// under same_name have equal keys (this folding is coarser), so keys rule out most others.
static inline uint64_t name_key(const unsigned char *name, size_t len) {
    uint32_t prefix = 0;
    if (len >= 4) {
        memcpy(&prefix, name, 4);
        prefix |= 0x20202020u;
    }
    return (uint64_t)len << 32 | prefix;
}

// One of 64 bits, picked by a hash of the key: equal names (in any case) get the same bit,
// most different ones another. By length alone, Date and ETag, Last-Modified and
// Accept-Ranges, Server and Cookie all looked alike.
static inline uint64_t name_bit(uint64_t key) { return 1ull << ((key * 0x9E3779B97F4A7C15ull) >> 58); }

// Names compared case-insensitively: only A-Z fold, so '^' and '~' (0x5E, 0x7E, both token
// characters) stay distinct, as they did not when bit 0x20 was set in every byte.
static int same_name(const unsigned char *a, const unsigned char *b, size_t len) {
    for (size_t i = 0; i < len; i++) {
        unsigned char x = a[i], y = b[i];
        if (x == y) continue;
        if ((x | 0x20) != (y | 0x20) || (unsigned char)((x | 0x20) - 'a') >= 26) return 0;
    }
    return 1;
}

tg_secret_headers *tg_secret_headers_new(const void *names, const size_t *lengths, size_t count, const void *marker,
                                         size_t marker_len) {
    size_t bytes = 0;
    for (size_t i = 0; i < count; i++) bytes += lengths[i];
    tg_secret_headers *table = calloc(1, sizeof *table);
    if (!table) return NULL;
    table->keys = malloc(count * sizeof *table->keys + 1);
    table->names = malloc(count * sizeof *table->names + 1);
    table->marker = malloc(bytes + marker_len + 1);
    if (!table->keys || !table->names || !table->marker) {
        tg_secret_headers_free(table);
        return NULL;
    }
    memcpy(table->marker, marker, marker_len);
    table->marker_len = marker_len;
    // The names live right after the marker, in the same block.
    unsigned char *next = table->marker + marker_len;
    const unsigned char *source = names;
    for (size_t i = 0; i < count; i++) {
        memcpy(next, source, lengths[i]);
        table->names[i] = next;
        table->keys[i] = name_key(next, lengths[i]);
        table->bits |= name_bit(table->keys[i]);
        next += lengths[i];
        source += lengths[i];
    }
    table->count = count;
    return table;
}

void tg_secret_headers_free(tg_secret_headers *table) {
    if (!table) return;
    free(table->keys);
    free(table->names);
    free(table->marker);
    free(table);
}

static int is_secret(const tg_secret_headers *secrets, uint64_t key, const unsigned char *name, size_t len) {
    if (!(secrets->bits & name_bit(key))) return 0;
    for (size_t i = 0; i < secrets->count; i++)
        if (secrets->keys[i] == key && same_name(secrets->names[i], name, len)) return 1;
    return 0;
}

static inline tg_header_span span_at(const unsigned char *fields, size_t stride, size_t index) {
    tg_header_span span;
    memcpy(&span, fields + index * stride, sizeof span);
    return span;
}

// Whether the field `span` of the head at `base` is named `name`.
static inline int is_named(const unsigned char *base, tg_header_span span, const unsigned char *name, size_t len) {
    return (size_t)span.name_count == len && same_name(base + span.name_start, name, len);
}

size_t tg_json_headers_bound(const tg_secret_headers *secrets, size_t head_len, size_t count) {
    // Per field at most: a comma, quotes and colon around the name, quotes around the value,
    // ", " joining it to an earlier one, or the marker instead of it; every name and value
    // byte is a distinct head byte, escaped to six at most; and the last vector's overhang.
    return 2 + count * (8 + secrets->marker_len) + 6 * head_len + 16;
}

size_t tg_json_headers(void *dst, const void *head, const void *fields, size_t count, size_t stride,
                       const tg_secret_headers *secrets) {
    unsigned char *out = dst;
    const unsigned char *base = head, *records = fields;
    // Names whose bit another field has too may repeat; the rest are written without comparing.
    uint64_t seen = 0, shared = 0;
    for (size_t i = 0; i < count; i++) {
        tg_header_span span = span_at(records, stride, i);
        uint64_t bit = name_bit(name_key(base + span.name_start, (size_t)span.name_count));
        shared |= seen & bit;
        seen |= bit;
    }
    size_t o = 0;
    out[o++] = '{';
    for (size_t i = 0; i < count; i++) {
        tg_header_span span = span_at(records, stride, i);
        const unsigned char *name = base + span.name_start;
        size_t len = (size_t)span.name_count;
        uint64_t key = name_key(name, len);
        int may_repeat = (shared & name_bit(key)) != 0;
        if (may_repeat) {
            int written_before = 0;
            for (size_t j = 0; j < i && !written_before; j++) {
                written_before = is_named(base, span_at(records, stride, j), name, len);
            }
            if (written_before) continue;
        }
        if (o > 1) out[o++] = ',';
        o += token_key(out + o, name, len);
        out[o++] = '"';
        if (is_secret(secrets, key, name, len)) {
            memcpy(out + o, secrets->marker, secrets->marker_len);
            o += secrets->marker_len;
        } else {
            o += tg_json_escape(out + o, base + span.value_start, (size_t)span.value_count);
            for (size_t j = i + 1; may_repeat && j < count; j++) {
                tg_header_span later = span_at(records, stride, j);
                if (!is_named(base, later, name, len)) continue;
                out[o++] = ',';
                out[o++] = ' ';
                o += tg_json_escape(out + o, base + later.value_start, (size_t)later.value_count);
            }
        }
        out[o++] = '"';
    }
    out[o++] = '}';
    return o;
}

#include "tollgate_shim.h"
#include <stdint.h>
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

size_t tg_json_token_key(void *dst, const void *name, size_t name_len) {
    unsigned char *out = dst;
    out[0] = '"';
    lowercase_token(out + 1, name, name_len);
    memcpy(out + 1 + name_len, "\":", 2);
    return name_len + 3;
}

size_t tg_json_token_member(void *dst, const void *name, size_t name_len, const void *value, size_t value_len) {
    unsigned char *out = dst;
    size_t o = tg_json_token_key(out, name, name_len);
    out[o++] = '"';
    o += tg_json_escape(out + o, value, value_len);
    out[o] = '"';
    return o + 1;
}

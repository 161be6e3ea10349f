#include "tollgate_shim.h"
#include <string.h>
#include <zlib.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

// The shipper checksums every byte it ships twice: CRC-32C over each spool entry and CRC-32
// over each _bulk body (the gzip trailer). Table-driven CRC-32 (zlib) and the one-stream
// SSE4.2 instruction both cost a visible share of the shipper's CPU, so on x86-64 both
// polynomials go through carry-less multiplication, which folds 64 bytes per step (the method
// of Intel's white paper "Fast CRC Computation for Generic Polynomials Using PCLMULQDQ",
// bit-reflected form). Short inputs and the last few bytes take the simple paths.

#if defined(__x86_64__)
/// Folding constants of one polynomial P: x^n mod P (n as noted) bit-reflected over 32 bits and
/// shifted left by one; the unit tests compare both polynomials' results with plain CRCs.
typedef struct {
    uint64_t by64[2];   // x^(512+32), x^(512-32): folds a 128-bit lane across 64 bytes
    uint64_t by16[2];   // x^(128+32), x^(128-32): folds one lane into the next
    uint64_t to64;      // x^64: 96 bits to 64
    uint64_t barrett[2];  // P reflected (33 bits), then x^64 div P reflected: 64 bits to 32
} fold_constants;

static const fold_constants crc32_gzip_constants = {
    {0x154442bd4, 0x1c6e41596}, {0x1751997d0, 0x0ccaa009e}, 0x163cd6124, {0x1db710641, 0x1f7011641}};
static const fold_constants crc32c_constants = {
    {0x0740eef02, 0x09e4addf8}, {0x0f20c0dfe, 0x14cd00bd6}, 0x0dd45aab8, {0x105ec76f1, 0x0dea713f1}};

/// One lane multiplied by the constants pair: low half by the first, high half by the second.
__attribute__((target("pclmul,sse4.1")))
static inline __m128i fold_lane(__m128i lane, __m128i constants, __m128i next) {
    __m128i low = _mm_clmulepi64_si128(lane, constants, 0x00);
    __m128i high = _mm_clmulepi64_si128(lane, constants, 0x11);
    return _mm_xor_si128(_mm_xor_si128(low, high), next);
}

/// Advances the raw CRC state over `len` bytes, `len` at least 64 and a multiple of 16.
__attribute__((target("pclmul,sse4.1")))
static uint32_t fold_crc(uint32_t state, const unsigned char *p, size_t len, const fold_constants *k) {
    __m128i lanes[4];
    for (int i = 0; i < 4; i++) lanes[i] = _mm_loadu_si128((const __m128i *)(p + 16 * i));
    lanes[0] = _mm_xor_si128(lanes[0], _mm_cvtsi32_si128((int)state));
    p += 64;
    len -= 64;
    __m128i by64 = _mm_loadu_si128((const __m128i *)k->by64);
    for (; len >= 64; p += 64, len -= 64) {
        for (int i = 0; i < 4; i++) lanes[i] = fold_lane(lanes[i], by64, _mm_loadu_si128((const __m128i *)(p + 16 * i)));
    }
    __m128i by16 = _mm_loadu_si128((const __m128i *)k->by16);
    __m128i acc = lanes[0];
    for (int i = 1; i < 4; i++) acc = fold_lane(acc, by16, lanes[i]);
    for (; len >= 16; p += 16, len -= 16) acc = fold_lane(acc, by16, _mm_loadu_si128((const __m128i *)p));

    // 128 bits to 64: the low half times x^(128-32), added to the high half.
    __m128i low32s = _mm_setr_epi32(-1, 0, -1, 0);
    acc = _mm_xor_si128(_mm_srli_si128(acc, 8), _mm_clmulepi64_si128(acc, by16, 0x10));
    // 96 bits to 64: the low 32 bits times x^64, added to the rest.
    __m128i to64 = _mm_cvtsi64_si128((long long)k->to64);
    acc = _mm_xor_si128(_mm_srli_si128(acc, 4), _mm_clmulepi64_si128(_mm_and_si128(acc, low32s), to64, 0x00));
    // Barrett reduction to the 32-bit remainder.
    __m128i barrett = _mm_loadu_si128((const __m128i *)k->barrett);
    __m128i quotient = _mm_and_si128(_mm_clmulepi64_si128(_mm_and_si128(acc, low32s), barrett, 0x10), low32s);
    acc = _mm_xor_si128(acc, _mm_clmulepi64_si128(quotient, barrett, 0x00));
    return (uint32_t)_mm_extract_epi32(acc, 1);
}

static int has_clmul(void) { return __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.2"); }

__attribute__((target("sse4.2")))
static uint32_t crc32c_instruction(uint32_t state, const unsigned char *p, size_t len) {
    uint64_t wide = state;
    for (; len >= 8; p += 8, len -= 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        wide = __builtin_ia32_crc32di(wide, word);
    }
    state = (uint32_t)wide;
    while (len--) state = __builtin_ia32_crc32qi(state, *p++);
    return state;
}
#endif

static uint32_t crc32c_bitwise(uint32_t state, const unsigned char *p, size_t len) {
    while (len--) {
        state ^= *p++;
        for (int k = 0; k < 8; k++) state = (state >> 1) ^ (0x82F63B78u & (0u - (state & 1u)));
    }
    return state;
}

uint32_t tg_crc32c(const void *buf, size_t len) {
    const unsigned char *p = buf;
    uint32_t state = 0xFFFFFFFFu;
#if defined(__x86_64__)
    if (has_clmul()) {
        size_t folded = len >= 64 ? len & ~(size_t)15 : 0;
        if (folded) state = fold_crc(state, p, folded, &crc32c_constants);
        return ~crc32c_instruction(state, p + folded, len - folded);
    }
    if (__builtin_cpu_supports("sse4.2")) return ~crc32c_instruction(state, p, len);
#endif
    return ~crc32c_bitwise(state, p, len);
}

uint32_t tg_crc32(uint32_t crc, const void *buf, size_t len) {
    const unsigned char *p = buf;
#if defined(__x86_64__)
    if (has_clmul() && len >= 64) {
        size_t folded = len & ~(size_t)15;
        crc = ~fold_crc(~crc, p, folded, &crc32_gzip_constants);
        p += folded;
        len -= folded;
    }
#endif
    return (uint32_t)crc32_z(crc, p, len);
}

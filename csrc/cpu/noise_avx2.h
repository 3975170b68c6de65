// Eight Philox4x32-10 streams at once with AVX2, their Box-Muller normals through SLEEF's vector
// logf/sincosf (shipped inside libtorch_cpu), and their grid cells (grid.h). The functions carry
// target attributes, so the rest of the extension stays baseline x86-64; callers check
// `cpu_has_avx2()` first.
//
// The 32-bit words are bit-identical to philox.h's scalar ones, and so are the uniforms
// (float(w) rounded to nearest, + 0.5f, * 2^-32); log and sincos come from SLEEF (1.0 ulp) instead of
// libm, so the normals may differ from the scalar path in the last bits. The cells are identical.
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define COSTSMOOTH_CPU_AVX2 1

#include <immintrin.h>

#include <cstdint>

#include "../grid.h"
#include "../philox.h"

extern "C" {
typedef struct {
  __m256 x, y;
} CostsmoothM256Pair;
__attribute__((target("avx2,fma"))) __m256 Sleef_logf8_u10avx2(__m256);
__attribute__((target("avx2,fma"))) CostsmoothM256Pair Sleef_sincosf8_u10avx2(__m256);
}

namespace costsmooth {

inline bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}

// High 32 bits of the eight unsigned products a[i] * b[i].
__attribute__((target("avx2,fma"))) inline __m256i mulhi_epu32(__m256i a, __m256i b) {
  const __m256i even = _mm256_srli_epi64(_mm256_mul_epu32(a, b), 32);  // lanes 0, 2, 4, 6
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), _mm256_srli_epi64(b, 32));  // 1, 3, 5, 7
  return _mm256_blend_epi32(even, odd, 0xAA);
}

// word_to_uniform for eight words: the unsigned word is converted as hi16 * 65536 + lo16 (both exact
// in float, one rounding in the sum: the same value as the scalar float(w)).
__attribute__((target("avx2,fma"))) inline __m256 words_to_uniform8(__m256i w) {
  const __m256 hi = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(w, 16)), _mm256_set1_ps(65536.0f));
  const __m256 lo = _mm256_cvtepi32_ps(_mm256_and_si256(w, _mm256_set1_epi32(0xFFFF)));
  const __m256 f = _mm256_add_ps(hi, lo);
  return _mm256_mul_ps(_mm256_add_ps(f, _mm256_set1_ps(0.5f)), _mm256_set1_ps(2.3283064365386963e-10f));
}

// Philox words of the element groups g0 .. g0 + 7 of one (seed, stream, input, sample): lane l of
// words[k] is word k of noise_words(..., g0 + l, ...).
__attribute__((target("avx2,fma"))) inline void noise_words_x8(uint64_t seed, uint32_t stream, uint32_t input,
                                                               uint32_t sample, uint32_t g0, __m256i words[4]) {
  __m256i c0 = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(g0)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  __m256i c1 = _mm256_set1_epi32(static_cast<int>(sample));
  __m256i c2 = _mm256_set1_epi32(static_cast<int>(input));
  __m256i c3 = _mm256_set1_epi32(static_cast<int>(stream));
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(kPhiloxM0));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int>(kPhiloxM1));
  for (int round = 0; round < 10; ++round) {
    const __m256i hi0 = mulhi_epu32(m0, c0), lo0 = _mm256_mullo_epi32(m0, c0);
    const __m256i hi1 = mulhi_epu32(m1, c2), lo1 = _mm256_mullo_epi32(m1, c2);
    const __m256i n0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), _mm256_set1_epi32(static_cast<int>(k0)));
    const __m256i n2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), _mm256_set1_epi32(static_cast<int>(k1)));
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  words[0] = c0;
  words[1] = c1;
  words[2] = c2;
  words[3] = c3;
}

// Normals of the element groups g0 .. g0 + 7 of one (seed, stream, input, sample):
// z[8 * k + lane] is normal k (0..3) of group g0 + lane, as noise_normals(..., g0 + lane, ...)[k].
__attribute__((target("avx2,fma"))) inline void noise_normals_x8(uint64_t seed, uint32_t stream, uint32_t input,
                                                                 uint32_t sample, uint32_t g0, float z[32]) {
  __m256i words[4];
  noise_words_x8(seed, stream, input, sample, g0, words);
  for (int pair = 0; pair < 2; ++pair) {
    const __m256 u1 = words_to_uniform8(words[2 * pair]);
    const __m256 u2 = words_to_uniform8(words[2 * pair + 1]);
    const __m256 r = _mm256_sqrt_ps(_mm256_mul_ps(_mm256_set1_ps(-2.0f), Sleef_logf8_u10avx2(u1)));
    const CostsmoothM256Pair sc = Sleef_sincosf8_u10avx2(_mm256_mul_ps(_mm256_set1_ps(6.2831853071795865f), u2));
    _mm256_storeu_ps(z + 8 * (2 * pair), _mm256_mul_ps(r, sc.y));      // cos
    _mm256_storeu_ps(z + 8 * (2 * pair + 1), _mm256_mul_ps(r, sc.x));  // sin
  }
}

// Unsigned a > b for eight 32-bit lanes (all ones where true).
__attribute__((target("avx2,fma"))) inline __m256i cmpgt_epu32(__m256i a, __m256i b) {
  const __m256i sign = _mm256_set1_epi32(static_cast<int>(0x80000000u));
  return _mm256_cmpgt_epi32(_mm256_xor_si256(a, sign), _mm256_xor_si256(b, sign));
}

// Cells of the element groups g0 .. g0 + 7 (grid.h): c[8 * k + lane] is cell k of group g0 + lane,
// as noise_cells(..., g0 + lane, ...)[k]. A word in a bucket without thresholds takes its cell from
// one gather of the guide. In a bucket holding thresholds, the cell moves up while the word exceeds
// the high word of the cell's threshold, up to two steps in the vector; a word that needs more steps,
// or that equals a threshold's high word (then the low word decides), takes grid.h's search.
__attribute__((target("avx2,fma"))) inline void noise_cells_x8(const CellTable& t, uint64_t seed, uint32_t stream,
                                                               uint32_t input, uint32_t sample, uint32_t g0,
                                                               int32_t c[32]) {
  __m256i words[4];
  noise_words_x8(seed, stream, input, sample, g0, words);
  const __m128i shift = _mm_cvtsi32_si128(t.shift);
  const int* hi_words = reinterpret_cast<const int*>(t.thresholds) + 1;  // high word of threshold c at 2 c
  const __m256i cell_bits = _mm256_set1_epi32(0x7fffffff);
  for (int k = 0; k < 4; ++k) {
    const __m256i w = words[k];
    const __m256i g = _mm256_i32gather_epi32(t.guide, _mm256_srl_epi32(w, shift), 4);
    const int any_mixed = _mm256_movemask_ps(_mm256_castsi256_ps(g));  // bit 31: the bucket holds a threshold
    if (!any_mixed) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + 8 * k), g);
      continue;
    }
    const __m256i mixed = _mm256_srai_epi32(g, 31);
    __m256i cell = _mm256_and_si256(g, cell_bits);
    __m256i h = _mm256_mask_i32gather_epi32(_mm256_setzero_si256(), hi_words, _mm256_slli_epi32(cell, 1), mixed, 4);
    __m256i step = _mm256_and_si256(mixed, cmpgt_epu32(w, h));
    cell = _mm256_sub_epi32(cell, step);  // step is -1 where the word lies above
    h = _mm256_mask_i32gather_epi32(h, hi_words, _mm256_slli_epi32(cell, 1), step, 4);
    step = _mm256_and_si256(mixed, cmpgt_epu32(w, h));
    cell = _mm256_sub_epi32(cell, step);
    const __m256i open = _mm256_and_si256(mixed, _mm256_or_si256(step, _mm256_cmpeq_epi32(w, h)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + 8 * k), cell);
    int rest = _mm256_movemask_ps(_mm256_castsi256_ps(open));
    if (rest) {
      alignas(32) uint32_t wl[8];
      _mm256_store_si256(reinterpret_cast<__m256i*>(wl), w);
      while (rest) {
        const int lane = __builtin_ctz(rest);
        rest &= rest - 1;
        c[8 * k + lane] = cell_of_word(t, wl[lane], seed, stream, input, sample, g0 + lane, k);
      }
    }
  }
}

}  // namespace costsmooth

#endif

// Eight Philox4x32-10 streams at once with AVX2, and their Box-Muller normals through SLEEF's
// vector logf/sincosf (shipped inside libtorch_cpu). The functions carry target attributes, so the
// rest of the extension stays baseline x86-64; callers check `cpu_has_avx2()` first.
//
// The 32-bit words are bit-identical to philox.h's scalar ones, and so are the uniforms
// (float(w) rounded to nearest, + 0.5f, * 2^-32); log and sincos come from SLEEF (1.0 ulp) instead of
// libm, so the normals may differ from the scalar path in the last bits.
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define COSTSMOOTH_CPU_AVX2 1

#include <immintrin.h>

#include <cstdint>

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

// Normals of the element groups g0 .. g0 + 7 of one (seed, stream, input, sample):
// z[8 * k + lane] is normal k (0..3) of group g0 + lane, as noise_normals(..., g0 + lane, ...)[k].
__attribute__((target("avx2,fma"))) inline void noise_normals_x8(uint64_t seed, uint32_t stream, uint32_t input,
                                                                 uint32_t sample, uint32_t g0, float z[32]) {
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
  const __m256i words[4] = {c0, c1, c2, c3};
  for (int pair = 0; pair < 2; ++pair) {
    const __m256 u1 = words_to_uniform8(words[2 * pair]);
    const __m256 u2 = words_to_uniform8(words[2 * pair + 1]);
    const __m256 r = _mm256_sqrt_ps(_mm256_mul_ps(_mm256_set1_ps(-2.0f), Sleef_logf8_u10avx2(u1)));
    const CostsmoothM256Pair sc = Sleef_sincosf8_u10avx2(_mm256_mul_ps(_mm256_set1_ps(6.2831853071795865f), u2));
    _mm256_storeu_ps(z + 8 * (2 * pair), _mm256_mul_ps(r, sc.y));      // cos
    _mm256_storeu_ps(z + 8 * (2 * pair + 1), _mm256_mul_ps(r, sc.x));  // sin
  }
}

}  // namespace costsmooth

#endif

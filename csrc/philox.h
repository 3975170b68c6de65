// Philox4x32-10 counter-based generator and the Gaussian noise built on it.
//
// Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy as 1, 2, 3" (SC 2011).
// This header is used by host code (CPU kernels, tests) and device code (CUDA kernels),
// so every function is plain arithmetic on 32-bit words with no library state.
//
// Noise layout (the invariant the whole library relies on): the normal value for element e of
// sample j of the input with global index i, in stream s, under a 64-bit seed, is
//     key     = (seed & 0xffffffff, seed >> 32)
//     counter = (e / 4, j, i, s)
//     words   = philox4x32_10(counter, key)
//     u_k     = (float(w_k) + 0.5f) * 2^-32           (four uniforms in (0, 1])
//     z0, z1  = Box-Muller(u0, u1),  z2, z3 = Box-Muller(u2, u3)
//     noise   = z_{e % 4}
// so it does not depend on batch size, grouping of inputs, device or sharding.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define COSTSMOOTH_HD __host__ __device__ __forceinline__
#define COSTSMOOTH_UNROLL _Pragma("unroll")
#else
#define COSTSMOOTH_HD inline
#define COSTSMOOTH_UNROLL
#endif

namespace costsmooth {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;  // golden ratio
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;  // sqrt(3) - 1

COSTSMOOTH_HD void mulhilo32(uint32_t a, uint32_t b, uint32_t* hi, uint32_t* lo) {
#if defined(__CUDA_ARCH__)
  *hi = __umulhi(a, b);
  *lo = a * b;
#else
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  *hi = static_cast<uint32_t>(p >> 32);
  *lo = static_cast<uint32_t>(p);
#endif
}

// Ten rounds of Philox4x32 on ctr[0..3] in place, key (k0, k1).
COSTSMOOTH_HD void philox4x32_10(uint32_t ctr[4], uint32_t k0, uint32_t k1) {
COSTSMOOTH_UNROLL
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo32(kPhiloxM0, ctr[0], &hi0, &lo0);
    mulhilo32(kPhiloxM1, ctr[2], &hi1, &lo1);
    const uint32_t c0 = hi1 ^ ctr[1] ^ k0;
    const uint32_t c2 = hi0 ^ ctr[3] ^ k1;
    ctr[0] = c0;
    ctr[1] = lo1;
    ctr[2] = c2;
    ctr[3] = lo0;
    k0 += kPhiloxW0;  // the key bump after the last round is unused
    k1 += kPhiloxW1;
  }
}

// The four raw words for (seed, stream, input index, sample index, element group e / 4).
COSTSMOOTH_HD void noise_words(uint64_t seed, uint32_t stream, uint32_t input, uint32_t sample,
                               uint32_t group, uint32_t out[4]) {
  out[0] = group;
  out[1] = sample;
  out[2] = input;
  out[3] = stream;
  philox4x32_10(out, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// Uniform in (0, 1]: (w + 0.5) * 2^-32, evaluated in float32 (identical on host and device).
COSTSMOOTH_HD float word_to_uniform(uint32_t w) {
  return (static_cast<float>(w) + 0.5f) * 2.3283064365386963e-10f;
}

// Four standard normals for one element group, by two Box-Muller transforms.
COSTSMOOTH_HD void noise_normals(uint64_t seed, uint32_t stream, uint32_t input, uint32_t sample,
                                 uint32_t group, float z[4]) {
  uint32_t w[4];
  noise_words(seed, stream, input, sample, group, w);
  constexpr float kTwoPi = 6.2831853071795865f;
COSTSMOOTH_UNROLL
  for (int pair = 0; pair < 2; ++pair) {
    const float u1 = word_to_uniform(w[2 * pair]);
    const float u2 = word_to_uniform(w[2 * pair + 1]);
    const float r = sqrtf(-2.0f * logf(u1));
    float sin_t, cos_t;
    sincosf(kTwoPi * u2, &sin_t, &cos_t);
    z[2 * pair] = r * cos_t;
    z[2 * pair + 1] = r * sin_t;
  }
}

}  // namespace costsmooth

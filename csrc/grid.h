// Sound noise on an input grid: exact draws of the discretised Gaussian's cell offsets.
//
// For inputs on a grid of step h, the base classifier sees only the grid cell of x + delta, so the
// noise is the integer offset k of that cell, with law P(k) = Phi((k + 1/2) h / sigma) -
// Phi((k - 1/2) h / sigma). A draw compares a 64-bit uniform integer U with a table of integer
// thresholds (cumulative probabilities times 2^64, computed once in high precision by
// costsmooth/sound.py): the cell is the first table entry c with U < thresholds[c]. Only integer
// comparisons are involved, so every device draws the same cell from the same words.
//
// Word layout (beside philox.h's): the high 32 bits of U for element e of sample j of input i in
// stream s are word e % 4 of philox(counter = (e / 4, j, i, s)), the same words the Gaussian path
// uses; the low 32 bits are word e % 4 of philox(counter = ((e / 4) | 2^31, j, i, s)). The low word
// is computed only when the high word alone does not decide (when it equals the high word of a
// threshold: probability about cells / 2^32), which gives the same cell as comparing all 64 bits.
#pragma once

#include <cstdint>

#include "philox.h"

namespace costsmooth {

constexpr uint32_t kGridLowWordFlag = 0x80000000u;  // counter word 0 of the low words

struct CellTable {
  // [cells]: cell c takes the uniforms thresholds[c - 1] <= U < thresholds[c]; the last entry is
  // 2^64 - 1 and the last cell also takes U = 2^64 - 1 (the table's tail is charged elsewhere).
  const uint64_t* thresholds;
  // [guide_size + 1]: guide[b] = the first c whose threshold's high word is >= b << shift (the
  // cell of the smallest word of bucket b), guide[guide_size] = cells - 1; bit 31 of guide[b] is
  // set when bucket b holds a threshold's high word (the bucket's words span more than one cell).
  const int32_t* guide;
  int32_t cells;
  int32_t shift;  // 32 - log2(guide_size)
};

constexpr int32_t kGuideMixed = INT32_MIN;  // bit 31 of a guide entry

COSTSMOOTH_HD uint32_t threshold_hi(const CellTable& t, int32_t c) {
  return static_cast<uint32_t>(t.thresholds[c] >> 32);
}

// The low 32 bits of U for word `word` (0..3) of element group `group`.
COSTSMOOTH_HD uint32_t grid_low_word(uint64_t seed, uint32_t stream, uint32_t input, uint32_t sample, uint32_t group,
                                     int word) {
  uint32_t w[4];
  noise_words(seed, stream, input, sample, group | kGridLowWordFlag, w);
  return w[word];
}

// The cell of U = (hi << 32) | low word: a binary search on the high words within the bucket of hi
// (every cell before guide[b] has a smaller high word, the cell guide[b + 1] a larger one), then
// the low word decides among the thresholds whose high word equals hi.
COSTSMOOTH_HD int32_t cell_of_word(const CellTable& t, uint32_t hi, uint64_t seed, uint32_t stream, uint32_t input,
                                   uint32_t sample, uint32_t group, int word) {
  const uint32_t bucket = hi >> t.shift;
  int32_t lo_c = t.guide[bucket] & ~kGuideMixed;
  int32_t hi_c = t.guide[bucket + 1] & ~kGuideMixed;
  while (lo_c < hi_c) {  // first c in [lo_c, hi_c] with threshold_hi(c) >= hi
    const int32_t mid = lo_c + (hi_c - lo_c) / 2;
    if (threshold_hi(t, mid) < hi) lo_c = mid + 1;
    else hi_c = mid;
  }
  int32_t c = lo_c;
  if (c < t.cells - 1 && threshold_hi(t, c) == hi) {
    const uint64_t u = (static_cast<uint64_t>(hi) << 32) | grid_low_word(seed, stream, input, sample, group, word);
    while (c < t.cells - 1 && u >= t.thresholds[c]) ++c;
  }
  return c;
}

// The cells of the four elements of one element group (as noise_normals gives four normals).
COSTSMOOTH_HD void noise_cells(const CellTable& t, uint64_t seed, uint32_t stream, uint32_t input, uint32_t sample,
                               uint32_t group, int32_t cells[4]) {
  uint32_t w[4];
  noise_words(seed, stream, input, sample, group, w);
COSTSMOOTH_UNROLL
  for (int k = 0; k < 4; ++k) {
    const int32_t g = t.guide[w[k] >> t.shift];
    cells[k] = (g & kGuideMixed) ? cell_of_word(t, w[k], seed, stream, input, sample, group, k) : g;
  }
}

}  // namespace costsmooth

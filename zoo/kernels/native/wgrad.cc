// The weight gradient of a 2-D convolution, float32, as an XLA FFI handler for the CPU.
//
//   dW[r, s, c, k] = sum over n, h, w of  x[n, h*sh + r - pt, w*sw + s - pl, c] * dy[n, h, w, k]
//
// x is NHWC (zero outside it: the padding is never built in memory), dy the output gradient
// (NHWC), dW is HWIO. For one kernel row r, the S*C values (s, c) a position reads are one
// contiguous window of a padded input row, so dW[r] (S*C x K) is a sum of outer products over
// positions: the notes' im2col product, with the patches read in place instead of copied. The
// output rows go in chunks; a chunk's padded input rows are copied once into a small buffer
// that stays in L2, and a register tile of 6 window values by 64 output channels stays in
// registers over the chunk. Threads of XLA's pool take fixed parts of the rows, each summed
// into its own copy of dW; on small maps (few positions, often a big dW) they take groups of
// dW's output channels over every position instead, summed straight into dW.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "xla/ffi/api/ffi.h"
#include "common.h"

namespace ffi = xla::ffi;

namespace {

using namespace zoo_native;

constexpr int kRows = 6;             // window values per register tile
constexpr int kVectors = 4;          // 64 output channels per register tile
constexpr int64_t kChunk = 512;      // output positions per chunk: their rows stay in L2
constexpr int64_t kParts = 16;       // copies of dW summed at the end, at most ...
constexpr int64_t kPartsBytes = 64 << 20;   // ... and at most this many bytes of them
constexpr int64_t kSmallMap = 400;   // output maps below this many pixels ...
constexpr int64_t kBlockParts = 4;   // ... split dW's channels into this many parts at most

// The padded input rows the output rows [row0, row1) read, into `rows`: one run of
// consecutive padded rows per image, and at[i] the offset of output row row0 + i's window
// (kernel row 0) in it.
void fill(const Geometry& g, const Input& in, const float* x, int64_t row0, int64_t row1,
          std::vector<float>& rows, std::vector<int64_t>& at) {
  const int64_t line = g.wp * g.c;
  int64_t count = 0;
  for (int64_t row = row0, end; row < row1; row = end) {
    end = std::min(row1, (row / g.ho + 1) * g.ho);   // the chunk's rows of this image
    count += (end - row - 1) * g.sh + g.r;
  }
  if (static_cast<int64_t>(rows.size()) < count * line) rows.resize(count * line);
  at.resize(row1 - row0);
  // columns [lo, hi) of a padded row are x's, the rest zeros
  const int64_t lo = std::min(g.wp, in.pl), hi = std::min(g.wp, in.pl + in.w);
  int64_t j = 0;
  for (int64_t row = row0, end; row < row1; row = end) {
    const int64_t n = row / g.ho, h0 = row % g.ho;
    end = std::min(row1, (n + 1) * g.ho);
    for (int64_t i = row; i < end; ++i) at[i - row0] = (j + (i - row) * g.sh) * line;
    for (int64_t t = 0; t < (end - row - 1) * g.sh + g.r; ++t, ++j) {
      float* dst = rows.data() + j * line;
      const int64_t ih = h0 * g.sh - in.pt + t;
      if (ih < 0 || ih >= in.h) {
        std::memset(dst, 0, line * sizeof(float));
        continue;
      }
      std::memset(dst, 0, lo * g.c * sizeof(float));
      std::memcpy(dst + lo * g.c, x + (n * in.h + ih) * in.w * g.c,
                  (hi - lo) * g.c * sizeof(float));
      std::memset(dst + hi * g.c, 0, (g.wp - hi) * g.c * sizeof(float));
    }
  }
}


// out[0:MR, 0:16*NV] (row stride k) += the products of output rows [row0, row1), whose
// padded input rows are xp (see fill)
template <int MR, int NV>
void tile(const Geometry& g, const float* xp, const int64_t* at, const float* dy,
          int64_t row0, int64_t row1, int64_t r, int64_t m0, int64_t k0, float* out) {
  v16 acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) acc[i][j] = load16(out + i * g.k + 16 * j);
  const int64_t a_step = g.sw * g.c;
  for (int64_t row = row0; row < row1; ++row) {
    const float* a = xp + at[row - row0] + r * g.wp * g.c + m0;
    const float* b = dy + row * g.wo * g.k + k0;
#pragma GCC unroll 4   // fewer branches and pointer steps per FMA
    for (int64_t p = 0; p < g.wo; ++p, a += a_step, b += g.k) {
      v16 bv[NV];
      for (int j = 0; j < NV; ++j) bv[j] = load16(b + 16 * j);
      for (int i = 0; i < MR; ++i) {
        const v16 av = splat16(a[i]);
        for (int j = 0; j < NV; ++j) acc[i][j] += av * bv[j];
      }
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) store16(out + i * g.k + 16 * j, acc[i][j]);
}

// every tile of dW (R, S*C, K) in output channels [k_lo, k_hi) over output rows
// [row0, row1) of the (n, h) grid
void chunk(const Geometry& g, const float* xp, const int64_t* at, const float* dy,
           int64_t row0, int64_t row1, float* out, int64_t k_lo, int64_t k_hi) {
  const int64_t m = g.s * g.c;
  for (int64_t k0 = k_lo; k0 < k_hi; k0 += 16 * kVectors) {
    const int nv = static_cast<int>(std::min<int64_t>(kVectors, (g.k - k0) / 16));
    for (int64_t r = 0; r < g.r; ++r) {
      for (int64_t m0 = 0; m0 < m; m0 += kRows) {
        const int mr = static_cast<int>(std::min<int64_t>(kRows, m - m0));
        float* o = out + (r * m + m0) * g.k + k0;
        as_constant<kVectors>(nv, [&](auto vectors) {
          as_constant<kRows>(mr, [&](auto rows) {
            constexpr int MR = decltype(rows)::value, NV = decltype(vectors)::value;
            tile<MR, NV>(g, xp, at, dy, row0, row1, r, m0, k0, o);
          });
        });
      }
    }
  }
}

ffi::Error WeightGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> xb,
                      ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dw, int64_t sh,
                      int64_t sw, int64_t pt, int64_t pl) {
  Geometry g;
  Input in;
  const ffi::Error bad = read_geometry("zoo weight gradient", xb.dimensions(), dw->dimensions(),
                                       dy.dimensions(), sh, sw, pt, pl, g, in);
  if (bad.failure()) return bad;
  const int64_t size = g.r * g.s * g.c * g.k;
  const int64_t total = g.n * g.ho;
  const int64_t rows = std::max<int64_t>(1, kChunk / g.wo);
  const float* x = xb.typed_data();
  const float* d = dy.typed_data();
  const int64_t width = 16 * kVectors, blocks = (g.k + width - 1) / width;
  if (blocks > 1 && g.ho * g.wo < kSmallMap) {
    // Small maps: parts take groups of dW's output channels over every position, summed in
    // order straight into dW (no copies of a big dW to zero and add for few positions).
    const int64_t group = (blocks + kBlockParts - 1) / kBlockParts;
    float* out = dw->typed_data();
    zoo_native::parallel_parts(pool, (blocks + group - 1) / group, [&](int64_t p) {
      const int64_t k_lo = p * group * width, k_hi = std::min(g.k, k_lo + group * width);
      for (int64_t q = 0; q < size / g.k; ++q)
        std::memset(out + q * g.k + k_lo, 0, (k_hi - k_lo) * sizeof(float));
      std::vector<float> padded;
      std::vector<int64_t> at;
      for (int64_t row = 0; row < total; row += rows) {
        const int64_t last = std::min(total, row + rows);
        fill(g, in, x, row, last, padded, at);
        chunk(g, padded.data(), at.data(), d, row, last, out, k_lo, k_hi);
      }
    });
    return ffi::Error::Success();
  }
  // The output rows split into a number of parts fixed by the shapes alone, each summed in
  // order into its own copy of dW, the copies added in order: the same bits on every run
  // and every thread count (a resumed training run repeats the uninterrupted one exactly).
  const int64_t parts = std::max<int64_t>(
      1, std::min<int64_t>({kParts, total, kPartsBytes / (size * int64_t(sizeof(float)))}));
  std::vector<std::vector<float>> copies(parts);
  zoo_native::parallel_parts(pool, parts, [&](int64_t p) {
    std::vector<float>& part = copies[p];
    part.assign(size, 0.0f);
    std::vector<float> padded;
    std::vector<int64_t> at;
    const int64_t end = (p + 1) * total / parts;
    for (int64_t row = p * total / parts; row < end; row += rows) {
      const int64_t last = std::min(end, row + rows);
      fill(g, in, x, row, last, padded, at);
      chunk(g, padded.data(), at.data(), d, row, last, part.data(), 0, g.k);
    }
  });
  float* out = dw->typed_data();
  std::memcpy(out, copies[0].data(), size * sizeof(float));
  for (int64_t i = 1; i < parts; ++i) {
    const float* p = copies[i].data();
    for (int64_t j = 0; j < size; ++j) out[j] += p[j];
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(ZooConvWeightGrad, WeightGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .ZOO_CONV_ATTRS);

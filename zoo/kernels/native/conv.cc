// The forward of a 2-D convolution, float32, as an XLA FFI handler for the CPU:
//
//   y[n, h, w, k] = sum over r, s, c of  xp[n, h*sh + r, w*sw + s, c] * W[r, s, c, k]
//
// xp is the input already padded (NHWC), W is HWIO, y NHWC. For one kernel row r the S*C
// values an output position reads are one contiguous window of an xp row, and W[r] is
// (S*C x K): a register tile of 6 output positions by 64 output channels (24 AVX-512
// accumulators) runs down the R*S*C window once and is stored once. Each output row is
// computed by one thread: the same bits on every run.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "xla/ffi/api/ffi.h"
#include "common.h"

namespace ffi = xla::ffi;

namespace {

using namespace zoo_native;

constexpr int64_t kParts = 64;   // parts of the output rows, at most


// y[row, w0 : w0 + MR, k0 : k0 + 16 NV]
template <int MR, int NV>
void tile(const Geometry& g, const float* xp, const float* w, int64_t row, int64_t w0,
          int64_t k0, float* y) {
  v16 acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) acc[i][j] = v16{};
  const int64_t n = row / g.ho, h = row % g.ho, m = g.s * g.c, a_step = g.sw * g.c;
  for (int64_t r = 0; r < g.r; ++r) {
    const float* a = xp + ((n * g.hp + h * g.sh + r) * g.wp + w0 * g.sw) * g.c;
    const float* b = w + r * m * g.k + k0;
    for (int64_t q = 0; q < m; ++q, ++a, b += g.k) {
      v16 bv[NV];
      for (int j = 0; j < NV; ++j) bv[j] = load16(b + 16 * j);
      for (int i = 0; i < MR; ++i) {
        const v16 av = splat16(a[i * a_step]);
        for (int j = 0; j < NV; ++j) acc[i][j] += av * bv[j];
      }
    }
  }
  float* out = y + (row * g.wo + w0) * g.k + k0;
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) store16(out + i * g.k + 16 * j, acc[i][j]);
}

template <int NV>
void tile_cols(int mr, const Geometry& g, const float* xp, const float* w, int64_t row,
               int64_t w0, int64_t k0, float* y) {
  switch (mr) {
    case 6: return tile<6, NV>(g, xp, w, row, w0, k0, y);
    case 5: return tile<5, NV>(g, xp, w, row, w0, k0, y);
    case 4: return tile<4, NV>(g, xp, w, row, w0, k0, y);
    case 3: return tile<3, NV>(g, xp, w, row, w0, k0, y);
    case 2: return tile<2, NV>(g, xp, w, row, w0, k0, y);
    default: return tile<1, NV>(g, xp, w, row, w0, k0, y);
  }
}

void output_row(const Geometry& g, const float* xp, const float* w, int64_t row, float* y) {
  for (int64_t k0 = 0; k0 < g.k; k0 += 64) {
    const int nv = static_cast<int>(std::min<int64_t>(4, (g.k - k0) / 16));
    for (int64_t w0 = 0; w0 < g.wo; w0 += 6) {
      const int mr = static_cast<int>(std::min<int64_t>(6, g.wo - w0));
      switch (nv) {
        case 4: tile_cols<4>(mr, g, xp, w, row, w0, k0, y); break;
        case 3: tile_cols<3>(mr, g, xp, w, row, w0, k0, y); break;
        case 2: tile_cols<2>(mr, g, xp, w, row, w0, k0, y); break;
        default: tile_cols<1>(mr, g, xp, w, row, w0, k0, y); break;
      }
    }
  }
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> xp, ffi::Buffer<ffi::F32> wt,
                   ffi::ResultBuffer<ffi::F32> y, int64_t sh, int64_t sw) {
  Geometry g;
  const ffi::Error bad = zoo_native::read_geometry("zoo convolution", xp.dimensions(),
                                                   wt.dimensions(), y->dimensions(), sh, sw, g);
  if (bad.failure()) return bad;
  const int64_t total = g.n * g.ho;
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(kParts, total));
  const float* x = xp.typed_data();
  const float* w = wt.typed_data();
  float* out = y->typed_data();
  zoo_native::parallel_parts(pool, parts, [&](int64_t p) {
    for (int64_t row = p * total / parts; row < (p + 1) * total / parts; ++row)
      output_row(g, x, w, row, out);
  });
  return ffi::Error::Success();
}

}  // namespace

ZOO_CONV_HANDLER(ZooConvForward, Forward);

// The forward of a 2-D convolution, float32, as an XLA FFI handler for the CPU:
//
//   z[n, h, w, k] = sum over r, s, c of  x[n, h*sh + r - pt, w*sw + s - pl, c] * W[r, s, c, k]
//   y[n, h, w, k] = z * scale[k] + shift[k], then max(y, 0) where relu
//
// x is NHWC (zero outside it: the padding is read in place, never copied), W is HWIO, y
// NHWC. For one kernel row r the S*C values an output position reads are one contiguous
// window of an x row, and W[r] is (S*C x K): a register tile of 6 output positions by 64
// output channels (24 AVX-512 accumulators) runs down the R*S*C window once and is stored
// once, through the per-channel terms (an inference BatchNorm, a bias, a ReLU folded into
// the store: no pass of their own over y). Kernel rows outside x add nothing; a tile whose
// windows cross the left or right edge reads them from a small zero-filled copy. Each
// output row is computed by one thread: the same bits on every run.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "xla/ffi/api/ffi.h"
#include "common.h"

namespace ffi = xla::ffi;

namespace {

using namespace zoo_native;

constexpr int64_t kParts = 64;   // parts of the output rows, at most
constexpr int kRows = 6;         // output positions per register tile
constexpr int kVectors = 4;      // vectors of 16 output channels per register tile


// What the store applies: y = z * scale + shift per output channel, then max(y, 0) where
// relu (NaN kept, as XLA's max keeps it).
struct Epilogue {
  const float* scale;
  const float* shift;
  bool relu;
};

// y[row, w0 : w0 + MR, k0 : k0 + 16 NV]; span: room for a tile's window run
template <int MR, int NV>
void tile(const Geometry& g, const Input& in, const Epilogue& e, const float* x,
          const float* w, int64_t row, int64_t w0, int64_t k0, float* y, float* span) {
  v16 acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) acc[i][j] = v16{};
  const int64_t n = row / g.ho, h = row % g.ho, m = g.s * g.c, a_step = g.sw * g.c;
  const int64_t col0 = w0 * g.sw - in.pl, cols = (MR - 1) * g.sw + g.s;
  const bool inside = col0 >= 0 && col0 + cols <= in.w;
  for (int64_t r = 0; r < g.r; ++r) {
    const int64_t ih = h * g.sh + r - in.pt;
    if (ih < 0 || ih >= in.h) continue;
    const float* src = x + (n * in.h + ih) * in.w * g.c;
    const float* a = src + col0 * g.c;
    if (!inside) {   // columns [lo, hi) of the run are in x, the rest zeros
      const int64_t lo = std::min(cols, std::max<int64_t>(0, -col0));
      const int64_t hi = std::max(lo, std::min(cols, in.w - col0));
      std::memset(span, 0, lo * g.c * sizeof(float));
      std::memcpy(span + lo * g.c, src + (col0 + lo) * g.c, (hi - lo) * g.c * sizeof(float));
      std::memset(span + hi * g.c, 0, (cols - hi) * g.c * sizeof(float));
      a = span;
    }
    const float* b = w + r * m * g.k + k0;
#pragma GCC unroll 4   // fewer branches and pointer steps per FMA
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
  const v16 zero{};
  for (int j = 0; j < NV; ++j) {
    const v16 scale = load16(e.scale + k0 + 16 * j), shift = load16(e.shift + k0 + 16 * j);
    for (int i = 0; i < MR; ++i) {
      v16 v = acc[i][j] * scale + shift;
      if (e.relu) v = v < zero ? zero : v;
      store16(out + i * g.k + 16 * j, v);
    }
  }
}

void output_row(const Geometry& g, const Input& in, const Epilogue& e, const float* x,
                const float* w, int64_t row, float* y, float* span) {
  for (int64_t k0 = 0; k0 < g.k; k0 += 16 * kVectors) {
    const int nv = static_cast<int>(std::min<int64_t>(kVectors, (g.k - k0) / 16));
    for (int64_t w0 = 0; w0 < g.wo; w0 += kRows) {
      const int mr = static_cast<int>(std::min<int64_t>(kRows, g.wo - w0));
      as_constant<kVectors>(nv, [&](auto vectors) {
        as_constant<kRows>(mr, [&](auto rows) {
          constexpr int MR = decltype(rows)::value, NV = decltype(vectors)::value;
          tile<MR, NV>(g, in, e, x, w, row, w0, k0, y, span);
        });
      });
    }
  }
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> xb, ffi::Buffer<ffi::F32> wt,
                   ffi::Buffer<ffi::F32> scale, ffi::Buffer<ffi::F32> shift,
                   ffi::ResultBuffer<ffi::F32> y, int64_t sh, int64_t sw, int64_t pt,
                   int64_t pl, bool relu) {
  Geometry g;
  Input in;
  const ffi::Error bad = read_geometry("zoo convolution", xb.dimensions(), wt.dimensions(),
                                       y->dimensions(), sh, sw, pt, pl, g, in);
  if (bad.failure()) return bad;
  if (static_cast<int64_t>(scale.element_count()) != g.k ||
      static_cast<int64_t>(shift.element_count()) != g.k)
    return ffi::Error::InvalidArgument("zoo convolution: give K scales and shifts");
  const Epilogue e{scale.typed_data(), shift.typed_data(), relu};
  const int64_t total = g.n * g.ho;
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(kParts, total));
  const float* x = xb.typed_data();
  const float* w = wt.typed_data();
  float* out = y->typed_data();
  zoo_native::parallel_parts(pool, parts, [&](int64_t p) {
    std::vector<float> span(((kRows - 1) * sw + g.s) * g.c);   // a tile's window run
    for (int64_t row = p * total / parts; row < (p + 1) * total / parts; ++row)
      output_row(g, in, e, x, w, row, out, span.data());
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(ZooConvForward, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("sh")
                                  .Attr<int64_t>("sw")
                                  .Attr<int64_t>("pt")
                                  .Attr<int64_t>("pl")
                                  .Attr<bool>("relu"));

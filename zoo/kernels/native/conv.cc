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
// the store: no pass of their own over y). The positions of a tile are 6 consecutive ones of
// the whole (n, h, w) grid, so a 7x7 map wastes no lanes on a row's tail; a window that
// crosses the left or right edge is read from a small zero-filled copy, a kernel row above
// or below the map from zeros. W is packed into blocks of 64 output channels, and work goes
// in parts of (the blocks whose W fits half an L2, a run of tiles): a part reads each window
// once for all its blocks and keeps their W in L2 over the run. Each output is computed by
// one part: the same bits on every run.
#include <algorithm>
#include <array>
#include <cstdint>
#include <limits>
#include <cstring>
#include <vector>

#include "xla/ffi/api/ffi.h"
#include "common.h"

namespace ffi = xla::ffi;

namespace {

using namespace zoo_native;

constexpr int kRows = 6;         // output positions per register tile
constexpr int kVectors = 4;      // vectors of 16 output channels per register tile
constexpr int64_t kParts = 128;  // parts of the work, about ...
constexpr int64_t kMinRun = 16;  // ... but at least this many tiles each
constexpr int64_t kGroupBytes = 1 << 20;   // W read by one part, at most (half an L2)
constexpr int64_t kStepBytes = 256 << 10;  // conv rows a pooled step computes, about
constexpr int64_t kMinBand = 8;            // pooled rows per band, at least


// What the store applies: y = z * scale + shift per output channel, then max(y, 0) where
// relu (NaN kept, as XLA's max keeps it).
struct Epilogue {
  const float* scale;
  const float* shift;
  bool relu;
};

// z[p0 : p0 + MR, k0 : k0 + 16 NV] over the flattened (n, h, w) positions, through the
// epilogue, into out (rows ldo apart); wb: W's columns k0 onwards with rows ldb apart;
// span: room for MR windows of one kernel row, zeros: one window of zeros
template <int MR, int NV>
void tile(const Geometry& g, const Input& in, const Epilogue& e, const float* x,
          const float* wb, int64_t ldb, int64_t p0, int64_t k0, float* out, int64_t ldo,
          float* span, const float* zeros) {
  v16 acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) acc[i][j] = v16{};
  const int64_t m = g.s * g.c, plane = g.ho * g.wo;
  int64_t n[MR], top[MR], col0[MR];
  for (int i = 0; i < MR; ++i) {
    const int64_t p = p0 + i, q = p % plane;
    n[i] = p / plane;
    top[i] = (q / g.wo) * g.sh - in.pt;
    col0[i] = (q % g.wo) * g.sw - in.pl;
  }
  for (int64_t r = 0; r < g.r; ++r) {
    const float* a[MR];
    bool any = false;
    for (int i = 0; i < MR; ++i) {
      const int64_t ih = top[i] + r;
      if (ih < 0 || ih >= in.h) {
        a[i] = zeros;
        continue;
      }
      any = true;
      const float* src = x + (n[i] * in.h + ih) * in.w * g.c;
      if (col0[i] >= 0 && col0[i] + g.s <= in.w) {
        a[i] = src + col0[i] * g.c;
        continue;
      }
      // columns [lo, hi) of the window are in x, the rest zeros
      float* dst = span + i * m;
      const int64_t lo = std::min(g.s, std::max<int64_t>(0, -col0[i]));
      const int64_t hi = std::max(lo, std::min(g.s, in.w - col0[i]));
      std::memset(dst, 0, lo * g.c * sizeof(float));
      std::memcpy(dst + lo * g.c, src + (col0[i] + lo) * g.c, (hi - lo) * g.c * sizeof(float));
      std::memset(dst + hi * g.c, 0, (g.s - hi) * g.c * sizeof(float));
      a[i] = dst;
    }
    if (!any) continue;
    const float* b = wb + r * m * ldb;
#pragma GCC unroll 4   // fewer branches and pointer steps per FMA
    for (int64_t q = 0; q < m; ++q, b += ldb) {
      v16 bv[NV];
      for (int j = 0; j < NV; ++j) bv[j] = load16(b + 16 * j);
      for (int i = 0; i < MR; ++i) {
        const v16 av = splat16(a[i][q]);
        for (int j = 0; j < NV; ++j) acc[i][j] += av * bv[j];
      }
    }
  }
  const v16 zero{};
  for (int j = 0; j < NV; ++j) {
    const v16 scale = load16(e.scale + k0 + 16 * j), shift = load16(e.shift + k0 + 16 * j);
    for (int i = 0; i < MR; ++i) {
      v16 v = acc[i][j] * scale + shift;
      if (e.relu) v = v < zero ? zero : v;
      store16(out + i * ldo + 16 * j, v);
    }
  }
}

// One tile at flattened positions [p0, p0 + mr) and output channels [k0, k0 + 64) (or to K),
// from W packed by `packed`, stored at out (rows ldo apart).
struct Tiles {
  const Geometry& g;
  const Input& in;
  const Epilogue& e;
  const float* x;
  const float* w;   // packed W (see packed)
  int64_t rows;

  void run(int64_t p0, int mr, int64_t kb, float* out, int64_t ldo, float* span,
           const float* zeros) const {
    const int64_t k0 = kb * 16 * kVectors;
    const int64_t ldb = std::min<int64_t>(16 * kVectors, g.k - k0);   // the block's width
    const float* wb = w + k0 * rows;
    as_constant<kVectors>(static_cast<int>(ldb / 16), [&](auto vectors) {
      as_constant<kRows>(mr, [&](auto rows_) {
        constexpr int MR = decltype(rows_)::value, NV = decltype(vectors)::value;
        tile<MR, NV>(g, in, e, x, wb, ldb, p0, k0, out, ldo, span, zeros);
      });
    });
  }
};

// W as its blocks of 64 output channels, each (R*S*C x 64) contiguous: rows K floats apart
// would map a block onto a fraction of L2's sets and stream it from memory for each tile.
// The buffer stays with the calling thread: no fresh pages on every call. One block is W
// as it is.
const float* packed(ffi::ThreadPool& pool, const Geometry& g, const float* w, int64_t rows,
                    int64_t blocks) {
  if (blocks == 1) return w;
  const int64_t width = 16 * kVectors;
  thread_local std::vector<float> buffer;
  if (buffer.size() < static_cast<size_t>(rows * g.k)) buffer.resize(rows * g.k);
  float* dst = buffer.data();
  zoo_native::parallel_parts(pool, blocks, [&](int64_t kb) {
    const int64_t k0 = kb * width, cols = std::min(width, g.k - k0);
    for (int64_t q = 0; q < rows; ++q)
      std::memcpy(dst + k0 * rows + q * cols, w + q * g.k + k0, cols * sizeof(float));
  });
  return dst;
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
  const int64_t width = 16 * kVectors, m = g.s * g.c, rows = g.r * m;
  const int64_t positions = g.n * g.ho * g.wo, tiles = (positions + kRows - 1) / kRows;
  const int64_t blocks = (g.k + width - 1) / width;
  // a part takes as many blocks as keep their W within kGroupBytes, for a run of tiles: each
  // window is read once for all of them, and W stays in L2 over the run
  const int64_t group = std::clamp<int64_t>(
      kGroupBytes / (rows * width * int64_t(sizeof(float))), 1, blocks);
  const int64_t groups = (blocks + group - 1) / group;
  const int64_t run = std::max<int64_t>(
      std::min(kMinRun, tiles), (tiles * groups + kParts - 1) / kParts);
  const int64_t runs = (tiles + run - 1) / run;
  const Tiles t{g, in, e, xb.typed_data(), packed(pool, g, wt.typed_data(), rows, blocks),
                rows};
  float* out = y->typed_data();
  zoo_native::parallel_parts(pool, groups * runs, [&](int64_t part) {
    std::vector<float> span(kRows * m), zeros(m, 0.0f);
    const int64_t kb0 = part / runs * group, kb1 = std::min(blocks, kb0 + group);
    const int64_t t0 = part % runs * run, t1 = std::min(tiles, t0 + run);
    for (int64_t i = t0; i < t1; ++i) {
      const int64_t p0 = i * kRows;
      const int mr = static_cast<int>(std::min<int64_t>(kRows, positions - p0));
      for (int64_t kb = kb0; kb < kb1; ++kb)
        t.run(p0, mr, kb, out + p0 * g.k + kb * width, g.k, span.data(), zeros.data());
    }
  });
  return ffi::Error::Success();
}

// The same, then a max pool over z (window ph x pw, stride, top and left padding; positions
// outside z never read, a NaN in a window gives NaN, as XLA's max): the conv's output is
// never written out. A part takes a band of pooled rows of one image, in steps of a few
// rows: the conv rows a step's windows read are computed into a buffer that stays in L2
// (the tiles run across row ends, as above), and the rows the next step shares are kept.
ffi::Error PooledForward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> xb,
                         ffi::Buffer<ffi::F32> wt, ffi::Buffer<ffi::F32> scale,
                         ffi::Buffer<ffi::F32> shift, ffi::ResultBuffer<ffi::F32> y,
                         int64_t sh, int64_t sw, int64_t pt, int64_t pl, bool relu, int64_t ho,
                         int64_t wo, int64_t ph, int64_t pw, int64_t psh, int64_t psw,
                         int64_t ppt, int64_t ppl) {
  const auto xd = xb.dimensions(), kd = wt.dimensions(), yd = y->dimensions();
  if (xd.size() != 4 || kd.size() != 4 || yd.size() != 4 || ph < 1 || pw < 1 || psh < 1 ||
      psw < 1 || ppt < 0 || ppl < 0 || ho < 1 || wo < 1)
    return ffi::Error::InvalidArgument("zoo pooled convolution: shapes do not fit");
  const std::array<int64_t, 4> x4{xd[0], xd[1], xd[2], xd[3]}, k4{kd[0], kd[1], kd[2], kd[3]},
      z4{xd[0], ho, wo, kd[3]};
  Geometry g;
  Input in;
  const ffi::Error bad = read_geometry("zoo pooled convolution", x4, k4, z4, sh, sw, pt, pl,
                                       g, in);
  if (bad.failure()) return bad;
  const int64_t hp = yd[1], wp = yd[2];
  if (yd[0] != g.n || yd[3] != g.k || (hp - 1) * psh - ppt >= ho ||
      (wp - 1) * psw - ppl >= wo ||
      static_cast<int64_t>(scale.element_count()) != g.k ||
      static_cast<int64_t>(shift.element_count()) != g.k)
    return ffi::Error::InvalidArgument(
        "zoo pooled convolution: the pooled output, the scales or the shifts do not fit");
  const Epilogue e{scale.typed_data(), shift.typed_data(), relu};
  const int64_t width = 16 * kVectors, m = g.s * g.c, rows = g.r * m;
  const int64_t blocks = (g.k + width - 1) / width;
  const Tiles t{g, in, e, xb.typed_data(), packed(pool, g, wt.typed_data(), rows, blocks),
                rows};
  // parts: (image, band of pooled rows, block of 64 channels), about kParts / 4 in all and
  // bands of at least kMinBand pooled rows (each band computes again the conv rows its first
  // window shares with the band before); steps of pooled rows whose conv rows of the block
  // take about kStepBytes
  const int64_t per_image = std::max<int64_t>(1, (kParts / 4 + g.n - 1) / g.n);
  const int64_t bands = std::clamp<int64_t>((per_image + blocks - 1) / blocks, 1,
                                            std::max<int64_t>(1, hp / kMinBand));
  float* out = y->typed_data();
  const float inf = std::numeric_limits<float>::infinity();
  zoo_native::parallel_parts(pool, g.n * bands * blocks, [&](int64_t part) {
    const int64_t kb = part % blocks, band = part / blocks % bands, n = part / blocks / bands;
    const int64_t r0 = band * hp / bands, r1 = (band + 1) * hp / bands;
    const int64_t k0 = kb * width, cols = std::min(width, g.k - k0), line = g.wo * cols;
    const int64_t step =
        std::max<int64_t>(1, (kStepBytes / int64_t(sizeof(float)) / line) / psh);
    std::vector<float> buf(((step - 1) * psh + ph) * line), span(kRows * m), zeros(m, 0.0f);
    int64_t first = 0, end = 0;   // buf holds conv rows [first, end)
    for (int64_t s0 = r0; s0 < r1; s0 += step) {
      const int64_t s1 = std::min(r1, s0 + step);
      const int64_t lo = std::clamp<int64_t>(s0 * psh - ppt, 0, g.ho);
      const int64_t hi = std::clamp<int64_t>((s1 - 1) * psh - ppt + ph, lo, g.ho);
      if (lo < end && lo >= first) {   // keep the rows this step shares with the last
        std::memmove(buf.data(), buf.data() + (lo - first) * line,
                     (end - lo) * line * sizeof(float));
      } else {
        end = lo;
      }
      first = lo;
      const int64_t p_end = (n * g.ho + hi) * g.wo;
      for (int64_t p0 = (n * g.ho + end) * g.wo; p0 < p_end; p0 += kRows) {
        const int mr = static_cast<int>(std::min<int64_t>(kRows, p_end - p0));
        t.run(p0, mr, kb, buf.data() + (p0 - (n * g.ho + first) * g.wo) * cols, cols,
              span.data(), zeros.data());
      }
      end = hi;
      for (int64_t r = s0; r < s1; ++r) {
        const int64_t top = r * psh - ppt;
        const int64_t h0 = std::max<int64_t>(0, top), h1 = std::min(g.ho, top + ph);
        for (int64_t c = 0; c < wp; ++c) {
          const int64_t left = c * psw - ppl;
          const int64_t q0 = std::max<int64_t>(0, left), q1 = std::min(g.wo, left + pw);
          float* o = out + ((n * hp + r) * wp + c) * g.k + k0;
          for (int64_t j = 0; j < cols; j += 16) {
            v16 best = -inf - v16{};
            for (int64_t i = h0; i < h1; ++i) {
              const float* zr = buf.data() + (i - first) * line + j;
              for (int64_t q = q0; q < q1; ++q) {
                const v16 v = load16(zr + q * cols);
                best = (v > best) | (v != v) ? v : best;
              }
            }
            store16(o + j, best);
          }
        }
      }
    }
  });
  return ffi::Error::Success();
}

}  // namespace

// x, W, the scales and shifts, the result, the stride, top and left padding and the ReLU
static auto conv_binding() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Ret<ffi::Buffer<ffi::F32>>()
      .ZOO_CONV_ATTRS
      .Attr<bool>("relu");
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(ZooConvForward, Forward, conv_binding());

// and the conv's map, the pool's window, stride and top and left padding
XLA_FFI_DEFINE_HANDLER_SYMBOL(ZooPooledConvForward, PooledForward,
                              conv_binding()
                                  .Attr<int64_t>("ho")
                                  .Attr<int64_t>("wo")
                                  .Attr<int64_t>("ph")
                                  .Attr<int64_t>("pw")
                                  .Attr<int64_t>("psh")
                                  .Attr<int64_t>("psw")
                                  .Attr<int64_t>("ppt")
                                  .Attr<int64_t>("ppl"));

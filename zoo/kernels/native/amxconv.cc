// The forward of a 2-D convolution in bfloat16 on Intel's AMX tiles, as an XLA FFI handler:
//
//   y[n, h, w, k] = sum over r, s, c of  xpad[n, h*sh + r, w*sw + s, c] * W[r, s, c, k]
//
// accumulated in float32, then y * scale[k] + shift[k] and, where asked, max(y, 0) (a bias,
// an inference BatchNorm, a ReLU), rounded once to bfloat16; x NHWC, W HWIO, y NHWC. As in
// conv.cc, for a kernel row r the S*C values an output position reads are one contiguous
// window of a padded input row. A part of the work is a band of output rows of one image:
// its padded input rows are copied once into a scratch buffer (the zero border written
// there), and 16 positions are one A tile (16 rows of 32 window values) read from it in
// place; a pointwise conv of whole chunks reads x itself. At stride 1 the band's positions
// are taken as one run over the scratch rows (a position every C values; those in the
// border columns are computed and not stored), so a small map fills whole tiles; at other
// strides each output row is its own run. W is packed once per call as AMX's B tiles: per
// kernel row, 32-value chunks of the S*C window by 16 channels, pairs of window values
// interleaved. Chunk values past S*C have zero weights: what A reads there, the next
// pixels' values, is multiplied by zero (so an infinity in the input also turns the
// outputs of its left neighbours to NaN). A block of 32 positions x 32 channels (four C
// tiles) runs down the R*Q chunks once. A run's last tile overlaps the one before it (those
// positions are computed twice, alike). Which part computes which outputs is fixed by the
// shapes: the same bits on every run.
#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "xla/ffi/api/ffi.h"
#include "common.h"

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__)
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#define ZOO_AMX 1
#else
#define ZOO_AMX 0
#endif

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kParts = 64;   // parts of the output rows, at most
constexpr int64_t kWeightsNear = 128 << 10;   // bytes of packed W kept near (L2) whole

#if ZOO_AMX

// Linux hands out the tile registers' state only to processes that ask, once.
bool tiles_permitted() {
  static const bool ok = [] {
    constexpr long kReqPerm = 0x1023, kTileData = 18;   // ARCH_REQ_XCOMP_PERM, XTILEDATA
    return syscall(SYS_arch_prctl, kReqPerm, kTileData) == 0;
  }();
  return ok;
}

struct TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// tiles 0-3: C (position group i, channel group j at 2*i + j); 4-5: A; 6-7: B
void configure() {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = 16;
  }
  _tile_loadconfig(&cfg);
}

// bfloat16 values on 64-byte lines: each A and B tile row is then one cache line.
struct Lines {
  uint16_t* data = nullptr;
  int64_t size = 0;
  Lines() = default;
  explicit Lines(int64_t n) { reserve(n); }
  Lines(const Lines&) = delete;
  Lines& operator=(const Lines&) = delete;
  ~Lines() { std::free(data); }
  void reserve(int64_t n) {
    if (n <= size) return;
    std::free(data);
    const int64_t bytes = (n * 2 + 63) / 64 * 64;
    data = static_cast<uint16_t*>(std::aligned_alloc(64, bytes));
    size = data ? n : 0;
  }
};

struct Conv {
  int64_t n, h, w, c;        // input
  int64_t ho, wo, k;         // output
  int64_t r, s, sh, sw;      // kernel, stride
  int64_t pt, pl;            // top and left padding
  int64_t wp, q;             // padded row length (pixels), 32-value chunks per kernel row
  int64_t band;              // output rows per part
};

// The B tiles of chunk q of kernel row r (rq = r * Q + q) of [r][q][K/16][16 pairs][16
// channels][2], zero past the S*C window
void pack_weights(const Conv& g, const uint16_t* w, int64_t rq, uint16_t* out) {
  const int64_t m = g.s * g.c, kt = g.k / 16, r = rq / g.q, q = rq % g.q;
  uint16_t* dst = out + rq * kt * 512;
  for (int64_t t = 0; t < kt; ++t)
    for (int64_t j = 0; j < 32; ++j) {
      const int64_t v = q * 32 + j;   // window value
      uint16_t* d = dst + t * 512 + (j / 2) * 32 + (j % 2);
      const uint16_t* src = w + (r * m + v) * g.k + t * 16;
      for (int64_t i = 0; i < 16; ++i) d[2 * i] = v < m ? src[i] : 0;
    }
}

// The padded input rows [row0, row0 + rows) of image n, each g.wp pixels, then zeros up to
// `size` values.
void fill(const Conv& g, const uint16_t* x, int64_t n, int64_t row0, int64_t rows,
          uint16_t* buf, int64_t size) {
  const int64_t pitch = g.wp * g.c;
  const int64_t lo = std::min(g.pl, g.wp), hi = std::min(g.wp, g.pl + g.w);
  for (int64_t i = 0; i < rows; ++i) {
    uint16_t* d = buf + i * pitch;
    const int64_t ih = row0 + i - g.pt;
    if (ih < 0 || ih >= g.h || hi <= lo) {
      std::memset(d, 0, pitch * 2);
      continue;
    }
    std::memset(d, 0, lo * g.c * 2);
    std::memcpy(d + lo * g.c, x + ((n * g.h + ih) * g.w + lo - g.pl) * g.c, (hi - lo) * g.c * 2);
    std::memset(d + hi * g.c, 0, (g.wp - hi) * g.c * 2);
  }
  std::memset(buf + rows * pitch, 0, (size - rows * pitch) * 2);
}

// The per-channel epilogue: y = acc * scale + shift, then max(y, 0) where relu.
struct Epilogue {
  const float* scale;
  const float* shift;
  bool relu;
};

// C tile (16 x 16 float32) of channels [k0, k0 + 16) -> the rows of y it holds (out_row[i]
// < 0: not an output), through the epilogue, rounded to bfloat16
inline void store_tile(const float* acc, const int64_t* out_row, uint16_t* y, int64_t k,
                       int64_t k0, const Epilogue& e) {
  const __m512 scale = _mm512_loadu_ps(e.scale + k0), shift = _mm512_loadu_ps(e.shift + k0);
  for (int i = 0; i < 16; ++i) {
    if (out_row[i] < 0) continue;
    __m512 v = _mm512_fmadd_ps(_mm512_loadu_ps(acc + 16 * i), scale, shift);
    // NaN kept, as XLA's max keeps it: maxps returns its second operand where one is NaN
    if (e.relu) v = _mm512_max_ps(_mm512_setzero_ps(), v);
    const __m256bh b = _mm512_cvtneps_pbh(v);
    std::memcpy(y + out_row[i] * k + k0, &b, 32);
  }
}

// The A tiles at a[i] (i < MB; rows a_stride bytes apart) by channels
// [k0, k0 + 16 NB) -> y at out_rows[i]
template <int MB, int NB>
void block(const Conv& g, const uint16_t* const* a, int64_t a_stride, const uint16_t* wp,
           int64_t k0, const int64_t (*out_rows)[16], const Epilogue& e, uint16_t* y) {
  const int64_t kt = g.k / 16, pitch = g.wp * g.c;
  _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
  for (int64_t r = 0; r < g.r; ++r) {
    const uint16_t* a0 = a[0] + r * pitch;
    const uint16_t* a1 = a[MB - 1] + r * pitch;
    const uint16_t* b = wp + (r * g.q * kt + k0 / 16) * 512;
    for (int64_t q = 0; q < g.q; ++q, b += kt * 512) {
      _tile_loadd(4, a0 + 32 * q, a_stride);
      _tile_loadd(6, b, 64);
      _tile_dpbf16ps(0, 4, 6);
      if (NB == 2) {
        _tile_loadd(7, b + 512, 64);
        _tile_dpbf16ps(1, 4, 7);
      }
      if (MB == 2) {
        _tile_loadd(5, a1 + 32 * q, a_stride);
        _tile_dpbf16ps(2, 5, 6);
        if (NB == 2) _tile_dpbf16ps(3, 5, 7);
      }
    }
  }
  alignas(64) float acc[4][256];
  _tile_stored(0, acc[0], 64);
  if (NB == 2) _tile_stored(1, acc[1], 64);
  if (MB == 2) _tile_stored(2, acc[2], 64);
  if (MB == 2 && NB == 2) _tile_stored(3, acc[3], 64);
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < NB; ++j) store_tile(acc[2 * i + j], out_rows[i], y, g.k, k0 + 16 * j, e);
}

// The tiles of one run of positions: each one's A address and output rows.
struct Run {
  std::vector<const uint16_t*> a;
  std::vector<std::array<int64_t, 16>> rows;
};

void blocks(const Conv& g, const Run& run, int64_t a_stride, const uint16_t* wp,
            const Epilogue& e, uint16_t* y) {
  const int64_t tiles = static_cast<int64_t>(run.a.size());
  auto one = [&](int64_t t, int64_t k0) {
    const uint16_t* a[2] = {run.a[t], run.a[std::min(t + 1, tiles - 1)]};
    const int64_t(*rows)[16] = reinterpret_cast<const int64_t(*)[16]>(&run.rows[t][0]);
    const bool two_m = t + 1 < tiles, two_k = g.k - k0 >= 32;
    if (two_m && two_k) block<2, 2>(g, a, a_stride, wp, k0, rows, e, y);
    else if (two_m) block<2, 1>(g, a, a_stride, wp, k0, rows, e, y);
    else if (two_k) block<1, 2>(g, a, a_stride, wp, k0, rows, e, y);
    else block<1, 1>(g, a, a_stride, wp, k0, rows, e, y);
  };
  // all of W within kWeightsNear: each pair of position tiles meets every channel block
  // while its A rows are near; more: each channel block's B tiles stay near for every pair
  if (g.r * g.q * g.k * 64 <= kWeightsNear) {
    for (int64_t t = 0; t < tiles; t += 2)
      for (int64_t k0 = 0; k0 < g.k; k0 += 32) one(t, k0);
  } else {
    for (int64_t k0 = 0; k0 < g.k; k0 += 32)
      for (int64_t t = 0; t < tiles; t += 2) one(t, k0);
  }
}

// Output rows [h0, h1) of image n; false where its scratch could not be allocated.
bool band(const Conv& g, const uint16_t* x, const uint16_t* wp, int64_t n, int64_t h0,
          int64_t h1, const Epilogue& e, uint16_t* y) {
  Run run;
  auto add = [&](const uint16_t* a, const std::array<int64_t, 16>& rows) {
    run.a.push_back(a);
    run.rows.push_back(rows);
  };
  const bool flat = g.sh == 1 && g.sw == 1;
  if (flat && g.r == 1 && g.s == 1 && g.pt == 0 && g.pl == 0 && g.c % 32 == 0 &&
      g.ho == g.h && g.wo == g.w && (h1 - h0) * g.w >= 16) {
    // a pointwise conv of whole chunks reads its positions from x itself
    const int64_t m = (h1 - h0) * g.w, first = (n * g.ho + h0) * g.wo;
    for (int64_t p0 = 0; p0 < m; p0 += 16) {
      const int64_t start = std::min(p0, m - 16);
      std::array<int64_t, 16> rows;
      for (int i = 0; i < 16; ++i) rows[i] = first + start + i;
      add(x + (first + start) * g.c, rows);
    }
    blocks(g, run, g.c * 2, wp, e, y);
    return true;
  }
  thread_local Lines scratch;
  const int64_t pitch = g.wp * g.c, in_rows = (h1 - h0 - 1) * g.sh + g.r;
  // A reads at most: 16 positions past the last start, the last kernel row, the last chunk
  const int64_t reach = (flat ? ((h1 - h0) * g.wp + 16) * g.c + (g.r - 1) * pitch
                               : in_rows * pitch + 16 * g.sw * g.c) + g.q * 32 + 32;
  const int64_t size = std::max(in_rows * pitch, reach);
  scratch.reserve(size);
  if (!scratch.data) return false;
  fill(g, x, n, h0 * g.sh, in_rows, scratch.data, size);
  if (flat) {
    // positions p = row * wp + col over the band; the last valid one is its last output
    const int64_t m = (h1 - h0 - 1) * g.wp + g.wo;
    for (int64_t p0 = 0; p0 < m; p0 += 16) {
      const int64_t start = std::max<int64_t>(0, std::min(p0, m - 16));
      std::array<int64_t, 16> rows;
      for (int i = 0; i < 16; ++i) {
        const int64_t p = start + i, hh = p / g.wp, ww = p % g.wp;
        rows[i] = (p < m && ww < g.wo) ? (n * g.ho + h0 + hh) * g.wo + ww : -1;
      }
      add(scratch.data + start * g.c, rows);
    }
    blocks(g, run, g.c * 2, wp, e, y);
    return true;
  }
  const int width = static_cast<int>(std::min<int64_t>(16, g.wo));
  for (int64_t h = h0; h < h1; ++h)
    for (int64_t w0 = 0; w0 < g.wo; w0 += 16) {
      const int64_t start = std::min(w0, g.wo - width);
      std::array<int64_t, 16> rows;
      for (int i = 0; i < 16; ++i)
        rows[i] = i < width ? (n * g.ho + h) * g.wo + start + i : -1;
      add(scratch.data + (h - h0) * g.sh * pitch + start * g.sw * g.c, rows);
    }
  blocks(g, run, g.sw * g.c * 2, wp, e, y);
  return true;
}

#endif  // ZOO_AMX

ffi::Error Forward(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer wt,
                   ffi::Buffer<ffi::F32> scale, ffi::Buffer<ffi::F32> shift,
                   ffi::Result<ffi::AnyBuffer> y, int64_t sh, int64_t sw, int64_t pt,
                   int64_t pl, bool relu) {
#if ZOO_AMX
  if (!tiles_permitted())
    return ffi::Error::Internal("zoo AMX convolution: the kernel refused the tile state "
                                "(arch_prctl ARCH_REQ_XCOMP_PERM)");
  const auto xd = x.dimensions(), wd = wt.dimensions(), od = y->dimensions();
  if (x.element_type() != ffi::BF16 || wt.element_type() != ffi::BF16 ||
      y->element_type() != ffi::BF16 || xd.size() != 4 || wd.size() != 4 || od.size() != 4)
    return ffi::Error::InvalidArgument("zoo AMX convolution: 4-D bfloat16 operands expected");
  Conv g{xd[0], xd[1], xd[2], xd[3], od[1], od[2], od[3], wd[0], wd[1], sh, sw, pt, pl,
         (od[2] - 1) * sw + wd[1], (wd[1] * xd[3] + 31) / 32, 1};
  if (wd[2] != g.c || wd[3] != g.k || od[0] != g.n || g.k % 16 != 0 || sh < 1 || sw < 1 ||
      pt < 0 || pl < 0 || g.ho < 1 || g.wo < 1 ||
      static_cast<int64_t>(scale.element_count()) != g.k ||
      static_cast<int64_t>(shift.element_count()) != g.k)
    return ffi::Error::InvalidArgument(
        "zoo AMX convolution: shapes do not fit (the kernel's input channels, K a multiple "
        "of 16, K scales and shifts, positive strides, non-negative top and left padding)");
  // a band's scratch rows within about 256 KB (L2), at least one output row
  const int64_t row_bytes = g.wp * g.c * 2 * g.sh;
  g.band = std::max<int64_t>(
      1, std::min<int64_t>(g.ho, (256 << 10) / std::max<int64_t>(1, row_bytes)));
  const int64_t bands = (g.ho + g.band - 1) / g.band;
  const auto* xs = reinterpret_cast<const uint16_t*>(x.untyped_data());
  const auto* ws = reinterpret_cast<const uint16_t*>(wt.untyped_data());
  auto* out = reinterpret_cast<uint16_t*>(y->untyped_data());
  Lines packed(g.r * g.q * g.k * 32);
  if (!packed.data)
    return ffi::Error::Internal("zoo AMX convolution: no memory for the packed weights");
  zoo_native::parallel_parts(pool, g.r * g.q,
                             [&](int64_t rq) { pack_weights(g, ws, rq, packed.data); });
  const int64_t total = g.n * bands;
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(kParts, total));
  const Epilogue e{scale.typed_data(), shift.typed_data(), relu};
  std::atomic<bool> short_of_memory{false};
  zoo_native::parallel_parts(pool, parts, [&](int64_t p) {
    configure();
    for (int64_t i = p * total / parts; i < (p + 1) * total / parts; ++i) {
      const int64_t n = i / bands, h0 = (i % bands) * g.band;
      if (!band(g, xs, packed.data, n, h0, std::min(g.ho, h0 + g.band), e, out))
        short_of_memory = true;
    }
    _tile_release();
  });
  if (short_of_memory)
    return ffi::Error::Internal("zoo AMX convolution: no memory for a band's input rows");
  return ffi::Error::Success();
#else
  return ffi::Error::Internal("zoo AMX convolution: this library was built for a CPU without "
                              "AMX (amx_tile, amx_bf16, avx512_bf16)");
#endif
}

}  // namespace

// 1 where the library has the AMX kernel and the OS gives this process the tile state.
extern "C" int ZooAmxReady() {
#if ZOO_AMX
  return tiles_permitted() ? 1 : 0;
#else
  return 0;
#endif
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(ZooAmxConvForward, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::AnyBuffer>()
                                  .ZOO_CONV_ATTRS
                                  .Attr<bool>("relu"));

// Max pooling, float32, NHWC, and its gradient:
//
//   ZooMaxPool(x) -> y         the maximum of each window (a NaN in it: NaN, as XLA's max);
//                              positions in the padding are never read (-inf)
//   ZooMaxPoolGrad(x, y, g) -> dx
//
// The forward reads each window channels 16 at a time, output rows split among threads.
// Each output's gradient goes to the first input of its window (in row-major window order)
// equal to the output, as XLA's select-and-scatter does; windows overlap, so one image's
// windows are taken in order by one thread (images are the parts), the same bits on every
// run. Positions in the padding are never chosen. Reads each window once, channels 16 at a
// time, and writes dx once: no padded copy of x and no per-offset planes.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>

#include "xla/ffi/api/ffi.h"
#include "common.h"

namespace ffi = xla::ffi;

namespace {

using namespace zoo_native;

struct Pool {
  int64_t h, w, c, ho, wo, kh, kw, sh, sw, pt, pl;
};

// one output position's channels [c0, c0 + 16) (or the scalar tail when lanes < 16)
inline void route(const Pool& p, const float* x, const float* y, const float* g, float* dx,
                  int64_t oh, int64_t ow, int64_t c0, int lanes) {
  const int64_t out = (oh * p.wo + ow) * p.c + c0;
  const int64_t h0 = oh * p.sh - p.pt, w0 = ow * p.sw - p.pl;
  if (lanes == 16) {
    const v16 yv = load16(y + out), gv = load16(g + out), zero = {};
    m16 taken = {};
    for (int64_t i = 0; i < p.kh; ++i) {
      const int64_t r = h0 + i;
      if (r < 0 || r >= p.h) continue;
      for (int64_t j = 0; j < p.kw; ++j) {
        const int64_t q = w0 + j;
        if (q < 0 || q >= p.w) continue;
        const int64_t at = (r * p.w + q) * p.c + c0;
        const m16 hit = (load16(x + at) == yv) & ~taken;
        taken |= hit;
        store16(dx + at, load16(dx + at) + (hit ? gv : zero));
      }
    }
    return;
  }
  for (int l = 0; l < lanes; ++l) {
    bool done = false;
    for (int64_t i = 0; i < p.kh && !done; ++i) {
      const int64_t r = h0 + i;
      if (r < 0 || r >= p.h) continue;
      for (int64_t j = 0; j < p.kw && !done; ++j) {
        const int64_t q = w0 + j;
        if (q < 0 || q >= p.w) continue;
        const int64_t at = (r * p.w + q) * p.c + c0 + l;
        if (x[at] == y[out + l]) {
          dx[at] += g[out + l];
          done = true;
        }
      }
    }
  }
}

// output row oh of one image
void pool_row(const Pool& p, const float* x, float* y, int64_t oh) {
  const float inf = std::numeric_limits<float>::infinity();
  const int64_t h0 = oh * p.sh - p.pt;
  const int64_t r0 = std::max<int64_t>(0, h0), r1 = std::min(p.h, h0 + p.kh);
  for (int64_t ow = 0; ow < p.wo; ++ow) {
    const int64_t w0 = ow * p.sw - p.pl;
    const int64_t q0 = std::max<int64_t>(0, w0), q1 = std::min(p.w, w0 + p.kw);
    float* out = y + (oh * p.wo + ow) * p.c;
    int64_t c0 = 0;
    for (; c0 + 16 <= p.c; c0 += 16) {
      v16 m = -inf - v16{};
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t q = q0; q < q1; ++q) {
          const v16 v = load16(x + (r * p.w + q) * p.c + c0);
          m = (v > m) | (v != v) ? v : m;
        }
      store16(out + c0, m);
    }
    for (; c0 < p.c; ++c0) {
      float m = -inf;
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t q = q0; q < q1; ++q) {
          const float v = x[(r * p.w + q) * p.c + c0];
          m = (v > m || v != v) ? v : m;
        }
      out[c0] = m;
    }
  }
}

ffi::Error MaxPool(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> y,
                   int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t pt, int64_t pl) {
  const auto xd = x.dimensions(), yd = y->dimensions();
  if (xd.size() != 4 || yd.size() != 4 || yd[0] != xd[0] || yd[3] != xd[3] || kh < 1 ||
      kw < 1 || sh < 1 || sw < 1 || pt < 0 || pl < 0)
    return ffi::Error::InvalidArgument("zoo max pool: shapes do not fit");
  const Pool p{xd[1], xd[2], xd[3], yd[1], yd[2], kh, kw, sh, sw, pt, pl};
  const int64_t total = xd[0] * p.ho, parts = std::max<int64_t>(1, std::min<int64_t>(64, total));
  const float* xs = x.typed_data();
  float* out = y->typed_data();
  zoo_native::parallel_parts(pool, parts, [&](int64_t part) {
    for (int64_t row = part * total / parts; row < (part + 1) * total / parts; ++row) {
      const int64_t image = row / p.ho;
      pool_row(p, xs + image * p.h * p.w * p.c, out + image * p.ho * p.wo * p.c, row % p.ho);
    }
  });
  return ffi::Error::Success();
}

ffi::Error MaxPoolGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> y,
                       ffi::Buffer<ffi::F32> g, ffi::ResultBuffer<ffi::F32> dx, int64_t kh,
                       int64_t kw, int64_t sh, int64_t sw, int64_t pt, int64_t pl) {
  const auto xd = x.dimensions(), yd = y.dimensions();
  if (xd.size() != 4 || yd.size() != 4 || g.dimensions().size() != 4 || yd[0] != xd[0] ||
      yd[3] != xd[3] || kh < 1 || kw < 1 || sh < 1 || sw < 1)
    return ffi::Error::InvalidArgument("zoo max-pool gradient: shapes do not fit");
  const Pool p{xd[1], xd[2], xd[3], yd[1], yd[2], kh, kw, sh, sw, pt, pl};
  const int64_t n = xd[0], in_size = p.h * p.w * p.c, out_size = p.ho * p.wo * p.c;
  const float* xs = x.typed_data();
  const float* ys = y.typed_data();
  const float* gs = g.typed_data();
  float* out = dx->typed_data();
  zoo_native::parallel_parts(pool, n, [&](int64_t image) {
    float* d = out + image * in_size;
    std::fill(d, d + in_size, 0.0f);
    const float* xi = xs + image * in_size;
    const float* yi = ys + image * out_size;
    const float* gi = gs + image * out_size;
    for (int64_t oh = 0; oh < p.ho; ++oh)
      for (int64_t ow = 0; ow < p.wo; ++ow)
        for (int64_t c0 = 0; c0 < p.c; c0 += 16)
          route(p, xi, yi, gi, d, oh, ow, c0, static_cast<int>(std::min<int64_t>(16, p.c - c0)));
  });
  return ffi::Error::Success();
}

}  // namespace

// a pool's window, strides and top/left padding
#define ZOO_POOL_ATTRS                                                            \
  Attr<int64_t>("kh").Attr<int64_t>("kw").Attr<int64_t>("sh").Attr<int64_t>("sw") \
      .Attr<int64_t>("pt")                                                        \
      .Attr<int64_t>("pl")

XLA_FFI_DEFINE_HANDLER_SYMBOL(ZooMaxPool, MaxPool,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .ZOO_POOL_ATTRS);

XLA_FFI_DEFINE_HANDLER_SYMBOL(ZooMaxPoolGrad, MaxPoolGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .ZOO_POOL_ATTRS);

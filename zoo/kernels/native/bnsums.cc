// The sums over N*H*W that BatchNorm's training step needs, float32 (M rows, C channels):
//
//   ZooBatchStats(x)           -> mean[c], var[c]          (biased variance)
//   ZooGradSums(g, x, mean)    -> sum g[c], sum g * (x - mean)[c]
//
// XLA:CPU's column reductions run at a few GB/s, and its products with a ones vector need
// every operand (x - mean)^2, g * xhat written out first; these read each input once (the
// statistics read a part twice while it is in cache: mean first, then the squares about it,
// as stable as the two-pass formula). The rows split into parts fixed by the shapes alone,
// merged in order in double precision: the same bits on every run and thread count.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "xla/ffi/api/ffi.h"
#include "common.h"

namespace ffi = xla::ffi;

namespace {

using namespace zoo_native;

constexpr int64_t kParts = 16;     // parts of the rows, at most
constexpr int64_t kMinRows = 256;  // rows per part, at least
constexpr int64_t kBlock = 64;     // rows summed in float before they are added in double

int64_t parts_for(int64_t rows) {
  return std::max<int64_t>(1, std::min<int64_t>(kParts, rows / kMinRows));
}

// out[c] (double) += sum over rows [r0, r1) of f(row pointer)[c], blocked in float
template <typename F>
void column_sums(int64_t r0, int64_t r1, int64_t c, double* out, F f) {
  std::vector<float> acc(c);
  for (int64_t b = r0; b < r1; b += kBlock) {
    std::fill(acc.begin(), acc.end(), 0.0f);
    const int64_t e = std::min(r1, b + kBlock);
    for (int64_t r = b; r < e; ++r) f(r, acc.data());
    for (int64_t j = 0; j < c; ++j) out[j] += acc[j];
  }
}

ffi::Error BatchStats(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                      ffi::ResultBuffer<ffi::F32> mean, ffi::ResultBuffer<ffi::F32> var) {
  const auto d = x.dimensions();
  if (d.size() != 2) return ffi::Error::InvalidArgument("zoo batch statistics: x must be (M, C)");
  const int64_t m = d[0], c = d[1];
  const float* xs = x.typed_data();
  const int64_t parts = parts_for(m);
  // per part: its row count, mean and sum of squared deviations about its own mean
  std::vector<double> pm(parts * c), pq(parts * c);
  parallel_parts(pool, parts, [&](int64_t p) {
    const int64_t r0 = p * m / parts, r1 = (p + 1) * m / parts, n = r1 - r0;
    double* mu = pm.data() + p * c;
    double* q = pq.data() + p * c;
    column_sums(r0, r1, c, mu, [&](int64_t r, float* acc) {
      const float* row = xs + r * c;
      for (int64_t j = 0; j < c; ++j) acc[j] += row[j];
    });
    std::vector<float> centre(c);
    for (int64_t j = 0; j < c; ++j) centre[j] = static_cast<float>(mu[j] /= n);
    column_sums(r0, r1, c, q, [&](int64_t r, float* acc) {
      const float* row = xs + r * c;
      for (int64_t j = 0; j < c; ++j) {
        const float v = row[j] - centre[j];
        acc[j] += v * v;
      }
    });
    // the float centre, not the double mean, was subtracted: correct the squares' sum
    for (int64_t j = 0; j < c; ++j) {
      const double off = mu[j] - centre[j];
      q[j] -= n * off * off;
    }
  });
  // Chan et al.'s merge of the parts, in order
  float* mo = mean->typed_data();
  float* vo = var->typed_data();
  for (int64_t j = 0; j < c; ++j) {
    double n = 0, mu = 0, q = 0;
    for (int64_t p = 0; p < parts; ++p) {
      const double np = double((p + 1) * m / parts - p * m / parts);
      const double delta = pm[p * c + j] - mu;
      const double total = n + np;
      mu += delta * np / total;
      q += pq[p * c + j] + delta * delta * n * np / total;
      n = total;
    }
    mo[j] = static_cast<float>(mu);
    vo[j] = static_cast<float>(q / m);
  }
  return ffi::Error::Success();
}

ffi::Error GradSums(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32> x,
                    ffi::Buffer<ffi::F32> mean, ffi::ResultBuffer<ffi::F32> sum_g,
                    ffi::ResultBuffer<ffi::F32> sum_gx) {
  const auto d = x.dimensions();
  if (d.size() != 2 || g.dimensions().size() != 2 || g.dimensions()[0] != d[0] ||
      g.dimensions()[1] != d[1] || mean.dimensions().size() != 1 || mean.dimensions()[0] != d[1])
    return ffi::Error::InvalidArgument("zoo gradient sums: g and x must be (M, C), mean (C)");
  const int64_t m = d[0], c = d[1];
  const float* gs = g.typed_data();
  const float* xs = x.typed_data();
  const float* mu = mean.typed_data();
  const int64_t parts = parts_for(m);
  std::vector<double> sg(parts * c, 0.0), sx(parts * c, 0.0);
  parallel_parts(pool, parts, [&](int64_t p) {
    const int64_t r0 = p * m / parts, r1 = (p + 1) * m / parts;
    double* og = sg.data() + p * c;
    double* ox = sx.data() + p * c;
    std::vector<float> ag(c), ax(c);
    for (int64_t b = r0; b < r1; b += kBlock) {
      std::fill(ag.begin(), ag.end(), 0.0f);
      std::fill(ax.begin(), ax.end(), 0.0f);
      for (int64_t r = b; r < std::min(r1, b + kBlock); ++r) {
        const float* gr = gs + r * c;
        const float* xr = xs + r * c;
        for (int64_t j = 0; j < c; ++j) {
          ag[j] += gr[j];
          ax[j] += gr[j] * (xr[j] - mu[j]);
        }
      }
      for (int64_t j = 0; j < c; ++j) {
        og[j] += ag[j];
        ox[j] += ax[j];
      }
    }
  });
  float* go = sum_g->typed_data();
  float* xo = sum_gx->typed_data();
  for (int64_t j = 0; j < c; ++j) {
    double a = 0, b = 0;
    for (int64_t p = 0; p < parts; ++p) {
      a += sg[p * c + j];
      b += sx[p * c + j];
    }
    go[j] = static_cast<float>(a);
    xo[j] = static_cast<float>(b);
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(ZooBatchStats, BatchStats,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(ZooGradSums, GradSums,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

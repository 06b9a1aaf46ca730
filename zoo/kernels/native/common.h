// What the kernels share: 16-float vectors, the convolutions' geometry and FFI binding, and
// work split into parts run on XLA's thread pool and the calling thread.
#ifndef ZOO_KERNELS_NATIVE_COMMON_H_
#define ZOO_KERNELS_NATIVE_COMMON_H_

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>

#include "xla/ffi/api/ffi.h"

namespace zoo_native {

// 16 floats: one AVX-512 register, two AVX ones; the compiler picks from -march.
typedef float v16 __attribute__((vector_size(64)));
typedef int32_t m16 __attribute__((vector_size(64)));

inline v16 load16(const float* p) { v16 v; std::memcpy(&v, p, sizeof v); return v; }
inline void store16(float* p, v16 v) { std::memcpy(p, &v, sizeof v); }
// x in every lane: one broadcast load. (Adding x to a zero vector is not the same value for
// x = -0, so the compiler must keep that add and a register shuffle in the inner loop.)
inline v16 splat16(float x) { return v16{x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}; }

// A convolution over its padded input (never built): the shapes and stride.
struct Geometry {
  int64_t n, wp, c;       // images, the padded input's width, channels
  int64_t ho, wo, k;      // output (or output gradient)
  int64_t r, s;           // kernel
  int64_t sh, sw;         // stride
};

// f(std::integral_constant<int, v>{}) for v in [1, N] (below 1: 1): a tile's extent, known
// at run time, as the compile-time constant its register tile is built for.
template <int N, typename F>
void as_constant(int v, F&& f) {
  if constexpr (N == 1) {
    f(std::integral_constant<int, 1>{});
  } else if (v >= N) {
    f(std::integral_constant<int, N>{});
  } else {
    as_constant<N - 1>(v, f);
  }
}

// Where the windows lie in x: x's rows and columns, the padding on its top and left.
struct Input {
  int64_t h, w, pt, pl;
};

// g, the geometry of the padded input the windows read (never built), and in from x's
// dims, the kernel's (R, S, C, K) and the output's (N, Ho, Wo, K); or an error naming
// `what`: 4-D operands, whole vectors of output channels, strides >= 1, top and left
// padding >= 0.
template <typename Dims>
xla::ffi::Error read_geometry(const char* what, Dims xd, Dims kd, Dims od, int64_t sh,
                              int64_t sw, int64_t pt, int64_t pl, Geometry& g, Input& in) {
  if (xd.size() != 4 || kd.size() != 4 || od.size() != 4)
    return xla::ffi::Error::InvalidArgument(std::string(what) + ": operands must be 4-D");
  in = Input{xd[1], xd[2], pt, pl};
  g = Geometry{xd[0], (od[2] - 1) * sw + kd[1], xd[3], od[1], od[2], od[3], kd[0], kd[1],
               sh, sw};
  if (g.k % 16 != 0 || kd[2] != g.c || kd[3] != g.k || od[0] != g.n || sh < 1 || sw < 1 ||
      pt < 0 || pl < 0)
    return xla::ffi::Error::InvalidArgument(
        std::string(what) + ": shapes do not fit (K a multiple of 16, stride >= 1, top and "
        "left padding >= 0)");
  return xla::ffi::Error::Success();
}

// Runs body(part) for every part in [0, parts), each once, on the pool's threads and the
// calling thread (which takes every part itself when the pool is busy), and returns when all
// have run. What each part computes is fixed by the caller, never by which thread runs it.
// The shared state is held by every scheduled task: a task that starts after the call
// returned finds it closed and touches nothing else.
template <typename F>
void parallel_parts(xla::ffi::ThreadPool& pool, int64_t parts, F body) {
  struct Work {
    std::atomic<int64_t> next{0};
    int slots = 0, done = 0;
    bool closed = false;
    std::mutex mu;
    std::condition_variable cv;
  };
  auto work = std::make_shared<Work>();
  const int workers =
      static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(pool.num_threads() + 1, parts)));
  auto fn = std::make_shared<F>(body);
  auto run = [work, fn, parts, workers]() {
    {
      std::lock_guard<std::mutex> lock(work->mu);
      if (work->closed || work->slots >= workers) return;
      work->slots++;
    }
    for (;;) {
      const int64_t p = work->next.fetch_add(1);
      if (p >= parts) break;
      (*fn)(p);
    }
    std::lock_guard<std::mutex> lock(work->mu);
    work->done++;
    work->cv.notify_all();
  };
  for (int i = 1; i < workers; ++i) pool.Schedule([run]() { run(); });
  run();
  std::unique_lock<std::mutex> lock(work->mu);
  work->cv.wait(lock, [&] { return work->done == work->slots; });
  work->closed = true;
}

}  // namespace zoo_native

// a convolution handler's stride and top/left padding (see read_geometry)
#define ZOO_CONV_ATTRS \
  Attr<int64_t>("sh").Attr<int64_t>("sw").Attr<int64_t>("pt").Attr<int64_t>("pl")

#endif  // ZOO_KERNELS_NATIVE_COMMON_H_

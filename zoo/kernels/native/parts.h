// Work split into parts, run on XLA's thread pool and the calling thread.
#ifndef ZOO_KERNELS_NATIVE_PARTS_H_
#define ZOO_KERNELS_NATIVE_PARTS_H_

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace zoo_native {

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

#endif  // ZOO_KERNELS_NATIVE_PARTS_H_

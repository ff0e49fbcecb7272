// The thread pool, after the measured prototype (shared/prototypes/cpu-q4-matvec):
// the caller (MLX's CPU stream thread) is worker 0 and never waits for a worker
// that has not started: chunks are claimed by compare-and-swap on one packed
// (generation, next chunk, total) word, and the caller waits only for chunks
// that were claimed.  Workers spin a little after each job (decoding issues
// many small products back to back), then sleep on a condition variable
// (std::atomic::wait showed 8 ms wake-ups with GCC 12's libstdc++).
#include "pool.h"

#include <immintrin.h>
#include <sched.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>

namespace mlxl {
namespace {

int read_int(const std::string& path) {
  std::ifstream f(path);
  int v = -1;
  if (f) f >> v;
  return v;
}

// Physical cores among the CPUs this process may use (SMT siblings count once).
int physical_cores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) != 0) {
    unsigned n = std::thread::hardware_concurrency();
    return n ? (int)n : 1;
  }
  std::set<std::pair<int, int>> cores;
  int cpus = 0;
  for (int c = 0; c < CPU_SETSIZE; ++c) {
    if (!CPU_ISSET(c, &set)) continue;
    ++cpus;
    std::string base = "/sys/devices/system/cpu/cpu" + std::to_string(c) + "/topology/";
    int core = read_int(base + "core_id"), pkg = read_int(base + "physical_package_id");
    cores.insert(core < 0 ? std::make_pair(-1, c) : std::make_pair(pkg, core));
  }
  int n = cores.empty() ? cpus : (int)cores.size();
  return n < 1 ? 1 : n;
}

class Pool {
 public:
  static Pool& get() {
    static Pool* p = new Pool();  // leaked on purpose: no join at exit
    return *p;
  }
  int size() const { return n_; }
  int active() const { return active_.load(std::memory_order_relaxed); }
  void set_active(int n) { active_.store(n < 1 ? 1 : (n > n_ ? n_ : n)); }

  void run(void (*body)(const void*, int, int), const void* ctx, int N, int chunk) {
    int total = (N + chunk - 1) / chunk;
    if (active() == 1 || total <= 1 || total >= (1 << 20)) {
      body(ctx, 0, N);
      return;
    }
    std::lock_guard<std::mutex> lk(mu_);
    body_ = body;
    ctx_ = ctx;
    N_ = N;
    chunk_ = chunk;
    done_.store(0, std::memory_order_relaxed);
    uint64_t g = (gen_ + 1) & 0xFFFFFF;
    gen_ = g;
    {
      std::lock_guard<std::mutex> l2(cv_mu_);
      state_.store(pack(g, 0, total), std::memory_order_release);
    }
    if (sleepers_.load(std::memory_order_acquire) > 0) cv_.notify_all();
    work(g);
    // wait only for chunks already claimed; yield so that a preempted worker
    // (a shared machine) can finish on this core
    for (int it = 0; done_.load(std::memory_order_acquire) != total; ++it) {
      if (it < 256) _mm_pause();
      else std::this_thread::yield();
    }
  }

 private:
  static uint64_t pack(uint64_t g, uint64_t idx, uint64_t tot) { return (g << 40) | (idx << 20) | tot; }

  // claim and run chunks of job generation g until none are left
  void work(uint64_t g) {
    uint64_t s = state_.load(std::memory_order_acquire);
    for (;;) {
      if ((s >> 40) != g) return;
      uint64_t idx = (s >> 20) & 0xFFFFF, tot = s & 0xFFFFF;
      if (idx >= tot) return;
      if (!state_.compare_exchange_weak(s, s + (1ull << 20), std::memory_order_acq_rel, std::memory_order_acquire))
        continue;
      // claimed: the job cannot finish (nor its fields change) before done_ moves
      int lo = (int)idx * chunk_;
      int hi = lo + chunk_ < N_ ? lo + chunk_ : N_;
      body_(ctx_, lo, hi);
      done_.fetch_add(1, std::memory_order_acq_rel);
      s = state_.load(std::memory_order_acquire);
    }
  }

  Pool() {
    int n = physical_cores();
    if (const char* e = std::getenv("MLX_LOCAL_NATIVE_THREADS")) {
      int v = std::atoi(e);
      if (v > 0) n = v;
    }
    if (n > 64) n = 64;
    n_ = n;
    active_.store(n);
    if (const char* e = std::getenv("MLX_LOCAL_NATIVE_SPIN_US")) spin_us_ = std::atoi(e);
    for (int i = 1; i < n_; ++i) std::thread([this] { worker(); }).detach();
  }

  void worker() {
    uint64_t seen = 0;
    for (;;) {
      uint64_t g = state_.load(std::memory_order_acquire) >> 40;
      if (g == seen) {
        auto t0 = std::chrono::steady_clock::now();
        int it = 0;
        while ((g = state_.load(std::memory_order_acquire) >> 40) == seen) {
          _mm_pause();
          if ((++it & 63) == 0) {
            if (std::chrono::steady_clock::now() - t0 > std::chrono::microseconds(spin_us_)) break;
            std::this_thread::yield();
          }
        }
        if (g == seen) {
          std::unique_lock<std::mutex> lk(cv_mu_);
          sleepers_.fetch_add(1, std::memory_order_acq_rel);
          cv_.wait(lk, [&] { return (state_.load(std::memory_order_acquire) >> 40) != seen; });
          sleepers_.fetch_sub(1, std::memory_order_acq_rel);
          continue;
        }
      }
      seen = g;
      work(g);
    }
  }

  int n_ = 1;
  std::atomic<int> active_{1};
  int spin_us_ = 2000;
  std::mutex mu_;  // serializes run()
  std::mutex cv_mu_;
  std::condition_variable cv_;
  std::atomic<int> sleepers_{0};
  std::atomic<uint64_t> state_{0};
  std::atomic<int> done_{0};
  uint64_t gen_ = 0;  // only touched under mu_
  void (*body_)(const void*, int, int) = nullptr;
  const void* ctx_ = nullptr;
  int N_ = 0, chunk_ = 1;
};

}  // namespace

int pool_size() { return Pool::get().size(); }
int num_threads() { return Pool::get().active(); }
void set_num_threads(int n) { Pool::get().set_active(n); }
void parallel_for(void (*body)(const void*, int, int), const void* ctx, int n, int chunk) {
  Pool::get().run(body, ctx, n, chunk);
}

}  // namespace mlxl

// A persistent thread pool for the kernels (see pool.cpp).
#pragma once

namespace mlxl {

// Threads the kernels use: MLX_LOCAL_NATIVE_THREADS, else the physical cores
// this process may run on.
int pool_size();
int num_threads();
void set_num_threads(int n);  // 1 .. pool_size()

// Run body(ctx, lo, hi) over [0, n) in chunks of `chunk` on the pool; the
// calling thread works too and returns when every chunk is done.
void parallel_for(void (*body)(const void*, int, int), const void* ctx, int n, int chunk);

}  // namespace mlxl

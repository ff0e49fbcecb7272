// The quantized matmul's shared steps (defined in qmatmul.cpp), for the ops
// that run its row kernels on several weights at once (qmulti.cpp) and the
// fused ops (fused.cpp, in_order).
#pragma once
#include <stdint.h>

#include <string>
#include <vector>

#include "kernels.h"
#include "mlx/array.h"

namespace mlxl {
namespace mx = mlx::core;

// "auto", "avx2", ... -> Isa (throws std::invalid_argument otherwise)
int parse_isa(const std::string& s);
// The row kernel of a mode (MODE_F32 / MODE_INT8) and isa on this CPU, or nullptr.
RowsFn pick_fn(int mode, int isa);
// The ScaleType of a scales / biases dtype.
int scale_type(mx::Dtype t);
// Prepare M rows of x (float32, strides sm / sk) for the kernels (the buffers of Args).
void prep_x(const float* x, int64_t sm, int64_t sk, int M, int K, int G, int bits, bool int8, int8_t* xq, float* dvec,
            float* xf, float* xsum);
// The kernels' software prefetch distance (MLX_LOCAL_NATIVE_PREFETCH).
int prefetch_bytes();

// The prepared activations of M rows of x: buffers kept (thread-local) from call to call.
struct Activations {
  std::vector<int8_t> xq;
  std::vector<float> dvec, xf, xsum;
  // prep_x into the buffers, and point a's xq / dvec / xf / xsum at them
  void prepare(const float* x, int64_t sm, int64_t sk, int M, int K, int G, int bits, bool int8, Args& a);
  // a long prompt's prepared activations (as large as x) are not kept for the next call
  bool release_if_long(int M, int K);
};

// The elements of an array (shape, strides in elements) in row-major order: p itself if
// contiguous, else copied into buf.
const float* in_order(const float* p, bool contiguous, const std::vector<int>& shape, const std::vector<int64_t>& strides,
                      std::vector<float>& buf);

}  // namespace mlxl

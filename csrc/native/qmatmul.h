// Affine quantized matmul for MLX's CPU stream: y = x @ dequantize(w).T
#pragma once
#include <string>

#include "mlx/ops.h"
#include "mlx/primitives.h"

namespace mlxl {
namespace mx = mlx::core;

enum Mode : int { MODE_INT8 = 0, MODE_F32 = 1 };
enum Isa : int { ISA_AUTO = 0, ISA_AVX2 = 1, ISA_AVX512VNNI = 2, ISA_AVXVNNI = 3 };

// x: [..., K] float32 / bfloat16 / float16 (any strides); w: uint32 [N, K*bits/32];
// scales, biases: [N, K/group_size] float32 / bfloat16 / float16.
// bits 4, 5 or 8, group_size 32, 64 or 128, K a multiple of 64.
// mode: "int8" (int8 activations per 32 elements) or "f32" (exact float32).
// isa: "auto", "avx2", "avx512vnni" or "avxvnni" (int8 mode).
// Throws std::invalid_argument naming the culprit for anything else.
mx::array quantized_matmul(const mx::array& x, const mx::array& w, const mx::array& scales, const mx::array& biases,
                           int group_size, int bits, const std::string& mode, const std::string& isa);

// True if this CPU can run the kernels (AVX2 + FMA + F16C).
bool cpu_supported();
// The instruction set the int8 kernels use with isa="auto": "avx512vnni", "avxvnni", "avx2" or "none".
std::string best_isa();
// Which kernels this CPU can run, e.g. "avx2 avx512vnni".
std::string available_isas();

class QuantizedMatmul : public mx::UnaryPrimitive {
 public:
  QuantizedMatmul(mx::Stream s, int group, int bits, int mode, int isa)
      : mx::UnaryPrimitive(s), group_(group), bits_(bits), mode_(mode), isa_(isa) {}
  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override;
  void eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) override;
  const char* name() const override { return "MLXLocalQuantizedMatmul"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    auto& o = static_cast<const QuantizedMatmul&>(other);
    return group_ == o.group_ && bits_ == o.bits_ && mode_ == o.mode_ && isa_ == o.isa_;
  }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& in) override {
    auto shape = in[0].shape();  // x [..., K] -> [..., N]
    shape.back() = in[1].shape(0);
    return {shape};
  }

 private:
  int group_, bits_, mode_, isa_;
};

}  // namespace mlxl

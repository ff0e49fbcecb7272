// Several quantized projections of one input as one MLX op (issue 14's node
// count): attention's q / k / v, the MLP's gate and up with SiLU(gate) * up
// in the epilogue.  The row kernels and the activation preparation are the
// quantized matmul's (qmatmul.cpp): x is prepared once, every projection's
// columns are shared out over the pool in one pass, and each output is
// computed exactly as quantized_matmul computes it alone.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "mlx/ops.h"
#include "mlx/primitives.h"

namespace mlxl {
namespace mx = mlx::core;

// y_i = x @ dequantize(w_i).T (+ bias_i) for the projections of one x, all of
// one bits / group_size (checks as quantized_matmul's).  heads[i] == 0: y_i is
// [..., N_i]; heads[i] > 0 (x [B, L, K]): y_i is [B, heads, L, N_i / heads],
// laid out as [B, L, heads, N_i / heads] (mlx-lm's reshape + transpose, no copy).
// rope_dims > 0: the first two outputs (q and k, heads > 0) are then rotated as rope() does
// (base, or freqs; positions (offset + l) * scale) into contiguous [B, heads, L, D], after
// qk_norms (two float weights [D]: qwen3's RMSNorm of each query and key head, eps each).
std::vector<mx::array> quantized_matmul_multi(const mx::array& x, const std::vector<mx::array>& w,
                                              const std::vector<mx::array>& scales,
                                              const std::vector<mx::array>& biases,
                                              const std::vector<std::optional<mx::array>>& bias,
                                              const std::vector<int>& heads, int group_size, int bits,
                                              const std::string& mode, const std::string& isa, int rope_dims = 0,
                                              bool rope_traditional = false, std::optional<float> rope_base = {},
                                              float rope_scale = 1.f, int rope_offset = 0,
                                              const std::optional<mx::array>& rope_freqs = {},
                                              const std::vector<mx::array>& qk_norms = {},
                                              const std::vector<float>& norm_eps = {});

// The RoPE (and head norms) epilogue of quantized_matmul_multi.
struct RopeCfg {
  int dims = 0;  // 0: none
  bool traditional = false;
  float base = 0.f;  // <= 0: a freqs input
  float scale = 1.f;
  int offset = 0;
  bool norms = false;
  float eps[2] = {0.f, 0.f};
  bool operator==(const RopeCfg& o) const {
    return dims == o.dims && traditional == o.traditional && base == o.base && scale == o.scale &&
           offset == o.offset && norms == o.norms && eps[0] == o.eps[0] && eps[1] == o.eps[1];
  }
};

// silu(x @ dequantize(wg).T) * (x @ dequantize(wu).T), as mlx-lm's swiglu of
// the two projections (the same float32 operations in the same order).
mx::array quantized_swiglu(const mx::array& x, const mx::array& wg, const mx::array& sg, const mx::array& bg,
                           const mx::array& wu, const mx::array& su, const mx::array& bu, int group_size, int bits,
                           const std::string& mode, const std::string& isa);

// residual + x @ dequantize(w).T (the block's `h = x + o_proj(...)`, residual [..., N]); with
// norm_weight also rms_norm(h, norm_weight, eps) (the next norm): outputs [h] or [h, norm(h)].
std::vector<mx::array> quantized_matmul_residual(const mx::array& x, const mx::array& w, const mx::array& scales,
                                                 const mx::array& biases, const mx::array& residual,
                                                 const std::optional<mx::array>& norm_weight, float eps,
                                                 int group_size, int bits, const std::string& mode,
                                                 const std::string& isa);

enum MultiKind : int { KIND_MULTI = 0, KIND_SWIGLU = 1, KIND_RESIDUAL = 2 };

class QuantizedMulti : public mx::Primitive {
 public:
  QuantizedMulti(mx::Stream s, int group, int bits, int mode, int isa, std::vector<int> heads,
                 std::vector<bool> has_bias, int kind, bool norm = false, float eps = 0.f, RopeCfg rope = {})
      : mx::Primitive(s),
        group_(group),
        bits_(bits),
        mode_(mode),
        isa_(isa),
        heads_(std::move(heads)),
        has_bias_(std::move(has_bias)),
        kind_(kind),
        norm_(norm),
        eps_(eps),
        rope_(rope) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  const char* name() const override {
    return kind_ == KIND_SWIGLU ? "MLXLocalQuantizedSwiGLU"
           : kind_ == KIND_RESIDUAL ? "MLXLocalQuantizedResidual"
                                    : "MLXLocalQuantizedMulti";
  }
  bool is_equivalent(const mx::Primitive& other) const override {
    auto& o = static_cast<const QuantizedMulti&>(other);
    return group_ == o.group_ && bits_ == o.bits_ && mode_ == o.mode_ && isa_ == o.isa_ && heads_ == o.heads_ &&
           has_bias_ == o.has_bias_ && kind_ == o.kind_ && norm_ == o.norm_ && eps_ == o.eps_ &&
           rope_ == o.rope_;
  }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& in) override;

 private:
  int group_, bits_, mode_, isa_;
  std::vector<int> heads_;      // per projection (KIND_MULTI)
  std::vector<bool> has_bias_;  // per projection: a linear bias input follows the weights (KIND_MULTI)
  int kind_;
  bool norm_;  // KIND_RESIDUAL: a second output, rms_norm of the first
  float eps_;
  RopeCfg rope_;  // KIND_MULTI
};

}  // namespace mlxl

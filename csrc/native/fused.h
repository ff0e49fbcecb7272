// Fused CPU ops for the decode "floor" and long prompts (issue 14): RMSNorm,
// RoPE and scaled dot-product attention, each one MLX primitive instead of
// the handful of ops of MLX's composed CPU fallbacks.  Computed in float32
// (other dtypes are converted on the way in and out), threaded on the pool.
#pragma once
#include <optional>
#include <string>

#include "mlx/ops.h"
#include "mlx/primitives.h"

namespace mlxl {
namespace mx = mlx::core;

// x * rsqrt(mean(x^2, -1) + eps) * w, as mx.fast.rms_norm; x [..., D], w [D].
mx::array rms_norm(const mx::array& x, const mx::array& w, float eps);

// As mx.fast.rope on x [B, H, L, D] with an integer offset: `base` or
// `freqs` ([dims/2], the inverse of the frequencies MLX uses) gives the angles.
mx::array rope(const mx::array& x, int dims, bool traditional, std::optional<float> base, float scale, int offset,
               const std::optional<mx::array>& freqs);

// As mx.fast.scaled_dot_product_attention for q [B, Hq, Lq, D], k, v
// [B, Hkv, Lk, D] (Hq a multiple of Hkv, D a multiple of 16); `causal` (query
// i sees keys <= Lk - Lq + i) or `mask` (bool, or additive, broadcastable to
// [B, Hq, Lq, Lk]) or neither.
// flat: the output as [B, Lq, Hq * D] (mlx-lm's transpose + reshape of it, no op of their own).
mx::array sdpa(const mx::array& q, const mx::array& k, const mx::array& v, float scale, bool causal,
               const std::optional<mx::array>& mask, bool flat = false);

// RoPE's inverse frequencies as RoPEOp computes them: from base (> 0), else 1 / freqs[i * fs]; inv[dims / 2].
void rope_inv_freq(int dims, float base, const float* freqs, int64_t fs, float* inv);

class RMSNormOp : public mx::UnaryPrimitive {
 public:
  RMSNormOp(mx::Stream s, float eps) : mx::UnaryPrimitive(s), eps_(eps) {}
  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override;
  void eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) override;
  const char* name() const override { return "MLXLocalRMSNorm"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    return eps_ == static_cast<const RMSNormOp&>(other).eps_;
  }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& in) override { return {in[0].shape()}; }

 private:
  float eps_;
};

class RoPEOp : public mx::UnaryPrimitive {
 public:
  RoPEOp(mx::Stream s, int dims, bool traditional, float base, float scale, int offset)
      : mx::UnaryPrimitive(s), dims_(dims), traditional_(traditional), base_(base), scale_(scale), offset_(offset) {}
  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override;
  void eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) override;
  const char* name() const override { return "MLXLocalRoPE"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    auto& o = static_cast<const RoPEOp&>(other);
    return dims_ == o.dims_ && traditional_ == o.traditional_ && base_ == o.base_ && scale_ == o.scale_ &&
           offset_ == o.offset_;
  }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& in) override { return {in[0].shape()}; }

 private:
  int dims_;
  bool traditional_;
  float base_;  // <= 0: the second input holds the frequencies
  float scale_;
  int offset_;
};

class SdpaOp : public mx::UnaryPrimitive {
 public:
  SdpaOp(mx::Stream s, float scale, int mask, bool flat = false)
      : mx::UnaryPrimitive(s), scale_(scale), mask_(mask), flat_(flat) {}
  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override;
  void eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) override;
  const char* name() const override { return "MLXLocalSDPA"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    auto& o = static_cast<const SdpaOp&>(other);
    return scale_ == o.scale_ && mask_ == o.mask_ && flat_ == o.flat_;
  }
  // [B, Hq, Lq, D], laid out as [B, Lq, Hq, D] (strides set in eval_cpu), so
  // that mlx-lm's transpose back to [B, L, H*D] needs no copy; flat: [B, Lq, Hq * D]
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& in) override {
    auto& q = in[0];
    if (flat_) return {mx::Shape{q.shape(0), q.shape(2), q.shape(1) * q.shape(3)}};
    return {q.shape()};
  }

 private:
  float scale_;
  int mask_;
  bool flat_;
};

}  // namespace mlxl

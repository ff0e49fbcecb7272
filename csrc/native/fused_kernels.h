// The fused kernels of the decode "floor" (issue 14): RMSNorm, RoPE and
// attention, on float32 buffers.  Raw pointers and strides only: this header
// is shared by fused.cpp (the MLX ops, plain flags) and fused_kernels.cpp
// (AVX2 + FMA), so no inline code may live here (see kernels.h on the ODR).
#pragma once
#include <stdint.h>

namespace mlxl {
namespace fk {

// y[r] = x[r] * rsqrt(mean(x[r]^2) + eps) * w, rows of D floats (row stride xs, y contiguous)
void rms_norm(const float* x, int64_t xs, const float* w, float* y, int rows, int D, float eps);

struct RopeArgs {
  const float* x;       // [B, H, L, D] with strides xs (elements)
  int64_t xs[4];
  float* y;             // [B, H, L, D] contiguous
  int B, H, L, D;
  int dims;             // rotated dims (<= D, even); the rest is copied
  bool traditional;     // pairs (2i, 2i+1), else halves (i, i + dims/2)
  float scale;          // positions are (offset + l) * scale
  int offset;
  const float* inv_freq;  // [dims/2]
};
void rope(const RopeArgs& a);

enum MaskKind : int { MASK_NONE = 0, MASK_CAUSAL = 1, MASK_BOOL = 2, MASK_ADD = 3 };

struct SdpaArgs {
  const float* q;  // [B, Hq, Lq, D], strides qs (elements), last stride 1
  const float* k;  // [B, Hkv, Lk, D], strides ks, last stride 1
  const float* v;  // [B, Hkv, Lk, D], strides vs, last stride 1
  int64_t qs[3], ks[3], vs[3];
  float* out;      // [B, Lq, Hq, D] contiguous
  int B, Hq, Hkv, Lq, Lk, D;
  float scale;
  int mask;                 // MaskKind; causal: query i sees keys <= Lk - Lq + i
  const uint8_t* mask_b;    // MASK_BOOL: [B, Hq, Lq, Lk] with strides ms
  const float* mask_f;      // MASK_ADD: [B, Hq, Lq, Lk] with strides ms
  int64_t ms[4];
};
// out = softmax(q k^T * scale + mask) v, per (batch, query head), the query
// heads of a key head in groups (GQA); never the full score matrix.
void sdpa(const SdpaArgs& a);

}  // namespace fk
}  // namespace mlxl

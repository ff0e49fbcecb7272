// The fused ops (see fused.h): argument checks, dtypes, the primitives'
// eval_cpu.  The kernels are in fused_kernels.cpp.
#include "fused.h"

#include <cmath>
#include <sstream>
#include <stdexcept>
#include <vector>

#include "fused_kernels.h"
#include "mlx/allocator.h"
#include "mlx/backend/cpu/encoder.h"
#include "qprep.h"

namespace mlxl {
namespace {

mx::Stream cpu_stream() {
  // the default stream (e.g. mlx-lm's generation stream), unless it is not a CPU stream
  auto st = mx::to_stream(mx::StreamOrDevice{});
  if (st.device.type != mx::Device::cpu) st = mx::to_stream(mx::Device::cpu);
  return st;
}

bool is_float(mx::Dtype t) { return t == mx::float32 || t == mx::bfloat16 || t == mx::float16; }

std::string shape_str(const mx::array& a) {
  std::ostringstream o;
  o << "(";
  for (int i = 0; i < a.ndim(); ++i) o << (i ? ", " : "") << a.shape(i);
  o << (a.ndim() == 1 ? ",)" : ")");
  return o.str();
}

[[noreturn]] void fail(const char* op, const std::string& msg) {
  throw std::invalid_argument(std::string(op) + ": " + msg);
}

mx::array f32(const mx::array& a, mx::Stream st) { return a.dtype() == mx::float32 ? a : mx::astype(a, mx::float32, st); }

// A strided float view of an input (up to 4-D, leading dims padded with size 1).
struct View {
  const float* p;
  int sh[4];
  int64_t st[4];
};

View view(const mx::array& a) {
  View v{a.data<float>(), {1, 1, 1, 1}, {0, 0, 0, 0}};
  const int nd = a.ndim(), pad = 4 - nd;
  for (int i = 0; i < nd; ++i) {
    v.sh[pad + i] = a.shape(i);
    v.st[pad + i] = a.strides()[i];
  }
  return v;
}

// If the last stride is not 1, copy the view into `buf` (packed) and point it there.
void pack_last(View& v, std::vector<float>& buf) {
  if (v.st[3] == 1 || v.sh[3] == 1) {
    v.st[3] = 1;
    return;
  }
  buf.resize((size_t)v.sh[0] * v.sh[1] * v.sh[2] * v.sh[3]);
  size_t i = 0;
  for (int a = 0; a < v.sh[0]; ++a)
    for (int b = 0; b < v.sh[1]; ++b)
      for (int c = 0; c < v.sh[2]; ++c)
        for (int d = 0; d < v.sh[3]; ++d) buf[i++] = v.p[a * v.st[0] + b * v.st[1] + c * v.st[2] + d * v.st[3]];
  v.p = buf.data();
  v.st[3] = 1;
  v.st[2] = v.sh[3];
  v.st[1] = (int64_t)v.sh[3] * v.sh[2];
  v.st[0] = v.st[1] * v.sh[1];
}

void start(mx::array& out, mx::Stream s, const std::vector<mx::array>& inputs) {
  out.set_data(mx::allocator::malloc(out.nbytes()));
  auto& enc = mx::cpu::get_command_encoder(s);
  for (auto& a : inputs) enc.set_input_array(a);
  enc.set_output_array(out);
}

}  // namespace

// ------------------------------------------------------------------ RMSNorm

mx::array rms_norm(const mx::array& x, const mx::array& w, float eps) {
  if (x.ndim() < 1 || !is_float(x.dtype())) fail("rms_norm", "x must be a float array, got shape " + shape_str(x));
  const int D = x.shape(-1);
  if (w.ndim() != 1 || w.shape(0) != D || !is_float(w.dtype()))
    fail("rms_norm", "weight must be a float array of shape (" + std::to_string(D) + ",), got " + shape_str(w));
  auto st = cpu_stream();
  const auto out_dtype = mx::promote_types(x.dtype(), w.dtype());
  // no reshapes around it: each would be one more node for MLX to schedule
  auto y = mx::array(x.shape(), mx::float32, std::make_shared<RMSNormOp>(st, eps), {f32(x, st), f32(w, st)});
  return out_dtype == mx::float32 ? y : mx::astype(y, out_dtype, st);
}

void RMSNormOp::eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) {
  start(out, stream(), inputs);
  const auto& x = inputs[0];
  const int D = x.shape(-1);
  const int rows = D > 0 ? (int)(x.size() / D) : 0;
  // rows of D floats one stride apart (the usual case), else the elements in order
  std::vector<int> shape(x.shape().begin(), x.shape().end());
  std::vector<int64_t> strides(x.strides().begin(), x.strides().end());
  const bool rowwise = x.flags().row_contiguous;
  View w = view(inputs[1]);
  auto& enc = mx::cpu::get_command_encoder(stream());
  enc.dispatch([xp = x.data<float>(), shape, strides, rowwise, rows, D, w, y = out.data<float>(), eps = eps_]() mutable {
    std::vector<float> bx, bw;
    pack_last(w, bw);
    const float* xs = in_order(xp, rowwise, shape, strides, bx);
    fk::rms_norm(xs, D, w.p, y, rows, D, eps);
  });
}

void RMSNormOp::eval_gpu(const std::vector<mx::array>&, mx::array&) {
  throw std::runtime_error("MLXLocalRMSNorm runs on the CPU only");
}

// ------------------------------------------------------------------ RoPE

mx::array rope(const mx::array& x, int dims, bool traditional, std::optional<float> base, float scale, int offset,
               const std::optional<mx::array>& freqs) {
  if (x.ndim() != 4 || !is_float(x.dtype()))
    fail("rope", "x must be a 4-D float array [B, H, L, D], got shape " + shape_str(x));
  if (dims <= 0 || dims % 2 != 0 || dims > x.shape(3))
    fail("rope", "dims must be even and at most " + std::to_string(x.shape(3)) + ", got " + std::to_string(dims));
  if (base.has_value() == freqs.has_value()) fail("rope", "give exactly one of base and freqs");
  if (freqs && (freqs->ndim() != 1 || freqs->shape(0) != dims / 2))
    fail("rope", "freqs must have shape (" + std::to_string(dims / 2) + ",), got " + shape_str(*freqs));
  if (base && !(*base > 0.f)) fail("rope", "base must be positive");
  auto st = cpu_stream();
  std::vector<mx::array> in{f32(x, st)};
  if (freqs) in.push_back(f32(*freqs, st));
  auto y = mx::array(x.shape(), mx::float32,
                     std::make_shared<RoPEOp>(st, dims, traditional, base ? *base : 0.f, scale, offset), in);
  return x.dtype() == mx::float32 ? y : mx::astype(y, x.dtype(), st);
}

void rope_inv_freq(int dims, float base, const float* fr, int64_t fs, float* inv) {
  const int half = dims / 2;
  // as MLX's composed rope: exp(-i * log(base) / half) in float32, or 1 / freqs
  const float lb = std::log(base > 0.f ? base : 1.f) / (float)half;
  for (int i = 0; i < half; ++i) inv[i] = fr ? 1.f / fr[i * fs] : std::exp((float)(-i) * lb);
}

void RoPEOp::eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) {
  start(out, stream(), inputs);
  View x = view(inputs[0]);
  const float* fr = inputs.size() > 1 ? inputs[1].data<float>() : nullptr;
  const int64_t fs = inputs.size() > 1 ? inputs[1].strides()[0] : 0;
  auto& enc = mx::cpu::get_command_encoder(stream());
  enc.dispatch([x, fr, fs, y = out.data<float>(), dims = dims_, trad = traditional_, base = base_, scale = scale_,
                offset = offset_]() {
    std::vector<float> inv(dims / 2);
    rope_inv_freq(dims, base, fr, fs, inv.data());
    fk::RopeArgs a;
    a.x = x.p;
    for (int i = 0; i < 4; ++i) a.xs[i] = x.st[i];
    a.y = y;
    a.B = x.sh[0];
    a.H = x.sh[1];
    a.L = x.sh[2];
    a.D = x.sh[3];
    a.dims = dims;
    a.traditional = trad;
    a.scale = scale;
    a.offset = offset;
    a.inv_freq = inv.data();
    fk::rope(a);
  });
}

void RoPEOp::eval_gpu(const std::vector<mx::array>&, mx::array&) {
  throw std::runtime_error("MLXLocalRoPE runs on the CPU only");
}

// ------------------------------------------------------------------ attention

mx::array sdpa(const mx::array& q, const mx::array& k, const mx::array& v, float scale, bool causal,
               const std::optional<mx::array>& mask, bool flat) {
  for (const mx::array* a : {&q, &k, &v})
    if (a->ndim() != 4 || !is_float(a->dtype()))
      fail("sdpa", std::string(a == &q ? "q" : a == &k ? "k" : "v") + " must be a 4-D float array, got shape " +
                       shape_str(*a));
  const int B = q.shape(0), Hq = q.shape(1), Lq = q.shape(2), D = q.shape(3);
  const int Hkv = k.shape(1), Lk = k.shape(2);
  if (k.shape(0) != B || v.shape(0) != B || v.shape(1) != Hkv || v.shape(2) != Lk || k.shape(3) != D ||
      v.shape(3) != D)
    fail("sdpa", "k and v must be [" + std::to_string(B) + ", Hkv, Lk, " + std::to_string(D) + "], got " +
                     shape_str(k) + " and " + shape_str(v));
  if (Hkv < 1 || Hq % Hkv != 0)
    fail("sdpa", "query heads (" + std::to_string(Hq) + ") must be a multiple of key heads (" + std::to_string(Hkv) + ")");
  if (D % 16 != 0) fail("sdpa", "the head dimension must be a multiple of 16, got " + std::to_string(D));
  if (Lk < 1) fail("sdpa", "no keys");
  if (causal && mask) fail("sdpa", "give causal or a mask, not both");
  auto st = cpu_stream();
  std::vector<mx::array> in{f32(q, st), f32(k, st), f32(v, st)};
  int kind = causal ? fk::MASK_CAUSAL : fk::MASK_NONE;
  if (mask) {
    auto m = *mask;
    if (m.ndim() > 4) fail("sdpa", "mask must have at most 4 dimensions, got shape " + shape_str(m));
    try {
      m = mx::broadcast_to(m, {B, Hq, Lq, Lk}, st);
    } catch (const std::invalid_argument&) {
      fail("sdpa", "mask of shape " + shape_str(*mask) + " does not broadcast to (" + std::to_string(B) + ", " +
                       std::to_string(Hq) + ", " + std::to_string(Lq) + ", " + std::to_string(Lk) + ")");
    }
    if (m.dtype() == mx::bool_) {
      kind = fk::MASK_BOOL;
    } else if (is_float(m.dtype())) {
      kind = fk::MASK_ADD;
      m = f32(m, st);
    } else {
      fail("sdpa", "mask must be bool or float");
    }
    in.push_back(m);
  }
  auto shape = flat ? mx::Shape{B, Lq, Hq * D} : q.shape();
  auto y = mx::array(shape, mx::float32, std::make_shared<SdpaOp>(st, scale, kind, flat), in);
  return q.dtype() == mx::float32 ? y : mx::astype(y, q.dtype(), st);
}

void SdpaOp::eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) {
  // [B, Hq, Lq, D] with the memory of [B, Lq, Hq, D] (what the kernel writes)
  // (flat: [B, Lq, Hq * D], the same memory)
  const int64_t Hq = inputs[0].shape(1), Lq = inputs[0].shape(2), D = inputs[0].shape(3);
  if (flat_) {
    out.set_data(mx::allocator::malloc(out.nbytes()));
  } else {
    mx::array::Flags flags;
    flags.contiguous = true;
    flags.row_contiguous = Hq == 1 || Lq == 1;
    flags.col_contiguous = out.size() <= 1;
    out.set_data(mx::allocator::malloc(out.nbytes()), out.size(), mx::Strides{Lq * Hq * D, D, Hq * D, 1}, flags);
  }
  auto& enc0 = mx::cpu::get_command_encoder(stream());
  for (auto& a : inputs) enc0.set_input_array(a);
  enc0.set_output_array(out);
  View q = view(inputs[0]), k = view(inputs[1]), v = view(inputs[2]);
  const uint8_t* mb = nullptr;
  const float* mf = nullptr;
  int64_t ms[4] = {0, 0, 0, 0};
  if (inputs.size() > 3) {
    auto& m = inputs[3];
    if (mask_ == fk::MASK_BOOL) mb = m.data<uint8_t>();
    else mf = m.data<float>();
    for (int i = 0; i < 4; ++i) ms[i] = m.strides()[i];
  }
  auto& enc = mx::cpu::get_command_encoder(stream());
  enc.dispatch([q, k, v, mb, mf, m0 = ms[0], m1 = ms[1], m2 = ms[2], m3 = ms[3], y = out.data<float>(),
                scale = scale_, kind = mask_]() mutable {
    std::vector<float> bq, bk, bv;
    pack_last(q, bq);
    pack_last(k, bk);
    pack_last(v, bv);
    fk::SdpaArgs a;
    a.q = q.p;
    a.k = k.p;
    a.v = v.p;
    for (int i = 0; i < 3; ++i) {
      a.qs[i] = q.st[i];
      a.ks[i] = k.st[i];
      a.vs[i] = v.st[i];
    }
    a.out = y;
    a.B = q.sh[0];
    a.Hq = q.sh[1];
    a.Lq = q.sh[2];
    a.D = q.sh[3];
    a.Hkv = k.sh[1];
    a.Lk = k.sh[2];
    a.scale = scale;
    a.mask = kind;
    a.mask_b = mb;
    a.mask_f = mf;
    a.ms[0] = m0;
    a.ms[1] = m1;
    a.ms[2] = m2;
    a.ms[3] = m3;
    fk::sdpa(a);
  });
}

void SdpaOp::eval_gpu(const std::vector<mx::array>&, mx::array&) {
  throw std::runtime_error("MLXLocalSDPA runs on the CPU only");
}

}  // namespace mlxl

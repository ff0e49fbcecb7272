// Several quantized projections of one input as one op (see qmulti.h).
#include "qmulti.h"

#include <sstream>
#include <stdexcept>

#include "mlx/allocator.h"
#include "mlx/backend/cpu/encoder.h"
#include "fused.h"
#include "fused_kernels.h"
#include "mlx/backend/cpu/unary_ops.h"
#include "pool.h"
#include "qmatmul.h"
#include "qprep.h"

namespace mlxl {
namespace {

std::string shape_str(const mx::Shape& s) {
  std::ostringstream o;
  o << "(";
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  o << (s.size() == 1 ? ",)" : ")");
  return o.str();
}
std::string shape_str(const mx::array& a) { return shape_str(a.shape()); }

bool is_float(mx::Dtype t) { return t == mx::float32 || t == mx::bfloat16 || t == mx::float16; }

[[noreturn]] void fail(const char* op, const std::string& msg) {
  throw std::invalid_argument(std::string(op) + ": " + msg);
}

mx::Stream cpu_stream() {
  auto st = mx::to_stream(mx::StreamOrDevice{});
  if (st.device.type != mx::Device::cpu) st = mx::to_stream(mx::Device::cpu);
  return st;
}

int parse_mode(const char* op, const std::string& m) {
  if (m == "int8") return MODE_INT8;
  if (m == "f32") return MODE_F32;
  fail(op, "mode must be 'int8' or 'f32', not '" + m + "'");
}

// The checked, row-contiguous weights of one projection of x [..., K] (appended to `in`).
void add_weights(const char* op, const mx::array& x, const mx::array& w, const mx::array& s, const mx::array& b,
                 int group_size, int bits, mx::Stream st, std::vector<mx::array>& in) {
  const int K = x.shape(-1), N = w.ndim() == 2 ? w.shape(0) : 0;
  if (w.ndim() != 2 || w.dtype() != mx::uint32 || (int64_t)w.shape(1) * 32 != (int64_t)K * bits)
    fail(op, "w of shape " + shape_str(w) + " does not hold " + std::to_string(bits) + "-bit rows of x's last dimension " +
                 std::to_string(K));
  for (const mx::array* p : {&s, &b})
    if (p->ndim() != 2 || p->shape(0) != N || p->shape(1) != K / group_size || !is_float(p->dtype()))
      fail(op, std::string(p == &s ? "scales" : "biases") + " must be float [" + std::to_string(N) + ", " +
                   std::to_string(K / group_size) + "], got shape " + shape_str(*p));
  auto ensure = [&](const mx::array& a) {
    if (a.status() == mx::array::unscheduled || !a.flags().row_contiguous) return mx::contiguous(a, false, st);
    return a;
  };
  in.push_back(ensure(w));
  in.push_back(ensure(s));
  in.push_back(ensure(b.dtype() == s.dtype() ? b : mx::astype(b, s.dtype(), st)));
}

// a float32, row-contiguous a (a node only when a is not already evaluated so)
mx::array ensure_f32(const mx::array& a, mx::Stream st) {
  auto f = a.dtype() == mx::float32 ? a : mx::astype(a, mx::float32, st);
  if (f.status() == mx::array::unscheduled || !f.flags().row_contiguous) return mx::contiguous(f, false, st);
  return f;
}

void check_common(const char* op, const mx::array& x, int group_size, int bits, int mode, int isa) {
  if (bits != 4 && bits != 5 && bits != 8) fail(op, "bits must be 4, 5 or 8, not " + std::to_string(bits));
  if (group_size != 32 && group_size != 64 && group_size != 128)
    fail(op, "group_size must be 32, 64 or 128, not " + std::to_string(group_size));
  if (x.ndim() < 1 || !is_float(x.dtype()))
    fail(op, "x must be a float array of at least one dimension, got shape " + shape_str(x));
  if (x.shape(-1) % 64 != 0) fail(op, "x's last dimension must be a multiple of 64, got " + std::to_string(x.shape(-1)));
  if (pick_fn(mode, isa) == nullptr) fail(op, "this CPU cannot run the chosen kernels");
}

struct Proj {
  const uint8_t* w;
  const void* s;
  const void* b;
  int stype, N;
  float* y;
  const float* bias;  // linear bias [N] or nullptr
};

struct Job {
  std::vector<Args> a;  // one per projection, same prepared x
  std::vector<int> off;  // first column of each projection in the shared range
  std::vector<const float*> bias;
  RowsFn fn;
  const float* res;  // KIND_RESIDUAL: [M, N] added to the one projection
};

// What follows the matmuls: a residual to add, an RMSNorm of the result; RoPE of q and k.
struct Epilogue {
  const float* res = nullptr;     // [M, N] row contiguous
  const float* norm_w = nullptr;  // [N]
  float eps = 0.f;
  float* norm_y = nullptr;        // [M, N]
  RopeCfg rope;                   // dims > 0: projections 0 and 1 (heads h[i], x [B, L, K])
  int B = 0, L = 0, h[2] = {0, 0};
  const float* qk_w[2] = {nullptr, nullptr};
  const float* freqs = nullptr;
  int64_t fs = 0;
  float* rot_y[2] = {nullptr, nullptr};  // the outputs, contiguous [B, h, L, D]
};

void multi_body(const void* p, int lo, int hi) {
  const Job* j = static_cast<const Job*>(p);
  for (size_t i = 0; i < j->a.size(); ++i) {
    const int o = j->off[i], n0 = lo > o ? lo - o : 0, n1 = hi - o < j->a[i].N ? hi - o : j->a[i].N;
    if (n0 >= n1) continue;
    j->fn(j->a[i], n0, n1);
    const Args& a = j->a[i];
    if (const float* bb = j->bias[i])
      for (int m = 0; m < a.M; ++m)
        for (int n = n0; n < n1; ++n) a.y[(int64_t)m * a.N + n] += bb[n];
    if (const float* r = j->res)  // y = residual + x @ W.T: the same float sum as mlx's x + r
      for (int m = 0; m < a.M; ++m)
        for (int n = n0; n < n1; ++n) a.y[(int64_t)m * a.N + n] += r[(int64_t)m * a.N + n];
  }
}

void swiglu_body(const void* p, int lo, int hi) {
  const Job* j = static_cast<const Job*>(p);
  const Args &g = j->a[0], &u = j->a[1];
  j->fn(g, lo, hi);
  j->fn(u, lo, hi);
  mx::detail::Sigmoid sigmoid;
  for (int m = 0; m < g.M; ++m) {
    float* y = g.y + (int64_t)m * g.N;
    const float* up = u.y + (int64_t)m * u.N;
    for (int n = lo; n < hi; ++n) {
      const float x = y[n];
      const float silu = x * sigmoid(x);  // nn.silu: x * sigmoid(x), then * up (mlx-lm's swiglu)
      y[n] = silu * up[n];
    }
  }
}

// x [M, K] (float32, strides sm / sk) times every projection, on the pool.
void run_multi(const float* x, int64_t sm, int64_t sk, int M, int K, int G, int bits, int mode, RowsFn fn,
               const std::vector<Proj>& ps, bool swiglu, const Epilogue& ep) {
  thread_local Activations acts;
  thread_local std::vector<float> up;
  Args prepared;
  acts.prepare(x, sm, sk, M, K, G, bits, mode == MODE_INT8, prepared);
  Job job;
  job.fn = fn;
  job.res = ep.res;
  int total = 0;
  for (const Proj& p : ps) {
    Args a;
    a.w = p.w;
    a.scales = p.s;
    a.biases = p.b;
    a.stype = p.stype;
    a.bits = bits;
    a.N = p.N;
    a.K = K;
    a.G = G;
    a.M = M;
    a.xq = prepared.xq;
    a.dvec = prepared.dvec;
    a.xf = prepared.xf;
    a.xsum = prepared.xsum;
    a.y = p.y;
    a.pf = prefetch_bytes();
    job.a.push_back(a);
    job.off.push_back(total);
    job.bias.push_back(p.bias);
    total += p.N;
  }
  thread_local std::vector<float> rot[2];
  if (ep.rope.dims > 0)  // q and k land in scratch buffers, then normed and rotated into their outputs
    for (int i = 0; i < 2; ++i) {
      rot[i].resize((size_t)M * ps[i].N);
      job.a[i].y = rot[i].data();
    }
  if (swiglu) {
    up.resize((size_t)M * ps[1].N);
    job.a[1].y = up.data();
    total = ps[0].N;
  }
  auto body = swiglu ? swiglu_body : multi_body;
  const int nt = num_threads();
  const int64_t bytes = (int64_t)(swiglu ? 2 * total : total) * K * bits / 8 * M;
  if (nt == 1 || bytes < (64 << 10)) {
    body(&job, 0, total);
  } else {
    const int chunk = (total / (nt * 8) + 63) / 64 * 64;
    parallel_for(body, &job, total, chunk < 64 ? 64 : chunk);
  }
  if (ep.norm_w) fk::rms_norm(ps[0].y, ps[0].N, ep.norm_w, ep.norm_y, M, ps[0].N, ep.eps);  // as MLXLocalRMSNorm
  if (ep.rope.dims > 0) {
    std::vector<float> inv(ep.rope.dims / 2);
    rope_inv_freq(ep.rope.dims, ep.rope.base, ep.freqs, ep.fs, inv.data());
    for (int i = 0; i < 2; ++i) {
      const int h = ep.h[i], D = ps[i].N / h;
      float* t = rot[i].data();  // [B, L, h, D]
      if (ep.rope.norms) fk::rms_norm(t, D, ep.qk_w[i], t, M * h, D, ep.rope.eps[i]);  // per head, in place
      fk::RopeArgs a;  // as MLXLocalRoPE on the [B, h, L, D] view
      a.x = t;
      a.xs[0] = (int64_t)ep.L * h * D;
      a.xs[1] = D;
      a.xs[2] = (int64_t)h * D;
      a.xs[3] = 1;
      a.y = ep.rot_y[i];
      a.B = ep.B;
      a.H = h;
      a.L = ep.L;
      a.D = D;
      a.dims = ep.rope.dims;
      a.traditional = ep.rope.traditional;
      a.scale = ep.rope.scale;
      a.offset = ep.rope.offset;
      a.inv_freq = inv.data();
      fk::rope(a);
    }
  }
  if (acts.release_if_long(M, K)) {  // as quantized_matmul: a long prompt's buffers are not kept
    std::vector<float>().swap(up);
    std::vector<float>().swap(rot[0]);
    std::vector<float>().swap(rot[1]);
  }
}

mx::Shape out_shape(const mx::array& x, int N, int heads) {
  if (heads > 0) return {x.shape(0), heads, x.shape(1), N / heads};
  auto s = x.shape();
  s.back() = N;
  return s;
}

}  // namespace

std::vector<mx::Shape> QuantizedMulti::output_shapes(const std::vector<mx::array>& in) {
  if (kind_ == KIND_SWIGLU) return {out_shape(in[0], in[1].shape(0), 0)};
  if (kind_ == KIND_RESIDUAL) {
    auto s = out_shape(in[0], in[1].shape(0), 0);
    return norm_ ? std::vector<mx::Shape>{s, s} : std::vector<mx::Shape>{s};
  }
  std::vector<mx::Shape> r;
  for (size_t i = 0; i < heads_.size(); ++i) r.push_back(out_shape(in[0], in[1 + 3 * i].shape(0), heads_[i]));
  return r;
}

void QuantizedMulti::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  const auto& x = inputs[0];
  RowsFn fn = pick_fn(mode_, isa_);
  if (!fn) throw std::runtime_error("MLXLocalQuantizedMulti: this CPU cannot run the chosen kernels");
  const int np = kind_ == KIND_SWIGLU ? 2 : kind_ == KIND_RESIDUAL ? 1 : (int)heads_.size();
  for (int i = 1; i < 1 + 3 * np; ++i)
    if (!inputs[i].flags().row_contiguous)
      throw std::runtime_error("MLXLocalQuantizedMulti: w, scales and biases must be row contiguous");
  auto& enc = mx::cpu::get_command_encoder(stream());
  for (auto& a : inputs) enc.set_input_array(a);
  std::vector<Proj> ps;
  int nb = 1 + 3 * np;  // the next input after the weights
  for (int i = 0; i < np; ++i) {
    const auto &w = inputs[1 + 3 * i], &s = inputs[2 + 3 * i], &b = inputs[3 + 3 * i];
    Proj p{w.data<uint8_t>(), s.data<uint8_t>(), b.data<uint8_t>(), scale_type(s.dtype()), (int)w.shape(0), nullptr,
           nullptr};
    if (kind_ == KIND_MULTI && has_bias_[i]) p.bias = inputs[nb++].data<float>();
    ps.push_back(p);
  }
  for (size_t i = 0; i < outputs.size(); ++i) {
    auto& out = outputs[i];
    const int h = kind_ == KIND_MULTI ? heads_[i] : 0;
    if (h > 0 && !(rope_.dims > 0 && i < 2)) {  // [B, h, L, D] in the memory of [B, L, h, D] (what the kernel writes)
      const int64_t L = out.shape(2), D = out.shape(3);
      mx::array::Flags flags;
      flags.contiguous = true;
      flags.row_contiguous = h == 1 || L == 1;
      flags.col_contiguous = out.size() <= 1;
      out.set_data(mx::allocator::malloc(out.nbytes()), out.size(), mx::Strides{L * h * D, D, h * D, 1}, flags);
    } else {
      out.set_data(mx::allocator::malloc(out.nbytes()));
    }
    if (i < ps.size()) ps[i].y = out.data<float>();
    enc.set_output_array(out);
  }
  Epilogue ep;
  if (kind_ == KIND_MULTI && rope_.dims > 0) {
    ep.rope = rope_;
    ep.B = x.shape(0);
    ep.L = x.shape(1);
    for (int i = 0; i < 2; ++i) {
      ep.h[i] = heads_[i];
      ep.rot_y[i] = outputs[i].data<float>();
      if (rope_.norms) ep.qk_w[i] = inputs[nb++].data<float>();
    }
    if (rope_.base <= 0.f) {
      ep.freqs = inputs[nb].data<float>();
      ep.fs = inputs[nb].strides()[0];
      ++nb;
    }
  }
  const float* res = nullptr;
  bool res_contiguous = true;
  std::vector<int> res_shape;
  std::vector<int64_t> res_strides;
  if (kind_ == KIND_RESIDUAL) {
    const auto& r = inputs[nb++];
    res = r.data<float>();
    res_contiguous = r.flags().row_contiguous;
    res_shape.assign(r.shape().begin(), r.shape().end());
    res_strides.assign(r.strides().begin(), r.strides().end());
    if (norm_) {
      ep.norm_w = inputs[nb++].data<float>();
      ep.eps = eps_;
      ep.norm_y = outputs[1].data<float>();
    }
  }
  const int K = (int)x.shape(-1), M = K > 0 ? (int)(x.size() / K) : 0;
  const bool two_d = x.ndim() == 2, packed = !two_d && !x.flags().row_contiguous;
  const int64_t sm = two_d ? (int64_t)x.strides()[0] : K, sk = two_d ? (int64_t)x.strides()[1] : 1;
  std::vector<int> shape(x.shape().begin(), x.shape().end());
  std::vector<int64_t> strides(x.strides().begin(), x.strides().end());
  enc.dispatch([xp = x.data<float>(), sm, sk, packed, shape, strides, M, K, G = group_, bits = bits_, mode = mode_, fn,
                ps, swiglu = kind_ == KIND_SWIGLU, ep, res, res_contiguous, res_shape, res_strides]() mutable {
    std::vector<float> bx, br;  // a non-contiguous N-D x or residual (rare): its elements in order
    const float* xs = in_order(xp, !packed, shape, strides, bx);
    if (res) ep.res = in_order(res, res_contiguous, res_shape, res_strides, br);
    run_multi(xs, sm, sk, M, K, G, bits, mode, fn, ps, swiglu, ep);
  });
}

void QuantizedMulti::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("MLXLocalQuantizedMulti runs on the CPU only");
}

std::vector<mx::array> quantized_matmul_multi(const mx::array& x, const std::vector<mx::array>& w,
                                              const std::vector<mx::array>& scales,
                                              const std::vector<mx::array>& biases,
                                              const std::vector<std::optional<mx::array>>& bias,
                                              const std::vector<int>& heads, int group_size, int bits,
                                              const std::string& mode_s, const std::string& isa_s, int rope_dims,
                                              bool rope_traditional, std::optional<float> rope_base,
                                              float rope_scale, int rope_offset,
                                              const std::optional<mx::array>& rope_freqs,
                                              const std::vector<mx::array>& qk_norms,
                                              const std::vector<float>& norm_eps) {
  const char* op = "quantized_matmul_multi";
  const int mode = parse_mode(op, mode_s), isa = parse_isa(isa_s);
  check_common(op, x, group_size, bits, mode, isa);
  const size_t n = w.size();
  if (n < 1 || scales.size() != n || biases.size() != n || bias.size() != n || heads.size() != n)
    fail(op, "w, scales, biases, bias and heads must be lists of the same length (at least 1)");
  auto st = cpu_stream();
  std::vector<mx::array> in{x.dtype() == mx::float32 ? x : mx::astype(x, mx::float32, st)};
  std::vector<mx::array> extra;
  std::vector<mx::Shape> shapes;
  std::vector<bool> has_bias;
  auto out_dtype = x.dtype();
  for (size_t i = 0; i < n; ++i) {
    add_weights(op, x, w[i], scales[i], biases[i], group_size, bits, st, in);
    const int N = w[i].shape(0);
    if (heads[i] < 0 || (heads[i] > 0 && (x.ndim() != 3 || N % heads[i] != 0)))
      fail(op, "heads must be 0, or divide the output size with x of 3 dimensions [B, L, K]; got heads " +
                   std::to_string(heads[i]) + " for " + std::to_string(N) + " outputs and x of shape " + shape_str(x));
    if (bias[i]) {
      if (bias[i]->ndim() != 1 || bias[i]->shape(0) != N || !is_float(bias[i]->dtype()))
        fail(op, "bias must be a float array of shape (" + std::to_string(N) + ",), got " + shape_str(*bias[i]));
      extra.push_back(ensure_f32(*bias[i], st));
      out_dtype = mx::promote_types(out_dtype, bias[i]->dtype());
    }
    out_dtype = mx::promote_types(out_dtype, scales[i].dtype());
    has_bias.push_back((bool)bias[i]);
    shapes.push_back(out_shape(x, N, heads[i]));
  }
  for (auto& e : extra) in.push_back(e);
  RopeCfg rope;
  if (rope_dims > 0) {
    if (n < 2 || heads[0] <= 0 || heads[1] <= 0)
      fail(op, "rope needs q and k first, with heads > 0");
    const int D = w[0].shape(0) / heads[0];
    if (w[1].shape(0) / heads[1] != D || rope_dims % 2 != 0 || rope_dims > D)
      fail(op, "rope_dims must be even and at most the head dimension " + std::to_string(D) + " of q and k, got " +
                   std::to_string(rope_dims));
    if (rope_base.has_value() == rope_freqs.has_value()) fail(op, "give exactly one of rope_base and rope_freqs");
    if (rope_base && !(*rope_base > 0.f)) fail(op, "rope_base must be positive");
    if (!qk_norms.empty()) {
      if (qk_norms.size() != 2 || norm_eps.size() != 2) fail(op, "qk_norms and norm_eps must have 2 entries");
      for (auto& nw : qk_norms)
        if (nw.ndim() != 1 || nw.shape(0) != D || !is_float(nw.dtype()))
          fail(op, "qk_norms must be float arrays of shape (" + std::to_string(D) + ",), got " + shape_str(nw));
      for (auto& nw : qk_norms) in.push_back(ensure_f32(nw, st));
      rope.norms = true;
      rope.eps[0] = norm_eps[0];
      rope.eps[1] = norm_eps[1];
    }
    if (rope_freqs) {
      if (rope_freqs->ndim() != 1 || rope_freqs->shape(0) != rope_dims / 2)
        fail(op, "rope_freqs must have shape (" + std::to_string(rope_dims / 2) + ",), got " + shape_str(*rope_freqs));
      in.push_back(rope_freqs->dtype() == mx::float32 ? *rope_freqs : mx::astype(*rope_freqs, mx::float32, st));
    }
    rope.dims = rope_dims;
    rope.traditional = rope_traditional;
    rope.base = rope_base ? *rope_base : 0.f;
    rope.scale = rope_scale;
    rope.offset = rope_offset;
  } else if (!qk_norms.empty()) {
    fail(op, "qk_norms are applied with rope only");
  }
  auto outs = mx::array::make_arrays(
      shapes, std::vector<mx::Dtype>(n, mx::float32),
      std::make_shared<QuantizedMulti>(st, group_size, bits, mode, isa, heads, has_bias, KIND_MULTI, false, 0.f, rope),
      in);
  if (out_dtype != mx::float32)
    for (auto& y : outs) y = mx::astype(y, out_dtype, st);
  return outs;
}

mx::array quantized_swiglu(const mx::array& x, const mx::array& wg, const mx::array& sg, const mx::array& bg,
                           const mx::array& wu, const mx::array& su, const mx::array& bu, int group_size, int bits,
                           const std::string& mode_s, const std::string& isa_s) {
  const char* op = "quantized_swiglu";
  const int mode = parse_mode(op, mode_s), isa = parse_isa(isa_s);
  check_common(op, x, group_size, bits, mode, isa);
  auto st = cpu_stream();
  std::vector<mx::array> in{x.dtype() == mx::float32 ? x : mx::astype(x, mx::float32, st)};
  add_weights(op, x, wg, sg, bg, group_size, bits, st, in);
  add_weights(op, x, wu, su, bu, group_size, bits, st, in);
  if (wu.shape(0) != wg.shape(0))
    fail(op, "the gate and up projections must have as many outputs, got " + std::to_string(wg.shape(0)) + " and " +
                 std::to_string(wu.shape(0)));
  auto y = mx::array(out_shape(x, wg.shape(0), 0), mx::float32,
                     std::make_shared<QuantizedMulti>(st, group_size, bits, mode, isa, std::vector<int>{},
                                                      std::vector<bool>{}, KIND_SWIGLU),
                     in);
  const auto out_dtype = mx::promote_types(mx::promote_types(x.dtype(), sg.dtype()), su.dtype());
  return out_dtype == mx::float32 ? y : mx::astype(y, out_dtype, st);
}

std::vector<mx::array> quantized_matmul_residual(const mx::array& x, const mx::array& w, const mx::array& scales,
                                                 const mx::array& biases, const mx::array& residual,
                                                 const std::optional<mx::array>& norm_weight, float eps,
                                                 int group_size, int bits, const std::string& mode_s,
                                                 const std::string& isa_s) {
  const char* op = "quantized_matmul_residual";
  const int mode = parse_mode(op, mode_s), isa = parse_isa(isa_s);
  check_common(op, x, group_size, bits, mode, isa);
  auto st = cpu_stream();
  std::vector<mx::array> in{x.dtype() == mx::float32 ? x : mx::astype(x, mx::float32, st)};
  add_weights(op, x, w, scales, biases, group_size, bits, st, in);
  const auto shape = out_shape(x, w.shape(0), 0);
  if (residual.shape() != shape || !is_float(residual.dtype()))
    fail(op, "residual must be a float array of the output's shape " + shape_str(shape) +
                 ", got " + shape_str(residual));
  in.push_back(residual.dtype() == mx::float32 ? residual : mx::astype(residual, mx::float32, st));
  auto out_dtype = mx::promote_types(mx::promote_types(x.dtype(), scales.dtype()), residual.dtype());
  if (norm_weight) {
    if (norm_weight->ndim() != 1 || norm_weight->shape(0) != w.shape(0) || !is_float(norm_weight->dtype()))
      fail(op, "norm_weight must be a float array of shape (" + std::to_string(w.shape(0)) + ",), got " +
                   shape_str(*norm_weight));
    in.push_back(ensure_f32(*norm_weight, st));
  }
  const int n = norm_weight ? 2 : 1;
  auto outs = mx::array::make_arrays(
      std::vector<mx::Shape>(n, shape), std::vector<mx::Dtype>(n, mx::float32),
      std::make_shared<QuantizedMulti>(st, group_size, bits, mode, isa, std::vector<int>{}, std::vector<bool>{},
                                       KIND_RESIDUAL, (bool)norm_weight, eps),
      in);
  if (out_dtype != mx::float32) outs[0] = mx::astype(outs[0], out_dtype, st);
  if (norm_weight && mx::promote_types(out_dtype, norm_weight->dtype()) != mx::float32)
    outs[1] = mx::astype(outs[1], mx::promote_types(out_dtype, norm_weight->dtype()), st);
  return outs;
}

}  // namespace mlxl

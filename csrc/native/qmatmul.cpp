// The quantized matmul op and primitive: input checks, activation preparation,
// instruction-set dispatch, threading.  The kernels are in kernels_impl.inc.
#include "qmatmul.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <sstream>
#include <stdexcept>
#include <vector>

#include "kernels.h"
#include "mlx/allocator.h"
#include "mlx/backend/cpu/encoder.h"
#include "pool.h"
#include "qprep.h"

namespace mlxl {

bool has_avx2() {
  static bool v = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  return v;
}
bool has_avx512vnni() {
  static bool v = has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                  __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
  return v;
}
bool has_avxvnni() {
  static bool v = has_avx2() && __builtin_cpu_supports("avxvnni");
  return v;
}

int parse_isa(const std::string& s) {
  if (s == "auto") return ISA_AUTO;
  if (s == "avx2") return ISA_AVX2;
  if (s == "avx512vnni") return ISA_AVX512VNNI;
  if (s == "avxvnni") return ISA_AVXVNNI;
  throw std::invalid_argument("quantized_matmul: isa must be 'auto', 'avx2', 'avx512vnni' or 'avxvnni', not '" + s + "'");
}

RowsFn pick_fn(int mode, int isa) {
  if (!has_avx2()) return nullptr;
  if (mode == MODE_F32) return rows_f32_avx2;
  if (isa == ISA_AUTO) {
    if (has_avx512vnni()) return rows_int8_avx512vnni;
    if (has_avxvnni()) return rows_int8_avxvnni;
    return rows_int8_avx2;
  }
  if (isa == ISA_AVX512VNNI) return has_avx512vnni() ? rows_int8_avx512vnni : nullptr;
  if (isa == ISA_AVXVNNI) return has_avxvnni() ? rows_int8_avxvnni : nullptr;
  return rows_int8_avx2;
}

int scale_type(mx::Dtype t) {
  return t == mx::float32 ? ST_F32 : t == mx::bfloat16 ? ST_BF16 : ST_F16;
}

// Prepare M rows of x (float32, strides sm/sk) for the kernels; see kernels.h.
void prep_x(const float* x, int64_t sm, int64_t sk, int M, int K, int G, int bits, bool int8, int8_t* xq, float* dvec,
            float* xf, float* xsum) {
  float buf[64];
  const int ng = K / G;
  for (int m = 0; m < M; ++m) {
    const float* xr = x + m * sm;
    int8_t* q = xq + (int64_t)m * K;
    float* dv = dvec + (int64_t)m * (K / 8);
    float* xp = xf + (int64_t)m * K;
    float* xs = xsum + (int64_t)m * ng;
    std::fill(xs, xs + ng, 0.f);
    for (int b = 0; b < K / 64; ++b) {
      for (int i = 0; i < 64; ++i) buf[i] = xr[(int64_t)(b * 64 + i) * sk];
      if (int8) {
        for (int h = 0; h < 2; ++h) {
          float amax = 0.f;
          for (int i = 0; i < 32; ++i) amax = std::fmax(amax, std::fabs(buf[h * 32 + i]));
          const float d = amax / 127.f;
          const float id = d > 0.f ? 1.f / d : 0.f;
          int qsum = 0;
          for (int i = 0; i < 32; ++i) {
            const int e = h * 32 + i;
            int v = (int)std::nearbyint(buf[e] * id);
            v = v > 127 ? 127 : (v < -127 ? -127 : v);
            const int pos = bits == 4 ? (e & 1) * 32 + (e >> 1) : e;  // 5, 8 bits: in order
            q[b * 64 + pos] = (int8_t)v;
            qsum += v;
          }
          // as llama.cpp's q8_1 "s": the bias term sees the *quantized* x, so
          // that it cancels the scale * q_w offset (else the error doubles)
          xs[(b * 64 + h * 32) / G] += d * (float)qsum;
          for (int i = 0; i < 4; ++i) dv[b * 8 + h * 4 + i] = d;
        }
      } else {
        for (int i = 0; i < 64; ++i) xs[(b * 64 + i) / G] += buf[i];
        if (bits == 4) {
          for (int p = 0; p < 8; ++p)
            for (int j = 0; j < 8; ++j) xp[b * 64 + p * 8 + j] = buf[8 * j + p];
        } else {
          std::copy(buf, buf + 64, xp + b * 64);
        }
      }
    }
  }
}

int prefetch_bytes() {
  static int v = [] {
    const char* e = std::getenv("MLX_LOCAL_NATIVE_PREFETCH");
    return e ? std::atoi(e) : 512;  // measured best by the prototype (+30-40% from memory)
  }();
  return v;
}

void Activations::prepare(const float* x, int64_t sm, int64_t sk, int M, int K, int G, int bits, bool int8, Args& a) {
  xq.resize(int8 ? (size_t)M * K : 1);
  dvec.resize(int8 ? (size_t)M * K / 8 : 1);
  xf.resize(int8 ? 1 : (size_t)M * K);
  xsum.resize((size_t)M * K / G);
  prep_x(x, sm, sk, M, K, G, bits, int8, xq.data(), dvec.data(), xf.data(), xsum.data());
  a.xq = xq.data();
  a.dvec = dvec.data();
  a.xf = xf.data();
  a.xsum = xsum.data();
}

bool Activations::release_if_long(int M, int K) {
  if ((size_t)M * K <= ((size_t)1 << 20)) return false;
  std::vector<int8_t>().swap(xq);
  std::vector<float>().swap(dvec);
  std::vector<float>().swap(xf);
  std::vector<float>().swap(xsum);
  return true;
}

const float* in_order(const float* p, bool contiguous, const std::vector<int>& shape, const std::vector<int64_t>& strides,
                      std::vector<float>& buf) {
  if (contiguous) return p;
  size_t n = 1;
  for (int d : shape) n *= (size_t)d;
  buf.resize(n);
  const int nd = (int)shape.size();
  std::vector<int> idx(nd, 0);
  for (size_t i = 0; i < n; ++i) {
    int64_t off = 0;
    for (int d = 0; d < nd; ++d) off += idx[d] * strides[d];
    buf[i] = p[off];
    for (int d = nd - 1; d >= 0 && ++idx[d] == shape[d]; --d) idx[d] = 0;
  }
  return buf.data();
}

namespace {

struct Job {
  const Args* a;
  RowsFn fn;
};
void job_body(const void* p, int lo, int hi) {
  const Job* j = static_cast<const Job*>(p);
  j->fn(*j->a, lo, hi);
}

void run(const float* x, int64_t sm, int64_t sk, const uint8_t* w, const void* s, const void* b, int stype, float* y,
         int M, int N, int K, int G, int bits, int mode, RowsFn fn) {
  thread_local Activations acts;
  Args a;
  a.w = w;
  a.scales = s;
  a.biases = b;
  a.stype = stype;
  a.bits = bits;
  a.N = N;
  a.K = K;
  a.G = G;
  a.M = M;
  acts.prepare(x, sm, sk, M, K, G, bits, mode == MODE_INT8, a);
  a.y = y;
  a.pf = prefetch_bytes();
  const int nt = num_threads();
  const int64_t bytes = (int64_t)N * K * bits / 8 * M;
  if (nt == 1 || bytes < (64 << 10)) {  // not worth waking another thread
    fn(a, 0, N);
  } else {
    Job job{&a, fn};
    const int chunk = (N / (nt * 8) + 63) / 64 * 64;
    parallel_for(job_body, &job, N, chunk < 64 ? 64 : chunk);
  }
  acts.release_if_long(M, K);
}

std::string shape_str(const mx::array& a) {
  std::ostringstream o;
  o << "(";
  for (int i = 0; i < a.ndim(); ++i) o << (i ? ", " : "") << a.shape(i);
  o << (a.ndim() == 1 ? ",)" : ")");
  return o.str();
}

bool is_float(mx::Dtype t) { return t == mx::float32 || t == mx::bfloat16 || t == mx::float16; }

void fail(const std::string& msg) { throw std::invalid_argument("quantized_matmul: " + msg); }

}  // namespace

bool cpu_supported() { return has_avx2(); }

std::string best_isa() {
  if (!has_avx2()) return "none";
  return has_avx512vnni() ? "avx512vnni" : has_avxvnni() ? "avxvnni" : "avx2";
}

std::string available_isas() {
  std::string s;
  if (has_avx2()) s += "avx2";
  if (has_avx512vnni()) s += " avx512vnni";
  if (has_avxvnni()) s += " avxvnni";
  return s;
}

void QuantizedMatmul::eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) {
  auto& x = inputs[0];
  auto& w = inputs[1];
  auto& s = inputs[2];
  auto& b = inputs[3];
  if (!w.flags().row_contiguous || !s.flags().row_contiguous || !b.flags().row_contiguous)
    throw std::runtime_error("MLXLocalQuantizedMatmul: w, scales and biases must be row contiguous");
  RowsFn fn = pick_fn(mode_, isa_);
  if (!fn) throw std::runtime_error("MLXLocalQuantizedMatmul: this CPU cannot run the chosen kernels");
  out.set_data(mx::allocator::malloc(out.nbytes()));
  auto& enc = mx::cpu::get_command_encoder(stream());
  enc.set_input_array(x);
  enc.set_input_array(w);
  enc.set_input_array(s);
  enc.set_input_array(b);
  enc.set_output_array(out);
  // x of any rank: M rows of K (2-D: any strides; else row contiguous, or packed here first)
  const int K = (int)x.shape(-1), M = K > 0 ? (int)(x.size() / K) : 0;
  const bool two_d = x.ndim() == 2, packed = !two_d && !x.flags().row_contiguous;
  const int64_t sm = two_d ? (int64_t)x.strides()[0] : K, sk = two_d ? (int64_t)x.strides()[1] : 1;
  std::vector<int> shape(x.shape().begin(), x.shape().end());
  std::vector<int64_t> strides(x.strides().begin(), x.strides().end());
  enc.dispatch([xp = x.data<float>(), sm, sk, packed, shape, strides, wp = w.data<uint8_t>(),
                sp = (const void*)s.data<uint8_t>(), bp = (const void*)b.data<uint8_t>(),
                stype = scale_type(s.dtype()), yp = out.data<float>(), M, N = (int)w.shape(0), K, G = group_,
                bits = bits_, mode = mode_, fn]() {
    std::vector<float> buf;  // a non-contiguous N-D x (rare): its elements in order
    const float* xs = in_order(xp, !packed, shape, strides, buf);
    run(xs, sm, sk, wp, sp, bp, stype, yp, M, N, K, G, bits, mode, fn);
  });
}

void QuantizedMatmul::eval_gpu(const std::vector<mx::array>&, mx::array&) {
  throw std::runtime_error("MLXLocalQuantizedMatmul runs on the CPU only");
}

mx::array quantized_matmul(const mx::array& x, const mx::array& w, const mx::array& scales, const mx::array& biases,
                           int group_size, int bits, const std::string& mode_s, const std::string& isa_s) {
  const int mode = mode_s == "int8" ? MODE_INT8 : mode_s == "f32" ? MODE_F32 : -1;
  if (mode < 0) fail("mode must be 'int8' or 'f32', not '" + mode_s + "'");
  const int isa = parse_isa(isa_s);
  if (bits != 4 && bits != 5 && bits != 8) fail("bits must be 4, 5 or 8, not " + std::to_string(bits));
  if (group_size != 32 && group_size != 64 && group_size != 128)
    fail("group_size must be 32, 64 or 128, not " + std::to_string(group_size));
  if (x.ndim() < 1 || !is_float(x.dtype()))
    fail("x must be a float32, bfloat16 or float16 array of at least one dimension, got shape " + shape_str(x));
  if (w.ndim() != 2 || w.dtype() != mx::uint32) fail("w must be a 2-D uint32 array, got shape " + shape_str(w));
  const int K = x.shape(-1), N = w.shape(0);
  if ((int64_t)w.shape(1) * 32 != (int64_t)K * bits)
    fail("w of shape " + shape_str(w) + " does not hold " + std::to_string(bits) + "-bit rows of x's last dimension " +
         std::to_string(K));
  if (K % 64 != 0) fail("x's last dimension must be a multiple of 64, got " + std::to_string(K));
  for (const mx::array* p : {&scales, &biases}) {
    const char* what = p == &scales ? "scales" : "biases";
    if (p->ndim() != 2 || p->shape(0) != N || p->shape(1) != K / group_size || !is_float(p->dtype()))
      fail(std::string(what) + " must be float [" + std::to_string(N) + ", " + std::to_string(K / group_size) +
           "], got shape " + shape_str(*p));
  }
  if (pick_fn(mode, isa) == nullptr) fail("this CPU cannot run isa '" + isa_s + "'");

  // the default stream (e.g. mlx-lm's generation stream), unless it is not a CPU stream
  auto st = mx::to_stream(mx::StreamOrDevice{});
  if (st.device.type != mx::Device::cpu) st = mx::to_stream(mx::Device::cpu);
  auto ensure = [&](const mx::array& a) {
    if (a.status() == mx::array::unscheduled || !a.flags().row_contiguous) return mx::contiguous(a, false, st);
    return a;
  };
  auto sc = scales, bi = biases;
  if (bi.dtype() != sc.dtype()) bi = mx::astype(bi, sc.dtype(), st);
  sc = ensure(sc);
  bi = ensure(bi);
  auto wq = ensure(w);

  const auto out_dtype = mx::promote_types(x.dtype(), scales.dtype());
  auto out_shape = x.shape();
  out_shape.back() = N;
  auto xf = x.dtype() == mx::float32 ? x : mx::astype(x, mx::float32, st);
  // x of any rank, y [..., N] directly: no reshapes (each one more node for MLX to schedule)
  auto y = mx::array(out_shape, mx::float32, std::make_shared<QuantizedMatmul>(st, group_size, bits, mode, isa),
                     {xf, wq, sc, bi});
  if (out_dtype != mx::float32) y = mx::astype(y, out_dtype, st);
  return y;
}

}  // namespace mlxl

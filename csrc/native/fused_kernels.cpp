// The fused kernels (see fused_kernels.h), compiled with AVX2 + FMA: the
// module is only loaded on CPUs that have them (mlx_local/_native.py).
// No std:: templates here (see kernels.h): buffers are malloc'ed, helpers
// have internal linkage.
#include "fused_kernels.h"

#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "pool.h"

namespace mlxl {
namespace fk {
namespace {

inline int imin(int a, int b) { return a < b ? a : b; }
inline int imax(int a, int b) { return a > b ? a : b; }

struct Buf {
  float* p;
  size_t n;
};
thread_local Buf tb_q = {nullptr, 0}, tb_o = {nullptr, 0}, tb_s = {nullptr, 0},
                 tb_ml = {nullptr, 0};

// a per-thread scratch buffer of at least n floats (kept for the next call)
float* scratch(Buf& b, size_t n) {
  if (n > b.n) {
    free(b.p);
    b.p = static_cast<float*>(aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64));
    b.n = n;
  }
  return b.p;
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

inline float hmax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// exp(x), Cephes' polynomial (relative error ~1e-7); exp(-inf) = 0
inline __m256 exp256(__m256 x) {
  const __m256 under = _mm256_cmp_ps(x, _mm256_set1_ps(-87.33f), _CMP_LT_OQ);
  x = _mm256_min_ps(x, _mm256_set1_ps(88.37f));
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.33f));
  __m256 fx = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f));
  fx = _mm256_floor_ps(fx);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
  y = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
  return _mm256_andnot_ps(under, y);
}

// p[i] = exp(s[i] - m) for i < n (n a multiple of 8 or not); returns the sum
float exp_row(float* s, int n, float m) {
  const __m256 vm = _mm256_set1_ps(m);
  __m256 acc = _mm256_setzero_ps();
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 p = exp256(_mm256_sub_ps(_mm256_loadu_ps(s + i), vm));
    _mm256_storeu_ps(s + i, p);
    acc = _mm256_add_ps(acc, p);
  }
  float sum = hsum(acc);
  for (; i < n; ++i) {
    s[i] = expf(s[i] - m);
    sum += s[i];
  }
  return sum;
}

float max_row(const float* s, int n) {
  __m256 acc = _mm256_set1_ps(-INFINITY);
  int i = 0;
  for (; i + 8 <= n; i += 8) acc = _mm256_max_ps(acc, _mm256_loadu_ps(s + i));
  float m = hmax(acc);
  for (; i < n; ++i) m = s[i] > m ? s[i] : m;
  return m;
}

// o[0..D) += p * v[0..D), D a multiple of 8
inline void axpy(float* o, float p, const float* v, int D) {
  const __m256 vp = _mm256_set1_ps(p);
  for (int d = 0; d < D; d += 8) _mm256_storeu_ps(o + d, _mm256_fmadd_ps(vp, _mm256_loadu_ps(v + d), _mm256_loadu_ps(o + d)));
}

// ------------------------------------------------------------------ RMSNorm

struct NormCtx {
  const float *x, *w;
  float* y;
  int64_t xs;
  int D;
  float eps;
};

void norm_body(const void* p, int lo, int hi) {
  const NormCtx& c = *static_cast<const NormCtx*>(p);
  const int D = c.D;
  for (int r = lo; r < hi; ++r) {
    const float* x = c.x + r * c.xs;
    float* y = c.y + (int64_t)r * D;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int d = 0;
    for (; d + 16 <= D; d += 16) {
      __m256 u = _mm256_loadu_ps(x + d), v = _mm256_loadu_ps(x + d + 8);
      a0 = _mm256_fmadd_ps(u, u, a0);
      a1 = _mm256_fmadd_ps(v, v, a1);
    }
    float ss = hsum(_mm256_add_ps(a0, a1));
    for (; d < D; ++d) ss += x[d] * x[d];
    const float inv = 1.f / sqrtf(ss / (float)D + c.eps);
    const __m256 vi = _mm256_set1_ps(inv);
    d = 0;
    for (; d + 8 <= D; d += 8)
      _mm256_storeu_ps(y + d, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + d), vi), _mm256_loadu_ps(c.w + d)));
    for (; d < D; ++d) y[d] = x[d] * inv * c.w[d];
  }
}

// ------------------------------------------------------------------ RoPE

struct RopeCtx {
  const RopeArgs* a;
  float* cs;  // [L, half] cos then [L, half] sin
};

void rope_table_body(const void* p, int lo, int hi) {
  const RopeCtx& c = *static_cast<const RopeCtx*>(p);
  const RopeArgs& a = *c.a;
  const int half = a.dims / 2;
  for (int l = lo; l < hi; ++l) {
    // as MLX's composed rope: float32 positions and products
    const float pos = ((float)l + (float)a.offset) * a.scale;
    for (int i = 0; i < half; ++i) {
      const float th = pos * a.inv_freq[i];
      c.cs[(int64_t)l * half + i] = cosf(th);
      c.cs[((int64_t)a.L + l) * half + i] = sinf(th);
    }
  }
}

void rope_body(const void* p, int lo, int hi) {
  const RopeCtx& c = *static_cast<const RopeCtx*>(p);
  const RopeArgs& a = *c.a;
  const int half = a.dims / 2, D = a.D;
  const int64_t s3 = a.xs[3];
  for (int r = lo; r < hi; ++r) {
    const int l = r % a.L, h = (r / a.L) % a.H, b = r / (a.L * a.H);
    const float* x = a.x + b * a.xs[0] + h * a.xs[1] + l * a.xs[2];
    float* y = a.y + (int64_t)r * D;
    const float* co = c.cs + (int64_t)l * half;
    const float* si = c.cs + ((int64_t)a.L + l) * half;
    if (a.traditional) {
      for (int i = 0; i < half; ++i) {
        const float x1 = x[(2 * i) * s3], x2 = x[(2 * i + 1) * s3];
        y[2 * i] = x1 * co[i] - x2 * si[i];
        y[2 * i + 1] = x1 * si[i] + x2 * co[i];
      }
    } else {
      for (int i = 0; i < half; ++i) {
        const float x1 = x[i * s3], x2 = x[(i + half) * s3];
        y[i] = x1 * co[i] - x2 * si[i];
        y[i + half] = x1 * si[i] + x2 * co[i];
      }
    }
    for (int d = a.dims; d < D; ++d) y[d] = x[d * s3];
  }
}

// ------------------------------------------------------------------ attention

constexpr int BK = 64;  // keys per block (tiled path)

struct AttnCtx {
  const SdpaArgs* a;
  int r;          // query heads per key head
  int nsplit;     // decode: key splits per (batch, key head)
  int split_len;  // decode: keys per split
  float* part;    // decode: [unit][row][m, l, o(D)]
  int bp;         // tiled: query positions per block
  int nqb;        // tiled: query blocks per (batch, key head)
  int nkb;        // tiled: key blocks per (batch, key head)
  float* kt;      // tiled: [B * Hkv][nkb][D][BK] the keys transposed by blocks, zero padded
};

// transpose the key blocks once for every query block (tiled path)
void kt_body(const void* p, int lo, int hi) {
  const AttnCtx& c = *static_cast<const AttnCtx*>(p);
  const SdpaArgs& a = *c.a;
  const int D = a.D;
  for (int u = lo; u < hi; ++u) {
    const int kb = (u % c.nkb) * BK, g = (u / c.nkb) % a.Hkv, b = u / (c.nkb * a.Hkv);
    float* Kt = c.kt + (int64_t)u * D * BK;
    const int bn = imin(BK, a.Lk - kb);
    for (int j = 0; j < bn; ++j) {
      const float* kj = a.k + b * a.ks[0] + g * a.ks[1] + (int64_t)(kb + j) * a.ks[2];
      for (int d = 0; d < D; ++d) Kt[d * BK + j] = kj[d];
    }
    if (bn < BK)
      for (int d = 0; d < D; ++d) memset(Kt + d * BK + bn, 0, sizeof(float) * (BK - bn));
  }
}

inline bool masked(const SdpaArgs& a, int b, int h, int l, int j, float* add) {
  switch (a.mask) {
    case MASK_CAUSAL:
      return j > a.Lk - a.Lq + l;
    case MASK_BOOL:
      return !a.mask_b[b * a.ms[0] + h * a.ms[1] + l * a.ms[2] + j * a.ms[3]];
    case MASK_ADD:
      *add = a.mask_f[b * a.ms[0] + h * a.ms[1] + l * a.ms[2] + j * a.ms[3]];
      return false;
    default:
      return false;
  }
}

// Decode: all Lq x r query rows of (b, g) against the keys of split s, two
// passes over the split's scores; writes partial (m, l, o) per row.
void decode_body(const void* p, int lo, int hi) {
  const AttnCtx& c = *static_cast<const AttnCtx*>(p);
  const SdpaArgs& a = *c.a;
  const int D = a.D, r = c.r, rows = r * a.Lq;
  for (int u = lo; u < hi; ++u) {
    const int s = u % c.nsplit, g = (u / c.nsplit) % a.Hkv, b = u / (c.nsplit * a.Hkv);
    const int k0 = s * c.split_len, k1 = imin(a.Lk, k0 + c.split_len), n = imax(0, k1 - k0);
    const int rows4 = (rows + 3) / 4 * 4;
    float* Q = scratch(tb_q, (size_t)rows4 * D);
    float* S = scratch(tb_s, (size_t)rows4 * (n > 0 ? n : 1));
    for (int row = 0; row < rows4; ++row) {
      float* qr = Q + (int64_t)row * D;
      if (row >= rows) {
        memset(qr, 0, sizeof(float) * D);
        continue;
      }
      const int hl = row / a.Lq, l = row % a.Lq;
      const float* q = a.q + b * a.qs[0] + (int64_t)(g * r + hl) * a.qs[1] + l * a.qs[2];
      for (int d = 0; d < D; ++d) qr[d] = q[d] * a.scale;
    }
    // scores
    for (int j = 0; j < n; ++j) {
      const float* kj = a.k + b * a.ks[0] + g * a.ks[1] + (int64_t)(k0 + j) * a.ks[2];
      for (int r0 = 0; r0 < rows4; r0 += 4) {
        const float* q0 = Q + (int64_t)r0 * D;
        __m256 c0 = _mm256_setzero_ps(), c1 = _mm256_setzero_ps(), c2 = _mm256_setzero_ps(), c3 = _mm256_setzero_ps();
        for (int d = 0; d < D; d += 8) {
          const __m256 kv = _mm256_loadu_ps(kj + d);
          c0 = _mm256_fmadd_ps(_mm256_loadu_ps(q0 + d), kv, c0);
          c1 = _mm256_fmadd_ps(_mm256_loadu_ps(q0 + D + d), kv, c1);
          c2 = _mm256_fmadd_ps(_mm256_loadu_ps(q0 + 2 * D + d), kv, c2);
          c3 = _mm256_fmadd_ps(_mm256_loadu_ps(q0 + 3 * D + d), kv, c3);
        }
        S[(int64_t)r0 * n + j] = hsum(c0);
        S[(int64_t)(r0 + 1) * n + j] = hsum(c1);
        S[(int64_t)(r0 + 2) * n + j] = hsum(c2);
        S[(int64_t)(r0 + 3) * n + j] = hsum(c3);
      }
    }
    float* part = c.part + (int64_t)u * rows * (D + 2);
    for (int row = 0; row < rows; ++row) {
      const int hl = row / a.Lq, l = row % a.Lq, h = g * r + hl;
      float* sr = S + (int64_t)row * n;
      if (a.mask != MASK_NONE) {
        for (int j = 0; j < n; ++j) {
          float add = 0.f;
          if (masked(a, b, h, l, k0 + j, &add)) sr[j] = -INFINITY;
          else sr[j] += add;
        }
      }
      float* pr = part + (int64_t)row * (D + 2);
      float* o = pr + 2;
      memset(o, 0, sizeof(float) * D);
      const float m = n > 0 ? max_row(sr, n) : -INFINITY;
      pr[0] = m;
      pr[1] = 0.f;
      if (m == -INFINITY) continue;
      pr[1] = exp_row(sr, n, m);
    }
    // o += p v, every row for each key row (v read once)
    for (int j = 0; j < n; ++j) {
      const float* vj = a.v + b * a.vs[0] + g * a.vs[1] + (int64_t)(k0 + j) * a.vs[2];
      for (int row = 0; row < rows; ++row) {
        float* pr = part + (int64_t)row * (D + 2);
        if (pr[0] == -INFINITY) continue;
        const float pj = S[(int64_t)row * n + j];
        if (pj != 0.f) axpy(pr + 2, pj, vj, D);
      }
    }
  }
}

// Tiled (prefill): a block of query positions (all r heads of key head g)
// against blocks of BK keys, online softmax, blocks past the causal limit skipped.
void tiled_body(const void* p, int lo, int hi) {
  const AttnCtx& c = *static_cast<const AttnCtx*>(p);
  const SdpaArgs& a = *c.a;
  const int D = a.D, r = c.r;
  for (int u = lo; u < hi; ++u) {
    const int qb = u % c.nqb, g = (u / c.nqb) % a.Hkv, b = u / (c.nqb * a.Hkv);
    const int p0 = qb * c.bp, np = imin(c.bp, a.Lq - p0);
    const int rows = r * np, rows4 = (rows + 3) / 4 * 4;
    float* Q = scratch(tb_q, (size_t)rows4 * D);
    float* O = scratch(tb_o, (size_t)rows4 * D);
    float* S = scratch(tb_s, (size_t)rows4 * BK);
    float* M = scratch(tb_ml, (size_t)rows4 * 2);
    float* Lsum = M + rows4;
    memset(O, 0, sizeof(float) * rows4 * D);
    for (int row = 0; row < rows4; ++row) {
      M[row] = -INFINITY;
      Lsum[row] = 0.f;
      float* qr = Q + (int64_t)row * D;
      if (row >= rows) {
        memset(qr, 0, sizeof(float) * D);
        continue;
      }
      const int hl = row / np, pl = row % np;
      const float* q = a.q + b * a.qs[0] + (int64_t)(g * r + hl) * a.qs[1] + (int64_t)(p0 + pl) * a.qs[2];
      for (int d = 0; d < D; ++d) qr[d] = q[d] * a.scale;
    }
    const int diag = a.Lk - a.Lq + p0;  // the first position's last visible key
    const int kmax = a.mask == MASK_CAUSAL ? imin(a.Lk, diag + np) : a.Lk;
    for (int kb = 0; kb < kmax; kb += BK) {
      const int bn = imin(BK, kmax - kb);
      // columns past bn are zero or keys past kmax: masked below either way
      const float* Kt = c.kt + (((int64_t)b * a.Hkv + g) * c.nkb + kb / BK) * D * BK;
      // S = Q Kt, 4 rows x 16 keys at a time
      for (int r0 = 0; r0 < rows4; r0 += 4) {
        const float* q0 = Q + (int64_t)r0 * D;
        for (int jc = 0; jc < BK; jc += 16) {
          __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps(), c10 = _mm256_setzero_ps(),
                 c11 = _mm256_setzero_ps(), c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps(),
                 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
          for (int d = 0; d < D; ++d) {
            const __m256 k0 = _mm256_loadu_ps(Kt + d * BK + jc), k1 = _mm256_loadu_ps(Kt + d * BK + jc + 8);
            __m256 qv = _mm256_broadcast_ss(q0 + d);
            c00 = _mm256_fmadd_ps(qv, k0, c00);
            c01 = _mm256_fmadd_ps(qv, k1, c01);
            qv = _mm256_broadcast_ss(q0 + D + d);
            c10 = _mm256_fmadd_ps(qv, k0, c10);
            c11 = _mm256_fmadd_ps(qv, k1, c11);
            qv = _mm256_broadcast_ss(q0 + 2 * D + d);
            c20 = _mm256_fmadd_ps(qv, k0, c20);
            c21 = _mm256_fmadd_ps(qv, k1, c21);
            qv = _mm256_broadcast_ss(q0 + 3 * D + d);
            c30 = _mm256_fmadd_ps(qv, k0, c30);
            c31 = _mm256_fmadd_ps(qv, k1, c31);
          }
          float* s0 = S + (int64_t)r0 * BK + jc;
          _mm256_storeu_ps(s0, c00);
          _mm256_storeu_ps(s0 + 8, c01);
          _mm256_storeu_ps(s0 + BK, c10);
          _mm256_storeu_ps(s0 + BK + 8, c11);
          _mm256_storeu_ps(s0 + 2 * BK, c20);
          _mm256_storeu_ps(s0 + 2 * BK + 8, c21);
          _mm256_storeu_ps(s0 + 3 * BK, c30);
          _mm256_storeu_ps(s0 + 3 * BK + 8, c31);
        }
      }
      // masks and the online softmax, row by row
      const bool crosses = a.mask == MASK_CAUSAL && kb + bn - 1 > diag;
      for (int row = 0; row < rows; ++row) {
        const int hl = row / np, pl = row % np, h = g * r + hl;
        float* sr = S + (int64_t)row * BK;
        if (crosses) {
          const int lim = diag + pl - kb;  // last visible j in this block
          for (int j = lim + 1 < 0 ? 0 : lim + 1; j < bn; ++j) sr[j] = -INFINITY;
        } else if (a.mask == MASK_BOOL || a.mask == MASK_ADD) {
          for (int j = 0; j < bn; ++j) {
            float add = 0.f;
            if (masked(a, b, h, p0 + pl, kb + j, &add)) sr[j] = -INFINITY;
            else sr[j] += add;
          }
        }
        const float mb = max_row(sr, bn);
        const float mnew = mb > M[row] ? mb : M[row];
        if (mnew == -INFINITY) {
          memset(sr, 0, sizeof(float) * BK);
          continue;
        }
        const float corr = M[row] == -INFINITY ? 0.f : expf(M[row] - mnew);
        const float sum = exp_row(sr, bn, mnew);
        for (int j = bn; j < BK; ++j) sr[j] = 0.f;  // no weight for the columns past bn
        Lsum[row] = Lsum[row] * corr + sum;
        M[row] = mnew;
        if (corr != 1.f) {
          float* o = O + (int64_t)row * D;
          const __m256 vc = _mm256_set1_ps(corr);
          for (int d = 0; d < D; d += 8) _mm256_storeu_ps(o + d, _mm256_mul_ps(_mm256_loadu_ps(o + d), vc));
        }
      }
      // O += P V, 4 rows x 16 dims at a time
      const float* vb = a.v + b * a.vs[0] + g * a.vs[1] + (int64_t)kb * a.vs[2];
      for (int r0 = 0; r0 < rows; r0 += 4) {
        const float* s0 = S + (int64_t)r0 * BK;
        for (int dc = 0; dc < D; dc += 16) {
          float* o0 = O + (int64_t)r0 * D + dc;
          __m256 c00 = _mm256_loadu_ps(o0), c01 = _mm256_loadu_ps(o0 + 8);
          __m256 c10 = _mm256_loadu_ps(o0 + D), c11 = _mm256_loadu_ps(o0 + D + 8);
          __m256 c20 = _mm256_loadu_ps(o0 + 2 * D), c21 = _mm256_loadu_ps(o0 + 2 * D + 8);
          __m256 c30 = _mm256_loadu_ps(o0 + 3 * D), c31 = _mm256_loadu_ps(o0 + 3 * D + 8);
          for (int j = 0; j < bn; ++j) {
            const float* vj = vb + (int64_t)j * a.vs[2] + dc;
            const __m256 v0 = _mm256_loadu_ps(vj), v1 = _mm256_loadu_ps(vj + 8);
            __m256 pv = _mm256_broadcast_ss(s0 + j);
            c00 = _mm256_fmadd_ps(pv, v0, c00);
            c01 = _mm256_fmadd_ps(pv, v1, c01);
            pv = _mm256_broadcast_ss(s0 + BK + j);
            c10 = _mm256_fmadd_ps(pv, v0, c10);
            c11 = _mm256_fmadd_ps(pv, v1, c11);
            pv = _mm256_broadcast_ss(s0 + 2 * BK + j);
            c20 = _mm256_fmadd_ps(pv, v0, c20);
            c21 = _mm256_fmadd_ps(pv, v1, c21);
            pv = _mm256_broadcast_ss(s0 + 3 * BK + j);
            c30 = _mm256_fmadd_ps(pv, v0, c30);
            c31 = _mm256_fmadd_ps(pv, v1, c31);
          }
          _mm256_storeu_ps(o0, c00);
          _mm256_storeu_ps(o0 + 8, c01);
          _mm256_storeu_ps(o0 + D, c10);
          _mm256_storeu_ps(o0 + D + 8, c11);
          _mm256_storeu_ps(o0 + 2 * D, c20);
          _mm256_storeu_ps(o0 + 2 * D + 8, c21);
          _mm256_storeu_ps(o0 + 3 * D, c30);
          _mm256_storeu_ps(o0 + 3 * D + 8, c31);
        }
      }
    }
    for (int row = 0; row < rows; ++row) {
      const int hl = row / np, pl = row % np;
      float* out = a.out + (((int64_t)b * a.Lq + p0 + pl) * a.Hq + g * r + hl) * D;
      const float* o = O + (int64_t)row * D;
      const float inv = Lsum[row] > 0.f ? 1.f / Lsum[row] : 0.f;
      for (int d = 0; d < D; ++d) out[d] = o[d] * inv;
    }
  }
}

}  // namespace

void rms_norm(const float* x, int64_t xs, const float* w, float* y, int rows, int D, float eps) {
  NormCtx c{x, w, y, xs, D, eps};
  const int nt = num_threads();
  if (nt == 1 || (int64_t)rows * D < (1 << 16)) {
    norm_body(&c, 0, rows);
    return;
  }
  parallel_for(norm_body, &c, rows, imax(1, rows / (nt * 4)));
}

void rope(const RopeArgs& a) {
  const int half = a.dims / 2;
  float* cs = static_cast<float*>(malloc(sizeof(float) * 2 * (size_t)a.L * (half > 0 ? half : 1)));
  RopeCtx c{&a, cs};
  const int rows = a.B * a.H * a.L, nt = num_threads();
  const bool big = nt > 1 && (int64_t)rows * a.D >= (1 << 16);
  if (big) parallel_for(rope_table_body, &c, a.L, imax(1, a.L / (nt * 4)));
  else rope_table_body(&c, 0, a.L);
  if (big) parallel_for(rope_body, &c, rows, imax(1, rows / (nt * 4)));
  else rope_body(&c, 0, rows);
  free(cs);
}

void sdpa(const SdpaArgs& a) {
  const int r = a.Hq / a.Hkv, nt = num_threads();
  AttnCtx c{&a, r, 1, a.Lk, nullptr, 1, 1, 1, nullptr};
  if (a.Lq <= 8) {
    // decode: split the keys when there are few (batch, key head) pairs for the threads
    const int base = a.B * a.Hkv;
    const int64_t work = (int64_t)base * r * a.Lq * a.Lk * a.D;
    int nsplit = 1;
    if (nt > 1 && work >= (1 << 17)) {
      const int want = (4 * nt + base - 1) / base, most = (a.Lk + 127) / 128;
      nsplit = imax(1, imin(want, most));
    }
    c.nsplit = nsplit;
    c.split_len = (a.Lk + nsplit - 1) / nsplit;
    const int rows = r * a.Lq, units = base * nsplit;
    c.part = static_cast<float*>(malloc(sizeof(float) * (size_t)units * rows * (a.D + 2)));
    if (nt == 1 || work < (1 << 17)) decode_body(&c, 0, units);
    else parallel_for(decode_body, &c, units, 1);
    // merge the splits
    for (int b = 0; b < a.B; ++b)
      for (int g = 0; g < a.Hkv; ++g)
        for (int row = 0; row < rows; ++row) {
          const int hl = row / a.Lq, l = row % a.Lq;
          float* out = a.out + (((int64_t)b * a.Lq + l) * a.Hq + g * r + hl) * a.D;
          const int64_t u0 = ((int64_t)b * a.Hkv + g) * nsplit;
          float mx = -INFINITY;
          for (int s = 0; s < nsplit; ++s) {
            const float m = c.part[((u0 + s) * rows + row) * (a.D + 2)];
            mx = m > mx ? m : mx;
          }
          memset(out, 0, sizeof(float) * a.D);
          if (mx == -INFINITY) continue;
          float lsum = 0.f;
          for (int s = 0; s < nsplit; ++s) {
            const float* pr = c.part + ((u0 + s) * rows + row) * (a.D + 2);
            if (pr[0] == -INFINITY) continue;
            const float wgt = expf(pr[0] - mx);
            lsum += wgt * pr[1];
            for (int d = 0; d < a.D; ++d) out[d] += wgt * pr[2 + d];
          }
          const float inv = lsum > 0.f ? 1.f / lsum : 0.f;
          for (int d = 0; d < a.D; ++d) out[d] *= inv;
        }
    free(c.part);
    return;
  }
  c.bp = imax(1, (64 + r - 1) / r);
  c.nqb = (a.Lq + c.bp - 1) / c.bp;
  c.nkb = (a.Lk + BK - 1) / BK;
  const int kunits = a.B * a.Hkv * c.nkb, units = a.B * a.Hkv * c.nqb;
  c.kt = static_cast<float*>(malloc(sizeof(float) * (size_t)kunits * a.D * BK));
  if (nt == 1 || kunits < 4) kt_body(&c, 0, kunits);
  else parallel_for(kt_body, &c, kunits, imax(1, kunits / (nt * 4)));
  if (nt == 1 || units == 1) tiled_body(&c, 0, units);
  else parallel_for(tiled_body, &c, units, 1);
  free(c.kt);
}

}  // namespace fk
}  // namespace mlxl

// One-input-row (decode) streaming of the native kernels without MLX, on one
// thread, timed in thread CPU time (a loaded, shared machine preempts wall
// clock): many copies of a 4-bit layer ("cold": they stream from RAM) and one
// copy repeated ("hot": in cache), 4 weight rows side by side (R=4) against one
// at a time (R=1, what rows_impl does for M=1), interleaved, medians.
//   g++ -O3 -mavx2 -mfma -mf16c -Icsrc/native benchmarks/native_stream.cpp -o /tmp/native_stream
//   /tmp/native_stream K N [exact|int8] [f32|f16|bf16] [G] [reps]
#define KNS bench
#include "kernels_impl.inc"

#include <time.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

using namespace mlxl;

static double cpu_now() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

template <typename ST, int G, bool INT8, int R>
static void layer(const Args& a) {
  int n = 0;
  for (; n + R <= a.N; n += R) bench::block_rows<ST, G, 4, INT8, R>(a, n, 0);
  for (; n < a.N; ++n) bench::block_rows<ST, G, 4, INT8, 1>(a, n, 0);
}

template <typename ST, int G, bool INT8>
static void run(Args a, int reps, const char* what) {
  const int K = a.K, N = a.N, ss = a.stype == ST_F32 ? 4 : 2;
  const size_t wb = (size_t)N * K / 2, sb = (size_t)N * (K / G) * ss, per = wb + 2 * sb;
  const int copies = (int)(160e6 / per) + 2;  // 160 MB: 5x the L3
  std::vector<std::vector<uint8_t>> W(copies), S(copies), B(copies);
  for (int c = 0; c < copies; ++c) {
    W[c].resize(wb);
    S[c].resize(sb);
    B[c].resize(sb);
    for (auto& v : W[c]) v = (uint8_t)rand();
    for (size_t i = 0; i < sb; i += ss) {  // 1.0 in each format
      if (ss == 4) memcpy(&S[c][i], "\0\0\x80\x3f", 4);
      else memcpy(&S[c][i], a.stype == ST_F16 ? "\0\x3c" : "\x80\x3f", 2);
      memcpy(&B[c][i], &S[c][i], ss);
    }
  }
  void (*fns[2])(const Args&) = {layer<ST, G, INT8, 4>, layer<ST, G, INT8, 1>};
  std::vector<double> t[2][2];  // [R=4, R=1][cold, hot]
  for (int rep = 0; rep < reps; ++rep)
    for (int f = 0; f < 2; ++f)
      for (int hot = 0; hot < 2; ++hot) {
        const double t0 = cpu_now();
        for (int c = 0; c < copies; ++c) {
          const int cc = hot ? 0 : c;
          a.w = W[cc].data();
          a.scales = S[cc].data();
          a.biases = B[cc].data();
          fns[f](a);
        }
        t[f][hot].push_back((cpu_now() - t0) / copies);
      }
  printf("%s %dx%d %s G%d:", INT8 ? "int8" : "exact", K, N, what, G);
  for (int f = 0; f < 2; ++f)
    for (int hot = 0; hot < 2; ++hot) {
      std::sort(t[f][hot].begin(), t[f][hot].end());
      const double m = t[f][hot][t[f][hot].size() / 2];
      printf("  R=%d %s %.1f us %.2f GB/s", f ? 1 : 4, hot ? "hot" : "cold", m * 1e6, per / m / 1e9);
    }
  printf("\n");
}

template <typename ST, bool INT8>
static void by_g(const Args& a, int G, int reps, const char* what) {
  if (G == 32) run<ST, 32, INT8>(a, reps, what);
  else if (G == 64) run<ST, 64, INT8>(a, reps, what);
  else run<ST, 128, INT8>(a, reps, what);
}

int main(int argc, char** argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s K N [exact|int8] [f32|f16|bf16] [G] [reps]\n", argv[0]);
    return 2;
  }
  const int K = atoi(argv[1]), N = atoi(argv[2]);
  const bool int8 = argc > 3 && strcmp(argv[3], "int8") == 0;
  const char* st = argc > 4 ? argv[4] : "bf16";
  const int G = argc > 5 ? atoi(argv[5]) : 64, reps = argc > 6 ? atoi(argv[6]) : 9;
  std::vector<int8_t> xq(K, 1);
  std::vector<float> dv(K / 8, 1.f), xf(K, 1.f), xs(K / G, 1.f), y(N);
  Args a{};
  a.stype = strcmp(st, "f32") == 0 ? ST_F32 : strcmp(st, "f16") == 0 ? ST_F16 : ST_BF16;
  a.bits = 4;
  a.N = N;
  a.K = K;
  a.G = G;
  a.M = 1;
  a.xq = xq.data();
  a.dvec = dv.data();
  a.xf = xf.data();
  a.xsum = xs.data();
  a.y = y.data();
  a.pf = 512;
  if (a.stype == ST_F32) int8 ? by_g<float, true>(a, G, reps, st) : by_g<float, false>(a, G, reps, st);
  else if (a.stype == ST_F16) int8 ? by_g<bench::f16_tag, true>(a, G, reps, st) : by_g<bench::f16_tag, false>(a, G, reps, st);
  else int8 ? by_g<bench::bf16_tag, true>(a, G, reps, st) : by_g<bench::bf16_tag, false>(a, G, reps, st);
  return 0;
}

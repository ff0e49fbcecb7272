// Shared declarations of the per-instruction-set kernel translation units.
// Free of std:: templates on purpose: each kernel TU is compiled with different
// -m flags, and inline code emitted in several TUs with different ISAs is an ODR
// hazard (the linker may keep the AVX-512 copy); each TU puts its code in its
// own namespace (KNS).
#pragma once
#include <stdint.h>

namespace mlxl {

enum ScaleType : int { ST_F32 = 0, ST_BF16 = 1, ST_F16 = 2 };

struct Args {
  const uint8_t* w;    // [N, K*bits/8] bytes (MLX uint32 [N, K*bits/32], little endian)
  const void* scales;  // [N, K/G] of ScaleType
  const void* biases;  // [N, K/G] of ScaleType
  int stype;           // ScaleType
  int bits;            // 4, 5 or 8
  int N, K, G, M;
  // prepared activations, M rows of each (see prep_x in qmatmul.cpp)
  const int8_t* xq;    // [M, K] int8; 4 bits: per 64-block the 32 evens then the 32 odds
  const float* dvec;   // [M, K/8]: per 64-block 8 floats, d(first 32) x4, d(last 32) x4
  const float* xf;     // [M, K] float; 4 bits: per 64-block [p][j] = x[8j+p]; 8 bits: as is
  const float* xsum;   // [M, K/G] group sums of x (int8 mode: of the quantized x)
  float* y;            // [M, N]
  int pf;              // software prefetch distance in bytes (0 = off)
};

// Compute output columns [n0, n1) of y for all M rows.
typedef void (*RowsFn)(const Args&, int n0, int n1);

// AVX2 + FMA + F16C (x86-64-v3): int8 activations and exact float32
void rows_int8_avx2(const Args&, int, int);
void rows_f32_avx2(const Args&, int, int);
// AVX2 + AVX512-VNNI (256-bit vpdpbusd through AVX512VL)
void rows_int8_avx512vnni(const Args&, int, int);
// AVX-VNNI (VEX-encoded vpdpbusd, Alder Lake / Zen 5)
void rows_int8_avxvnni(const Args&, int, int);

}  // namespace mlxl

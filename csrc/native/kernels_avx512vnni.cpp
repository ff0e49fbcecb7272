// compiled with -mavx2 -mfma -mf16c -mavx512f -mavx512bw -mavx512vl -mavx512vnni
#define KNS mlxl_avx512vnni
#define MLXL_DOT _mm256_dpbusd_epi32
#define MLXL_INT8_ONLY 1
#include "kernels_impl.inc"
namespace mlxl {
void rows_int8_avx512vnni(const Args& a, int n0, int n1) { KNS::rows_dispatch<true>(a, n0, n1); }
}  // namespace mlxl

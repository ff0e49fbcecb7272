// compiled with -mavx2 -mfma -mf16c -mavxvnni
#define KNS mlxl_avxvnni
#define MLXL_DOT _mm256_dpbusd_avx_epi32
#define MLXL_INT8_ONLY 1
#include "kernels_impl.inc"
namespace mlxl {
void rows_int8_avxvnni(const Args& a, int n0, int n1) { KNS::rows_dispatch<true>(a, n0, n1); }
}  // namespace mlxl

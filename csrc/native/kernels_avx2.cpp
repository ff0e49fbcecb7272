// compiled with -mavx2 -mfma -mf16c
#define KNS mlxl_avx2
#include "kernels_impl.inc"
namespace mlxl {
void rows_int8_avx2(const Args& a, int n0, int n1) { KNS::rows_dispatch<true>(a, n0, n1); }
void rows_f32_avx2(const Args& a, int n0, int n1) { KNS::rows_dispatch<false>(a, n0, n1); }
}  // namespace mlxl

// The nanobind module mlx_local._native_ext (loaded by mlx_local/_native.py only
// after checking that it was built for the running mlx and nanobind ABI).
#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <string>

#include "mlx/version.h"
#include "fused.h"
#include "pool.h"
#include "qmatmul.h"
#include "qmulti.h"

namespace nb = nanobind;
using namespace nb::literals;

NB_MODULE(_native_ext, m) {
  m.doc() = "mlx_local's native CPU kernels for MLX (Linux x86-64)";
  m.def("quantized_matmul", &mlxl::quantized_matmul, "x"_a, "w"_a, "scales"_a, "biases"_a, "group_size"_a, "bits"_a,
        "mode"_a = "int8", "isa"_a = "auto", "x @ dequantize(w).T for MLX affine quantized weights (CPU).");
  m.def("quantized_matmul_multi", &mlxl::quantized_matmul_multi, "x"_a, "w"_a, "scales"_a, "biases"_a, "bias"_a,
        "heads"_a, "group_size"_a, "bits"_a, "mode"_a = "int8", "isa"_a = "auto", "rope_dims"_a = 0,
        "rope_traditional"_a = false, "rope_base"_a.none() = nb::none(), "rope_scale"_a = 1.f, "rope_offset"_a = 0,
        "rope_freqs"_a.none() = nb::none(), "qk_norms"_a = std::vector<mlx::core::array>{},
        "norm_eps"_a = std::vector<float>{},
        "x @ dequantize(w[i]).T (+ bias[i]) for each i, one op; heads[i] > 0: [B, heads, L, D] outputs; "
        "rope_dims > 0: q and k (the first two) normed (qk_norms) and rotated as rope() (CPU).");
  m.def("quantized_swiglu", &mlxl::quantized_swiglu, "x"_a, "wg"_a, "sg"_a, "bg"_a, "wu"_a, "su"_a, "bu"_a,
        "group_size"_a, "bits"_a, "mode"_a = "int8", "isa"_a = "auto",
        "silu(x @ dequantize(wg).T) * (x @ dequantize(wu).T), one op (CPU).");
  m.def("quantized_matmul_residual", &mlxl::quantized_matmul_residual, "x"_a, "w"_a, "scales"_a, "biases"_a,
        "residual"_a, "norm_weight"_a.none(), "eps"_a, "group_size"_a, "bits"_a, "mode"_a = "int8", "isa"_a = "auto",
        "[residual + x @ dequantize(w).T] and with norm_weight also its rms_norm, one op (CPU).");
  m.def("cpu_supported", &mlxl::cpu_supported, "True if this CPU has AVX2, FMA and F16C.");
  m.def("best_isa", &mlxl::best_isa, "The instruction set of the int8 kernels with isa='auto'.");
  m.def("available_isas", &mlxl::available_isas, "The kernels' instruction sets this CPU runs.");
  m.def("num_threads", &mlxl::num_threads, "Threads the kernels use.");
  m.def("pool_size", &mlxl::pool_size, "Threads in the pool (MLX_LOCAL_NATIVE_THREADS or physical cores).");
  m.def("set_num_threads", &mlxl::set_num_threads, "n"_a, "Use n threads (1 .. pool_size()).");
  m.def("rms_norm", &mlxl::rms_norm, "x"_a, "weight"_a, "eps"_a, "As mx.fast.rms_norm, one fused op (CPU).");
  m.def("rope", &mlxl::rope, "x"_a, "dims"_a, "traditional"_a, "base"_a.none(), "scale"_a, "offset"_a,
        "freqs"_a.none() = nb::none(), "As mx.fast.rope with an integer offset, one fused op (CPU).");
  m.def("sdpa", &mlxl::sdpa, "q"_a, "k"_a, "v"_a, "scale"_a, "causal"_a = false, "mask"_a.none() = nb::none(),
        "flat"_a = false, "As mx.fast.scaled_dot_product_attention, tiled, one fused op (CPU); flat: [B, L, H * D].");
  // the mlx headers this module was compiled against (the loader also checks the build record)
  m.attr("BUILT_FOR_MLX") = std::to_string(MLX_VERSION_MAJOR) + "." + std::to_string(MLX_VERSION_MINOR) + "." +
                            std::to_string(MLX_VERSION_PATCH);
}

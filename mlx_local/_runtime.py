"""Which device, which compute dtype and which BLAS this process uses.

Importing :mod:`mlx_local` calls :func:`prepare` before anything imports MLX,
because that is the only moment a faster BLAS can still be put under MLX's CPU
backend: the Linux wheel bundles the slow reference BLAS, and an optimised one
(Debian's ``libopenblas0-pthread``) loaded into the global symbol scope first
takes its place. Measured here on a 2048x2048 float32 matmul: 4.1 s with the
bundled BLAS, 0.1 s with OpenBLAS. Loaded after MLX it has no effect.

Environment:
    MLX_LOCAL_BLAS: a path to a CBLAS shared library to load instead of the
        one found on the system, or ``off`` to keep MLX's own.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from dataclasses import dataclass

__all__ = ["Runtime", "prepare", "current"]

# Where Debian and Ubuntu put OpenBLAS; find_library finds it only when the
# unversioned libopenblas.so (the -dev package) or ldconfig knows of it.
_OPENBLAS_CANDIDATES = (
    "libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
)

_blas: str | None = None  # what prepare() settled on


def _load_blas() -> str:
    """Load an optimised CBLAS globally if we can; say what MLX will use."""
    if sys.platform == "darwin":
        return "Accelerate"
    wanted = os.environ.get("MLX_LOCAL_BLAS", "").strip()
    if wanted.lower() in ("off", "none", "0", "reference"):
        return "MLX's bundled reference BLAS (MLX_LOCAL_BLAS=off)"
    if "mlx.core" in sys.modules:
        return (
            "MLX's bundled reference BLAS (mlx was imported before mlx_local; "
            "import mlx_local first to get OpenBLAS)"
        )
    candidates = [wanted] if wanted else list(_OPENBLAS_CANDIDATES)
    found = ctypes.util.find_library("openblas")
    if found and not wanted:
        candidates.insert(0, found)
    for name in candidates:
        try:
            ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        return f"OpenBLAS ({name})"
    if wanted:
        return f"MLX's bundled reference BLAS (MLX_LOCAL_BLAS={wanted} could not be loaded)"
    return (
        "MLX's bundled reference BLAS (slow; install OpenBLAS, e.g. "
        "`apt-get install libopenblas0-pthread`, for ~20x faster matmuls)"
    )


def prepare() -> None:
    """Choose the BLAS before MLX is imported. Safe to call more than once."""
    global _blas
    if _blas is None:
        _blas = _load_blas()
        # mlx-lm uses transformers only for tokenizers; its "PyTorch was not
        # found" advice is noise for our users. Only advisory warnings go.
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
        # Nothing leaves the machine unasked: huggingface_hub otherwise sends
        # telemetry, and asks huggingface.co for its agent list even when
        # only reading the local cache. (Set it to 0 to opt back in.)
        os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@dataclass(frozen=True)
class Runtime:
    """What this process runs on.

    Attributes:
        backend: ``"metal"``, ``"cuda"`` or ``"cpu"``.
        device: the MLX device name, ``"gpu"`` or ``"cpu"``.
        processor: the chip or CPU name.
        blas: the BLAS behind CPU matmuls (only meaningful on ``"cpu"``).
    """

    backend: str
    device: str
    processor: str
    blas: str

    @property
    def on_gpu(self) -> bool:
        return self.device == "gpu"

    def compute_dtype(self, model_dtype: str) -> str:
        """The dtype to compute in for a model stored in ``model_dtype``.

        On a GPU, the model's own dtype. On the CPU always float32: MLX's CPU
        backend emulates float16/bfloat16 arithmetic in software (the Linux
        wheel is built without AVX), so a 4-bit matmul with float32 activations
        and scales runs about 8x faster than with bfloat16.
        """
        return model_dtype if self.on_gpu else "float32"


def current() -> Runtime:
    """The runtime of this process (MLX is imported if it was not yet)."""
    prepare()
    import mlx.core as mx

    if mx.metal.is_available():
        backend = "metal"
    elif hasattr(mx, "cuda") and mx.cuda.is_available():
        backend = "cuda"
    else:
        backend = "cpu"
    device = "gpu" if mx.default_device().type == mx.gpu else "cpu"
    try:
        info = mx.device_info()
        processor = str(info.get("device_name") or info.get("architecture") or "unknown")
    except Exception:  # older MLX without device_info
        processor = "unknown"
    blas = _blas or "unknown"
    return Runtime(backend=backend, device=device, processor=processor, blas=blas)

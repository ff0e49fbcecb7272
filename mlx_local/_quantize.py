"""Quantizing and dequantizing model folders with mlx-lm, and writing the result.

Quantization is mlx-lm's own (``quantize_model``, affine; the per-layer rules
of a recipe come from :func:`mlx_local._recipes.predicate`); nothing is
reimplemented here. Everything is lazy until a folder is written.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path
from typing import Any, Iterator

from ._recipes import Plan, predicate
from ._report import Candidate
from .errors import InvalidModelError

__all__ = ["build", "candidate", "dequantize", "load_lazy", "quiet"]

@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Swallow mlx-lm's "[INFO] ..." prints: the library prints nothing."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def load_lazy(folder: Path) -> tuple[Any, dict[str, Any]]:
    from mlx_lm.utils import load_model

    try:
        with quiet():
            module, config = load_model(folder, lazy=True)
            return module, dict(config)
    except (ValueError, KeyError, TypeError, RuntimeError, FileNotFoundError) as e:
        raise InvalidModelError(
            f"{folder}: mlx-lm could not build the model from this folder ({e}). "
            "Download or convert it again.",
            path=str(folder),
        ) from e


def _cast(module: Any, dtype: str) -> None:
    """Cast floating parameters to ``dtype``, respecting the model's own exceptions (as mlx_lm.convert)."""
    import mlx.core as mx
    from mlx.utils import tree_map_with_path

    target = getattr(mx, dtype)
    keep = getattr(module, "cast_predicate", lambda _: True)

    def cast(k: str, v: Any) -> Any:
        return v.astype(target) if keep(k) and mx.issubdtype(v.dtype, mx.floating) else v

    module.update(tree_map_with_path(cast, module.parameters()))


def _quantized(plan: Plan, float_folder: Path, source: str) -> tuple[Any, dict[str, Any]]:
    """The source model, cast and (lazily) quantized as ``plan`` says; nothing is computed yet."""
    from mlx_lm.utils import quantize_model

    module, config = load_lazy(float_folder)
    _cast(module, plan.dtype)
    if plan.bits is not None:
        with quiet():
            module, config = quantize_model(
                module,
                config,
                plan.group_size,
                plan.bits,
                mode="affine",
                quant_predicate=predicate(plan, module, source),
            )
    config["torch_dtype"] = plan.dtype  # what Model.load computes in on a GPU
    if "dtype" in config:
        config["dtype"] = plan.dtype
    return module, config


def _measure(module: Any) -> tuple[int, int, float]:
    """Bytes, parameters and bits per weight of a (possibly lazy) model."""
    from mlx.utils import tree_flatten
    from mlx_lm.utils import get_total_parameters

    nbytes = sum(v.nbytes for _, v in tree_flatten(module.parameters()))
    params = int(get_total_parameters(module))
    return int(nbytes), params, nbytes * 8 / max(params, 1)


def candidate(plan: Plan, float_folder: Path, source: str) -> Candidate:
    module, _ = _quantized(plan, float_folder, source)
    nbytes, _, bpw = _measure(module)
    return Candidate(plan.label, plan.bits, plan.group_size, plan.recipe, nbytes, bpw)


# Files of a model folder that are not weights or config and go with the model
# as they are: tokenizer, chat template, generation config, model card,
# licence, custom model code. (Not copied: weights in any format, config.json,
# the weight index, our own mlx_local.json, and the quantization settings of
# other formats, which loaders would apply to the new weights.)
_SIDE_FILES = ("*.json", "*.jinja", "*.txt", "*.model", "*.tiktoken", "tokenizer*", "*.py", "*.md", "LICENSE*")
_NOT_SIDE_FILES = {
    "config.json",
    "model.safetensors.index.json",
    "mlx_local.json",
    "quantize_config.json",
    "hf_quant_config.json",
}


def _save(module: Any, config: dict[str, Any], source_folder: Path, out: Path) -> None:
    """Write an MLX model folder: mlx-lm writes weights and config; the rest is copied from the source.

    (mlx-lm's own ``save`` would load the tokenizer only to write it back,
    slow for 256k-token vocabularies, and replace the model card with an
    empty one.)
    """
    from mlx_lm.utils import save_config, save_model

    save_model(out, module, donate_model=True)
    save_config(config, config_path=out / "config.json", keep_vision_config="vision_tower" in getattr(module, "model", {}))
    for f in sorted(source_folder.iterdir()):
        if f.is_file() and f.name not in _NOT_SIDE_FILES and any(f.match(p) for p in _SIDE_FILES):
            shutil.copyfile(f, out / f.name)


def build(plan: Plan, float_folder: Path, out: Path, source: str) -> tuple[int, int, float]:
    """Write the converted model to ``out``; return its bytes, parameters and bits per weight."""
    module, config = _quantized(plan, float_folder, source)
    measured = _measure(module)
    _save(module, config, float_folder, out)
    return measured


def dequantize(folder: Path, out: Path) -> None:
    """Write the float version of the quantized model in ``folder`` to ``out``."""
    from mlx_lm.utils import dequantize_model

    module, config = load_lazy(folder)
    module = dequantize_model(module)
    config.pop("quantization", None)
    config.pop("quantization_config", None)
    _save(module, config, folder, out)

"""A local model folder (Hugging Face or MLX layout) to a ready mlx-lm model.

mlx-lm does the real work (architectures, weight sanitising, quantized
layers, tokenizer and streaming detokenizer). This module checks the folder
first, so that a broken model fails with an error naming the file at fault
instead of a traceback from deep inside, and then moves the weights to the
compute dtype the runtime chose.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import InvalidModelError, ModelNotFoundError, UnsupportedArchitectureError

__all__ = ["LoadedFolder", "load_folder", "read_config", "check_safetensors", "check_weights"]

_DTYPES = ("float32", "float16", "bfloat16")


@dataclass
class LoadedFolder:
    module: Any  # mlx.nn.Module
    tokenizer: Any  # mlx_lm TokenizerWrapper
    config: dict[str, Any]
    generation_config: dict[str, Any]
    model_dtype: str


def _read_json(file: Path, what: str) -> Any:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidModelError(
            f"{file} is not valid JSON ({e}); the {what} is damaged. "
            "Download or convert the model again.",
            path=str(file),
        ) from e


def read_config(folder: Path) -> dict[str, Any]:
    """The folder's config.json, checked for the keys every model needs."""
    file = folder / "config.json"
    if not file.is_file():
        raise InvalidModelError(
            f"{folder} has no config.json, so it is not a model folder. Point to the folder "
            "that holds config.json and the *.safetensors files (or to a .gguf file).",
            path=str(folder),
        )
    config = _read_json(file, "model configuration")
    if not isinstance(config, dict):
        raise InvalidModelError(f"{file} holds {type(config).__name__}, not a JSON object.", path=str(file))
    if "model_type" not in config:
        raise InvalidModelError(
            f"{file} has no 'model_type', so the architecture is unknown. "
            "Is this a transformers/MLX model folder?",
            path=str(file),
        )
    return config


def check_safetensors(file: Path) -> int:
    """Check that a safetensors file is whole; return its header's data size.

    Reads only the header: its length, its JSON, and that every tensor's
    byte range lies inside the file, which catches truncated downloads.
    """
    size = file.stat().st_size
    try:
        with open(file, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8 or n > 100_000_000:
                raise ValueError("header length exceeds the file")
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (struct.error, ValueError, KeyError, TypeError, IndexError) as e:
        raise InvalidModelError(
            f"{file} is not a valid safetensors file ({e}). Download or convert the model again.",
            path=str(file),
        ) from e
    if 8 + n + end > size:
        raise InvalidModelError(
            f"{file} is truncated: its header describes {8 + n + end} bytes but the file has {size}. "
            "Download or convert the model again.",
            path=str(file),
        )
    return int(end)


def check_weights(folder: Path) -> None:
    files = sorted(folder.glob("model*.safetensors"))
    if not files:
        other = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".gguf"))
        hint = (
            f" It has {', '.join(other[:3])}: only safetensors weights are supported in a folder"
            " (pass a .gguf file directly)."
            if other
            else ""
        )
        raise InvalidModelError(f"{folder} has no model*.safetensors weight files.{hint}", path=str(folder))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        data = _read_json(index, "weight index")
        wanted = set((data.get("weight_map") or {}).values()) if isinstance(data, dict) else set()
        missing = sorted(w for w in wanted if not (folder / w).is_file())
        if missing:
            raise InvalidModelError(
                f"{folder} is incomplete: {index.name} lists {', '.join(missing[:3])} which "
                "is not there. Finish the download.",
                path=str(folder),
            )
    for f in files:
        check_safetensors(f)


def _model_classes(config: dict[str, Any], folder: Path) -> None:
    from mlx_lm.utils import _get_classes

    try:
        _get_classes(config)
    except ValueError as e:
        raise UnsupportedArchitectureError(
            f"{folder}: architecture {config['model_type']!r} is not supported by mlx-lm "
            "(upgrade mlx-lm, or pick a model of a supported family).",
            path=str(folder),
            architecture=str(config["model_type"]),
        ) from e


def model_dtype(config: dict[str, Any]) -> str:
    """The dtype the model was trained/stored in, as a string."""
    for cfg in (config, config.get("text_config") or {}):
        d = cfg.get("torch_dtype") or cfg.get("dtype")
        if d in _DTYPES:
            return str(d)
    return "float16"


def load_folder(folder: Path, *, dtype: str, prepare: Callable[[Any], None] | None = None) -> LoadedFolder:
    """Load the model in ``folder`` and cast its floating-point weights to ``dtype``.

    ``prepare(module)`` runs on the lazily loaded module before any weight
    is read (a distributed load shards it there).

    Raises:
        ModelNotFoundError: the folder does not exist.
        InvalidModelError / UnsupportedArchitectureError: see :mod:`mlx_local.errors`.
    """
    import mlx.core as mx
    from mlx_lm.tokenizer_utils import load as load_tokenizer
    from mlx_lm.utils import _tokenizer_defaults, load_model

    if not folder.exists():
        raise ModelNotFoundError(f"No such model folder: {folder}", source=str(folder))
    config = read_config(folder)
    _model_classes(config, folder)
    check_weights(folder)

    try:
        module, config = load_model(folder, lazy=True)
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise InvalidModelError(
            f"{folder}: the weights do not fit the {config['model_type']!r} architecture "
            f"described by config.json ({e}). The folder is inconsistent: download or convert it again.",
            path=str(folder),
        ) from e

    if prepare is not None:
        prepare(module)
    stored = model_dtype(config)
    module.set_dtype(getattr(mx, dtype))
    try:
        mx.eval(module.parameters())
    except (ValueError, RuntimeError) as e:
        raise InvalidModelError(f"{folder}: could not read the weights ({e}).", path=str(folder)) from e

    try:
        tokenizer = load_tokenizer(
            folder, eos_token_ids=config.get("eos_token_id"), defaults=_tokenizer_defaults(folder)
        )
    except Exception as e:  # tokenizers/transformers raise many kinds
        raise InvalidModelError(
            f"{folder}: the tokenizer would not load ({type(e).__name__}: {e}). "
            "Check tokenizer.json / tokenizer_config.json, or download them again.",
            path=str(folder),
        ) from e

    gen_file = folder / "generation_config.json"
    generation_config = _read_json(gen_file, "generation config") if gen_file.is_file() else {}
    if not isinstance(generation_config, dict):
        generation_config = {}
    return LoadedFolder(module, tokenizer, config, generation_config, stored)

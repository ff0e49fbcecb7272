"""Which tensors a model has and their sizes, without loading a weight.

From the safetensors headers of a local folder, the header of a GGUF file, the
hub's safetensors metadata (a few kilobytes of HTTP range requests) for a repo
not downloaded yet, or, offline, the catalog's parameter count.
:func:`weight_bytes` sizes them as they will sit in memory.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ._catalog import CatalogEntry

__all__ = ["Weight", "quantizable", "text_config", "weight_bytes", "weights_of"]

_SAFETENSORS_FLOAT = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
# Weights mlx-lm drops when it loads a text model.
_DROPPED = re.compile(r"(vision_tower|vision_model|multi_modal_projector|(^|\.)visual\.|audio_tower|(^|\.)mtp\.|rotary_emb\.inv_freq)")


@dataclass(frozen=True)
class Weight:
    """One tensor of a model, as its header describes it."""

    name: str
    shape: tuple[int, ...]  # logical (unpacked) shape
    bits: int | None  # None: floating point
    group_size: int | None = None
    other_bytes: int = 0  # non-float, non-quantized tensors: their stored size

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def quantizable(w: Weight, group_size: int) -> bool:
    """Whether ``convert`` would quantize ``w`` with groups of ``group_size``."""
    return (
        len(w.shape) == 2
        and w.name.endswith(".weight")
        and "norm" not in w.name
        and w.shape[-1] % group_size == 0
    )


def weight_bytes(weights: Iterable[Weight], dtype_bytes: int, bits: int | None, group_size: int) -> int:
    """Bytes of ``weights`` in memory, floats at ``dtype_bytes``; quantized to ``bits`` if given."""
    total = 0
    for w in weights:
        b, g = w.bits, w.group_size
        if bits is not None and (b is not None or quantizable(w, group_size)):
            b, g = bits, group_size
        if w.other_bytes:
            total += w.other_bytes
        elif b is None:
            total += w.numel * dtype_bytes
        else:
            total += w.numel * b // 8 + 2 * (w.numel // (g or group_size)) * dtype_bytes
    return total


def _layer_bits(config: dict[str, Any], prefix: str) -> tuple[int, int]:
    q = config.get("quantization") or config.get("quantization_config") or {}
    own = q.get(prefix)
    if isinstance(own, dict):
        return int(own["bits"]), int(own.get("group_size", q.get("group_size", 64)))
    return int(q.get("bits", 4)), int(q.get("group_size", 64))


def from_header(header: dict[str, Any], config: dict[str, Any]) -> list[Weight]:
    """Weights from safetensors header entries ``{name: {"dtype", "shape"}}`` (MLX or HF layout)."""
    tied = bool(text_config(config).get("tie_word_embeddings", config.get("tie_word_embeddings", False)))
    out = []
    for name, info in header.items():
        if name == "__metadata__" or _DROPPED.search(name) or (tied and name.endswith("lm_head.weight")):
            continue
        dtype, shape = info["dtype"], tuple(int(d) for d in info["shape"])
        prefix = name.rsplit(".", 1)[0]
        if name.endswith((".scales", ".biases")) and f"{prefix}.weight" in header and header[f"{prefix}.weight"]["dtype"] == "U32":
            continue  # counted with their weight
        if dtype == "U32" and name.endswith(".weight") and f"{prefix}.scales" in header:
            bits, group = _layer_bits(config, prefix)
            out.append(Weight(name, (*shape[:-1], shape[-1] * 32 // bits), bits, group))
        elif dtype in _SAFETENSORS_FLOAT:
            out.append(Weight(name, shape, None))
        else:
            out.append(Weight(name, shape, None, other_bytes=math.prod(shape) * _int_bytes(dtype)))
    return out


def _int_bytes(dtype: str) -> int:
    digits = "".join(c for c in dtype if c.isdigit())
    return max(1, int(digits) // 8) if digits else 1


def _read_header(file: Path) -> dict[str, Any]:
    import json
    import struct

    with open(file, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return dict(json.loads(f.read(n)))


def _folder_weights(folder: Path) -> tuple[dict[str, Any], list[Weight]]:
    from ._loading import check_weights, read_config

    config = read_config(folder)
    check_weights(folder)  # present, whole, and consistent with the index
    header: dict[str, Any] = {}
    for f in sorted(folder.glob("model*.safetensors")):
        header.update(_read_header(f))
    return config, from_header(header, config)


def _gguf_weights(path: Path, gguf_weights: str) -> tuple[dict[str, Any], list[Weight]]:
    from ._gguf_import import planned_weights
    from ._gguf_quants import GROUP_SIZE

    config, planned = planned_weights(path, gguf_weights)
    tied = config.get("tie_word_embeddings", False)
    return config, [
        Weight(name, shape, bits, GROUP_SIZE if bits else None)
        for name, shape, bits in planned
        if not (tied and name.endswith("lm_head.weight"))
    ]


def _hub_weights(repo: str, revision: str | None) -> tuple[dict[str, Any], list[Weight]]:
    """Weights from the hub's metadata: config.json and the safetensors headers (range requests)."""
    from huggingface_hub import HfApi

    from ._hub import hub_errors

    api = HfApi()
    with hub_errors(repo, revision):
        api.model_info(repo, revision=revision, timeout=10)  # fails fast when the hub is out of reach
        config_file = Path(api.hf_hub_download(repo, "config.json", revision=revision, etag_timeout=5))
        meta = api.get_safetensors_metadata(repo, revision=revision)
    from ._loading import read_config

    config = read_config(config_file.parent)  # checked: JSON, an object, with a model_type
    header = {
        name: {"dtype": t.dtype, "shape": t.shape}
        for file in meta.files_metadata.values()
        for name, t in file.tensors.items()
    }
    return config, from_header(header, config)


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config with a multimodal model's ``text_config`` merged in."""
    text = config.get("text_config")
    return {**config, **text} if isinstance(text, dict) else config


def _catalog_weights(entry: CatalogEntry, quantized: bool) -> tuple[dict[str, Any], list[Weight]]:
    """Weights from the catalog's parameter count: the embedding and the rest, 4-bit or float."""
    arch = dict(entry.architecture)
    hidden, vocab = int(arch.get("hidden_size") or 0), int(arch.get("vocab_size") or 0)
    body = max(0, entry.parameters - vocab * hidden)
    bits = 4 if quantized and entry.mlx_4bit_repo else None
    group = 64 if bits else None
    return arch, [Weight("model.embed_tokens.weight", (vocab, hidden), bits, group),
                  Weight("model.layers.weight", (1, body), bits, group)]


def weights_of(located: Any, revision: str | None, offline: bool, gguf_weights: str) -> tuple[dict[str, Any], list[Weight], str]:
    """The config, the weights and where their sizes came from, for a located source."""
    from . import _hub as hub
    from .errors import ModelNotFoundError

    if located.kind in ("default", "gguf"):
        return (*_gguf_weights(located.path, gguf_weights), "the GGUF header")
    if located.kind == "folder":
        return (*_folder_weights(located.path), "safetensors headers")
    folder = hub.cached_folder(located.repo, revision=revision)
    if folder is not None:
        return (*_folder_weights(folder), "safetensors headers (downloaded)")
    entry = located.entry
    from_catalog = entry is not None and revision is None and located.repo in entry.repos
    basis = "the catalog"
    if not offline:
        try:
            return (*_hub_weights(located.repo, revision), "the hub's safetensors metadata")
        except ModelNotFoundError:
            if not from_catalog:
                raise
        basis = "the catalog (hub out of reach)"
    if from_catalog:
        return (*_catalog_weights(entry, located.repo == entry.mlx_4bit_repo), basis)
    raise ModelNotFoundError(
        f"{located.repo} is not downloaded and offline mode is on, so its size is unknown: "
        "estimate it once online, or download it first.",
        source=str(located.repo),
    )

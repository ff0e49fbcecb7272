"""GGUF files to MLX model folders.

A GGUF file holds weights in llama.cpp's layout and quant formats, plus the
tokenizer and chat template as metadata. :func:`import_gguf` turns one into an
ordinary MLX model folder (``config.json``, ``model.safetensors``, tokenizer
files and a provenance record ``mlx_local.json``) that ``Model.load`` and
``mlx_lm.load`` both open.

Weights:
    - Block formats that are MLX affine quantization in disguise (Q4_0, Q4_1,
      Q8_0, Q5_0, Q5_1, and the 32-weight sub-blocks of Q4_K and Q5_K) are
      repacked bit for bit: same bits, group size 32, no dequantize/requantize
      round trip (see :mod:`mlx_local._gguf_quants`).
    - Other quantized tensors (Q2_K, Q3_K, Q6_K, IQ*, ...) are dequantized with
      the ``gguf`` package and then, with ``weights="quantized"``, quantized
      again by MLX at a width that loses little more (4 bits for 2-3 bit
      formats, 8 bits for the rest), or kept in float32 with ``"exact"``.
    - ``weights="float"`` dequantizes everything to float32 instead (exact
      values, 4-8x the size; fastest to decode on a CPU).
    - F32/F16/BF16 tensors are kept as they are.
    - llama.cpp permutes the rows of the query and key projections of
      llama-family models (its rotary embedding pairs neighbouring rows); the
      permutation is undone here. Gemma stores norm weights as ``1 + w``; the
      1 is taken off again.

The importer is a pure function of the file and ``weights``, so imports are
cached under ``$MLX_LOCAL_HOME/imports`` and happen once per file.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ._assets import home
from ._fileio import sha256_of, staged_folder, storage_errors
from ._gguf_quants import EXACT_BITS, GROUP_SIZE, to_mlx_affine
from ._gguf_reader import Gguf, read_gguf
from ._version import __version__
from .errors import InvalidModelError, InvalidOptionError, ModelNotFoundError, UnsupportedArchitectureError

__all__ = ["WEIGHT_MODES", "import_gguf", "cached_import_folder", "planned_weights"]

#: How to import weights: see the module docstring.
WEIGHT_MODES = ("quantized", "exact", "float")

# Bump when the output of the importer changes, so cached imports are redone.
_IMPORTER_VERSION = 2

# GGUF architecture -> (mlx-lm model_type, undo q/k permutation, norms stored as 1+w)
_ARCHITECTURES: dict[str, tuple[str, bool, bool]] = {
    "llama": ("llama", True, False),  # also Mistral, SmolLM, Llama 3.x
    "mistral": ("llama", True, False),
    "qwen2": ("qwen2", False, False),
    "qwen3": ("qwen3", False, False),
    "gemma3": ("gemma3_text", False, True),
}

_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "attn_norm": "input_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "post_attention_norm": "post_attention_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
_TOP_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}

# Pre-tokenizers transformers' GGUF table does not know: the "smollm" /
# "starcoder" family splits every digit apart before byte-level BPE.
_DIGIT_SPLIT_PRE = {"smollm", "starcoder", "refact", "command-r"}



def _config(g: Gguf) -> dict[str, Any]:
    arch = g.architecture
    model_type = _ARCHITECTURES[arch][0]
    names = {t.name for t in g.tensors}
    heads = int(g.arch_key("attention.head_count"))
    hidden = int(g.arch_key("embedding_length"))
    embd = next(t for t in g.tensors if t.name == "token_embd.weight")
    config: dict[str, Any] = {
        "model_type": model_type,
        "hidden_size": hidden,
        "intermediate_size": int(g.arch_key("feed_forward_length")),
        "num_hidden_layers": int(g.arch_key("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(g.arch_key("attention.head_count_kv", heads)),
        "head_dim": int(g.arch_key("attention.key_length", hidden // heads)),
        "rms_norm_eps": float(g.arch_key("attention.layer_norm_rms_epsilon", 1e-6)),
        "vocab_size": int(embd.shape[1]),
        "max_position_embeddings": int(g.arch_key("context_length", 4096)),
        "tie_word_embeddings": "output.weight" not in names,
        "torch_dtype": "float16",
    }
    rope_theta = g.arch_key("rope.freq_base")
    if rope_theta is not None:
        config["rope_theta"] = float(rope_theta)
    scaling_type = g.arch_key("rope.scaling.type")
    if scaling_type == "linear":
        config["rope_scaling"] = {"rope_type": "linear", "factor": float(g.arch_key("rope.scaling.factor"))}
    elif scaling_type == "yarn":
        config["rope_scaling"] = {
            "rope_type": "yarn",
            "factor": float(g.arch_key("rope.scaling.factor")),
            "original_max_position_embeddings": int(g.arch_key("rope.scaling.original_context_length")),
        }
    if arch == "qwen2":
        config["attention_bias"] = "blk.0.attn_q.bias" in names
    if arch == "gemma3":
        # As llama.cpp: Gemma 3 27B (the only one with 62 layers) scales the
        # queries by hidden_size / heads (168), every other size by head_dim.
        layers = config["num_hidden_layers"]
        config["query_pre_attn_scalar"] = hidden // heads if layers == 62 else config["head_dim"]
        # One global layer in six with a local rope base of 10000, hard-coded
        # in llama.cpp too; a file without a window (a model converted with
        # sliding_window_pattern 1) has global attention in every layer.
        window = int(g.arch_key("attention.sliding_window", 0) or 0)
        config["sliding_window"] = window if window > 0 else config["max_position_embeddings"]
        config["sliding_window_pattern"] = 6 if window > 0 else 1
        config["rope_local_base_freq"] = 10000.0
    return config


def _checked_config(g: Gguf, src: Path) -> dict[str, Any]:
    """The config.json of a GGUF file's model, or a clear error."""
    arch = g.architecture
    if arch not in _ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"{src} is a {arch!r} model; the GGUF importer supports "
            f"{', '.join(sorted(_ARCHITECTURES))}. Load the original Hugging Face model instead "
            "(mlx-lm supports many more architectures there).",
            path=str(src),
            architecture=arch,
        )
    try:
        return _config(g)
    except (TypeError, ValueError, StopIteration) as e:
        raise InvalidModelError(
            f"{src} lacks the {arch} hyper-parameters the importer needs ({e}).", path=str(src)
        ) from e


def _llama3_rope_scaling(freqs: np.ndarray, config: dict[str, Any], path: Path) -> dict[str, Any]:
    """Recover Llama 3.x's rope_scaling from llama.cpp's ``rope_freqs`` tensor.

    llama.cpp stores the per-frequency factors, not the parameters. Every
    Llama 3.x uses low/high frequency factors 1 and 4 and an original context
    of 8192; the largest factor is ``factor``. The parameters are accepted only
    if they reproduce the stored tensor.
    """
    factor = float(freqs.max())
    scaling = {
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    dims = config["head_dim"]
    base = config.get("rope_theta", 10000.0)
    inv = base ** (np.arange(0, dims, 2, dtype=np.float64) / dims)  # wavelengths / 2pi
    wavelen = 2 * np.pi * inv
    low_wavelen = 8192 / 1.0
    high_wavelen = 8192 / 4.0
    smooth = (8192 / wavelen - 1.0) / (4.0 - 1.0)
    expected = np.where(
        wavelen < high_wavelen, 1.0, np.where(wavelen > low_wavelen, factor, 1.0 / ((1 - smooth) / factor + smooth))
    )
    if freqs.shape != expected.shape or not np.allclose(freqs, expected, rtol=1e-3):
        raise UnsupportedArchitectureError(
            f"{path} has rope frequency factors (rope_freqs) that do not match Llama 3 "
            "rope scaling; this rope variant is not supported by the GGUF importer. "
            "Load the original Hugging Face model instead.",
            path=str(path),
            architecture="llama (custom rope_freqs)",
        )
    return scaling


def _mlx_name(gguf_name: str, arch: str) -> str | None:
    base, _, suffix = gguf_name.rpartition(".")
    if base in _TOP_NAMES:
        return f"{_TOP_NAMES[base]}.{suffix}"
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)", base)
    if not m:
        return None
    kind = m.group(2)
    layer: str | None
    if kind == "ffn_norm":  # the norm before the MLP: Gemma has one after attention too
        layer = "pre_feedforward_layernorm" if arch == "gemma3" else "post_attention_layernorm"
    else:
        layer = _LAYER_NAMES.get(kind)
    return f"model.layers.{m.group(1)}.{layer}.{suffix}" if layer else None


def _unpermute(rows: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (rows may be packed quantized data)."""
    n = rows.shape[0]
    out: np.ndarray = rows.reshape(n_head, n // n_head // 2, 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)
    return out


def _requant_bits(qtype: Any) -> int:
    name = qtype.name
    return 4 if name.startswith(("Q2", "Q3", "IQ1", "IQ2", "IQ3", "TQ")) else 8


def _stored_bits(qtype: Any, name: str, shape: tuple[int, ...], weights_mode: str) -> tuple[int | None, bool]:
    """How the importer stores a tensor: (bits at group ``GROUP_SIZE``, or None for float; repacked exactly?)."""
    import gguf

    if not name.endswith(".weight") or len(shape) != 2 or weights_mode == "float":
        return None, False
    if qtype in EXACT_BITS:
        return EXACT_BITS[qtype], True
    float_types = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16)
    if weights_mode == "quantized" and qtype not in float_types:
        return _requant_bits(qtype), False
    return None, False


def planned_weights(path: Path, weights: str) -> tuple[dict[str, Any], list[tuple[str, tuple[int, ...], int | None]]]:
    """What importing ``path`` would make, from its header alone: the config,
    and each weight's MLX name, shape and bits (None: floating point).

    Raises:
        ModelNotFoundError: there is no such file (the embedded default may not be fetched yet).
        InvalidModelError / UnsupportedArchitectureError: as :func:`import_gguf`.
    """
    if not Path(path).is_file():  # e.g. the embedded default, not fetched yet
        raise ModelNotFoundError(f"No such GGUF file (yet): {path}", source=str(path))
    g = read_gguf(Path(path))
    config = _checked_config(g, Path(path))
    planned = []
    for t in g.tensors:
        name = _mlx_name(t.name, g.architecture)
        if name is None:  # rope_freqs folds into the config; anything else fails at import
            continue
        shape = tuple(int(d) for d in reversed(t.shape))
        planned.append((name, shape, _stored_bits(t.tensor_type, name, shape, weights)[0]))
    return config, planned


def _convert_tensors(
    g: Gguf, config: dict[str, Any], weights_mode: str, progress: Callable[[int, int], None] | None
) -> tuple[dict[str, Any], dict[str, Any], Counter[str]]:
    import gguf
    import mlx.core as mx

    arch = g.architecture
    _, permute_qk, norm_plus_one = _ARCHITECTURES[arch]
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    weights: dict[str, Any] = {}
    layer_quant: dict[str, dict[str, int]] = {}
    summary: Counter[str] = Counter()
    float_types = {gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16}

    for i, t in enumerate(g.tensors):
        if progress:
            progress(i, len(g.tensors))
        if t.name == "rope_freqs.weight":
            if arch in ("llama", "mistral"):
                config["rope_scaling"] = _llama3_rope_scaling(np.asarray(t.data, np.float64), config, g.path)
            continue
        name = _mlx_name(t.name, arch)
        if name is None:
            raise UnsupportedArchitectureError(
                f"{g.path}: tensor {t.name!r} has no place in mlx-lm's {config['model_type']} "
                "model; this GGUF variant is not supported. Load the original Hugging Face model instead.",
                path=str(g.path),
                architecture=arch,
            )
        shape = tuple(int(d) for d in reversed(t.shape))
        qtype = t.tensor_type
        perm_heads = None
        if permute_qk and name.endswith(("q_proj.weight", "q_proj.bias")):
            perm_heads = heads
        elif permute_qk and name.endswith(("k_proj.weight", "k_proj.bias")):
            perm_heads = kv_heads
        prefix = name[: -len(".weight")]
        bits, exact = _stored_bits(qtype, name, shape, weights_mode)

        if exact:
            wq, scales, biases = to_mlx_affine(np.asarray(t.data), qtype, (shape[0], shape[-1]))
            if perm_heads:
                wq, scales, biases = (_unpermute(a, perm_heads) for a in (wq, scales, biases))
            weights[name] = mx.array(wq)
            weights[f"{prefix}.scales"] = mx.array(scales)
            weights[f"{prefix}.biases"] = mx.array(biases)
            layer_quant[prefix] = {"group_size": GROUP_SIZE, "bits": EXACT_BITS[qtype]}
            summary[f"{qtype.name} -> {EXACT_BITS[qtype]}-bit (lossless)"] += 1
            continue

        if qtype in float_types:
            w = np.asarray(t.data).reshape(shape)
        else:
            w = gguf.quants.dequantize(np.asarray(t.data), qtype).reshape(shape).astype(np.float32)
        if perm_heads:
            w = _unpermute(w, perm_heads)
        if norm_plus_one and name.endswith("norm.weight"):
            w = w.astype(np.float32) - 1.0
        arr: Any = mx.array(w)
        if bits is not None:
            requantized = mx.quantize(arr, group_size=GROUP_SIZE, bits=bits)
            weights[name], weights[f"{prefix}.scales"], weights[f"{prefix}.biases"] = requantized
            layer_quant[prefix] = {"group_size": GROUP_SIZE, "bits": bits}
            summary[f"{qtype.name} -> {bits}-bit (requantized)"] += 1
        else:
            weights[name] = arr
            summary[f"{qtype.name} -> {arr.dtype}".replace("mlx.core.", "")] += 1
    if progress:
        progress(len(g.tensors), len(g.tensors))
    return weights, layer_quant, summary


def _tokenizer(g: Gguf, out: Path) -> list[int]:
    """Write tokenizer.json / tokenizer_config.json; return the stop token ids."""
    from tokenizers import pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer

    md = g.metadata
    tokens = md.get("tokenizer.ggml.tokens")
    if not tokens:
        raise InvalidModelError(
            f"{g.path} has no tokenizer in its metadata (tokenizer.ggml.tokens); "
            "it cannot be used without one. Use a GGUF exported with its tokenizer.",
            path=str(g.path),
        )
    spec = {
        "tokenizer_type": md.get("tokenizer.ggml.model"),
        "pre_tokenizer_type": md.get("tokenizer.ggml.pre"),
        "tokens": tokens,
        "scores": md.get("tokenizer.ggml.scores"),
        "token_type": md.get("tokenizer.ggml.token_type"),
        "merges": md.get("tokenizer.ggml.merges"),
        "add_prefix_space": md.get("tokenizer.ggml.add_space_prefix"),
    }
    spec = {k: v for k, v in spec.items() if v is not None}
    try:
        backend, _ = convert_gguf_tokenizer(g.architecture, spec)
    except Exception as e:  # transformers raises ValueError/KeyError/... for odd vocabularies
        raise InvalidModelError(
            f"Could not rebuild the tokenizer of {g.path} from its metadata "
            f"(tokenizer.ggml.model={spec.get('tokenizer_type')!r}): {e}",
            path=str(g.path),
        ) from e
    if spec.get("pre_tokenizer_type") in _DIGIT_SPLIT_PRE:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )

    def token(key: str) -> str | None:
        i = md.get(f"tokenizer.ggml.{key}")
        return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None

    bos = token("bos_token_id")
    add_bos = bool(md.get("tokenizer.ggml.add_bos_token", spec.get("tokenizer_type") == "llama"))
    if bos is not None and add_bos:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0",
            pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
            special_tokens=[(bos, int(md["tokenizer.ggml.bos_token_id"]))],
        )
    tok = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=token("eos_token_id"),
        unk_token=token("unknown_token_id"),
        pad_token=token("padding_token_id"),
    )
    template = md.get("tokenizer.chat_template")
    if template:
        tok.chat_template = template
    tok.save_pretrained(str(out))
    stops = [md.get(f"tokenizer.ggml.{k}") for k in ("eos_token_id", "eot_token_id", "eom_token_id")]
    return sorted({int(s) for s in stops if s is not None})


def _write_weights(weights: dict[str, Any], out: Path) -> None:
    import mlx.core as mx
    from mlx_lm.utils import make_shards

    shards = make_shards(weights)
    if len(shards) == 1:
        mx.save_safetensors(str(out / "model.safetensors"), shards[0], metadata={"format": "mlx"})
        return
    index: dict[str, Any] = {"metadata": {"total_size": sum(v.nbytes for v in weights.values())}, "weight_map": {}}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        mx.save_safetensors(str(out / fname), shard, metadata={"format": "mlx"})
        index["weight_map"].update({k: fname for k in shard})
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def import_gguf(
    path: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    weights: str = "quantized",
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Import the GGUF file ``path`` as an MLX model folder at ``dest``.

    ``dest`` must not exist; it appears only once complete (the work happens
    in a temporary folder beside it, renamed into place at the end).

    ``weights`` is one of :data:`WEIGHT_MODES` (see the module docstring).

    Raises:
        InvalidModelError: the file is not a readable GGUF or lacks a tokenizer.
        UnsupportedArchitectureError: its architecture or tensors have no
            mlx-lm equivalent.
        StorageError: ``dest`` could not be written (disk full, permissions).
    """
    src, dest = Path(path), Path(dest)
    if weights not in WEIGHT_MODES:
        raise InvalidOptionError(
            f"gguf_weights={weights!r}: choose one of {', '.join(WEIGHT_MODES)}", option="gguf_weights"
        )
    g = read_gguf(src)
    config = _checked_config(g, src)

    with storage_errors(dest, "write the GGUF import"):
        with staged_folder(dest) as stage:  # (raises DestinationExists, a FileExistsError, if dest appeared)
            tmp = stage.folder
            stop_ids = _tokenizer(g, tmp)
            tensors, layer_quant, summary = _convert_tensors(g, config, weights, progress)
            if stop_ids:
                config["eos_token_id"] = stop_ids if len(stop_ids) > 1 else stop_ids[0]
            if layer_quant:
                default = Counter(q["bits"] for q in layer_quant.values()).most_common(1)[0][0]
                quant: dict[str, Any] = {"group_size": GROUP_SIZE, "bits": default, "mode": "affine"}
                quant.update({p: q for p, q in layer_quant.items() if q["bits"] != default})
                config["quantization"] = quant
                config["quantization_config"] = quant
            _write_weights(tensors, tmp)
            (tmp / "config.json").write_text(json.dumps(config, indent=2))
            provenance = {
                "created_by": f"mlx_local {__version__}",
                "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "source": {
                    "type": "gguf",
                    "file": src.name,
                    "size": src.stat().st_size,
                    "sha256": sha256_of(src),
                    "name": g.metadata.get("general.name"),
                    "license": g.metadata.get("general.license"),
                },
                "import": {"weights": weights, "importer_version": _IMPORTER_VERSION, "tensors": dict(summary)},
            }
            (tmp / "mlx_local.json").write_text(json.dumps(provenance, indent=2))
    return dest


def cached_import_folder(path: Path, *, weights: str) -> Path:
    """Where the import of ``path`` lives in the import cache.

    Named ``<file stem>-<weights>-<digest>`` (e.g.
    ``SmolLM2-135M-Instruct.Q4_1-float-1a2b3c4d5e6f``): the name
    ``local_models()`` lists says which import of the file it is, and loads it.
    The digest keys it by the file's real path, size and modification time
    and by the import options, so a changed file is imported again.
    """
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{weights}|{_IMPORTER_VERSION}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem)
    return home() / "imports" / f"{stem}-{weights}-{digest}"

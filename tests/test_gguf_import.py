"""A GGUF file written the way llama.cpp writes one imports to the same model.

Each test writes a tiny random model (tests/tiny_models.py) as GGUF with the
``gguf`` package's ``GGUFWriter``, following llama.cpp's convert_hf_to_gguf.py:
its metadata keys, tensor names from gguf's own ``TensorNameMap``, 1-D tensors
in F32, the query/key row permutation of llama, Gemma's norms stored as
``1 + w``, Llama 3's ``rope_freqs`` tensor, and tokenizer metadata built from
the real tokenizer files. ``Model.load(path_to_gguf)`` must then give the same
logits as the original.

The references never come from the importer: they are the original HF folder,
or, for a quantized file, an HF folder holding the values that
``gguf.quants.dequantize`` gives for its blocks (quantization works row by row,
so quantizing the permuted rows and un-permuting equals quantizing the original
rows), loaded with mlx-lm's own HF loader; and for tokenizers, transformers'
tokenizer of the original files.

Tolerance: Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 are repacked without loss, and F32, F16
and BF16 values are kept, so the imported model computes with exactly the
reference's weights; only the order of float32 sums differs. Logits must agree
to ``1e-4`` of their scale (observed: ~1e-6), and each test checks that the
quantization error it would otherwise miss is far above that. Re-quantized
K-quants (``gguf_weights="quantized"``) are held to looser, stated bounds.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any, Callable

import gguf
import mlx.core as mx  # noqa: E402  (after mlx_local on purpose)
import mlx.nn as nn  # noqa: E402
import numpy as np
import pytest
from gguf.constants import GGML_QUANT_SIZES
from safetensors.numpy import save_file

# mlx_local first: it picks the BLAS before MLX is loaded.
import mlx_local
from mlx_local import _gguf_import as gguf_import
from mlx_local._assets import home
from mlx_local.errors import UnsupportedArchitectureError

from tiny_models import copy_tokenizer, tiny_config, tiny_weights

pytestmark = pytest.mark.slow  # real models, subprocesses or the network stand-in

T = gguf.GGMLQuantizationType
RTOL = 1e-4  # max |logits - reference| / max |reference|, float32 against float32

GGUF_ARCH = {
    "llama": gguf.MODEL_ARCH.LLAMA,
    "qwen2": gguf.MODEL_ARCH.QWEN2,
    "qwen3": gguf.MODEL_ARCH.QWEN3,
    "gemma3_text": gguf.MODEL_ARCH.GEMMA3,
}

# GGUF has no key for Gemma 3's layer pattern: llama.cpp hard-codes one global
# layer in six and a local rope base of 10000. So the Gemma 3 models here have
# six layers (five sliding, one full), and a global rope base of 1e6, as real
# Gemma 3 has, so that mixing up the two bases shows.
GEMMA3_GGUF = {
    "num_hidden_layers": 6,
    "sliding_window_pattern": 6,
    "layer_types": ["sliding_attention"] * 5 + ["full_attention"],
    "rope_theta": 1_000_000.0,
}


# ----------------------------------------------------------------- references


def _rel_err(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def _logits(module: Any, ids: list[int]) -> np.ndarray:
    return np.array(module(mx.array([ids]))[0], dtype=np.float64)


def _reference_module(config: dict[str, Any], weights: dict[str, np.ndarray], folder: Path) -> Any:
    """The model an HF folder with these weights is, loaded by mlx-lm's HF loader."""
    from mlx_lm.utils import load_model

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()},
              str(folder / "model.safetensors"), metadata={"format": "pt"})
    module, _ = load_model(folder)
    return module


def _ids(vocab: int, n: int = 24, seed: int = 0) -> list[int]:
    """Token ids for a forward pass: 24 is three of Gemma 3's tiny windows."""
    return [int(i) for i in np.random.default_rng(seed).integers(0, vocab, n)]


# ---------------------------------------------- writing GGUF like llama.cpp


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's LlamaModel.permute of query/key rows."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _permuted_rows(n_rows: int, n_head: int) -> np.ndarray:
    """Which original row each GGUF row holds (the permutation applied to row numbers)."""
    return _permute(np.arange(n_rows), n_head)


def _looks_special(token: str) -> bool:
    """llama.cpp's ModelBase.does_token_look_special."""
    return (
        token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (token.startswith("<|") and token.endswith("|>"))
        or (token.startswith("<\uff5c") and token.endswith("\uff5c>"))
        or (token.startswith("<unused") and token.endswith(">"))
    )


def _bpe_tokenizer(folder: Path, tokenizer: Any, vocab_size: int, pre: str) -> Callable[[gguf.GGUFWriter], None]:
    """llama.cpp's _set_vocab_gpt2: get_vocab_base() plus gguf.SpecialVocab."""
    vocab = tokenizer.get_vocab()
    reverse = {i: t for t, i in vocab.items()}
    added = tokenizer.get_added_vocab()
    decoder = tokenizer.added_tokens_decoder
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        token = reverse[i]
        if token in added:
            if not decoder[i].normalized:
                token = tokenizer.decode(tokenizer.encode(token, add_special_tokens=False))
            if decoder[i].special or _looks_special(token):
                types.append(gguf.TokenType.CONTROL)
            else:
                token = token.replace("\u2581", " ")
                types.append(gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(token)

    def write(w: gguf.GGUFWriter) -> None:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre)
        w.add_token_list(tokens)
        w.add_token_types(types)
        gguf.SpecialVocab(folder, load_merges=True, n_vocab=len(tokens)).add_to_gguf(w, quiet=True)

    return write


def _sentencepiece_tokenizer(folder: Path, vocab_size: int) -> Callable[[gguf.GGUFWriter], None]:
    """llama.cpp's _set_vocab_sentencepiece for Gemma 3.

    The npm asset has tokenizer.json but not tokenizer.model, so the pieces
    and their kinds come from tokenizer.json (it was converted from that
    SentencePiece model piece for piece). Its scores are not in tokenizer.json;
    -id stands in (a BPE SentencePiece model ranks its pieces that way).
    """
    tj = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    tc = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    reverse = {i: t for t, i in tj["model"]["vocab"].items()}
    tokens, scores, types = [], [], []
    for i in range(vocab_size):
        piece = reverse.get(i, f"[PAD{i}]")
        tokens.append(piece)
        if i not in reverse:
            types.append(gguf.TokenType.UNUSED)
            scores.append(-1000.0)
        elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", piece):
            types.append(gguf.TokenType.BYTE)
            scores.append(0.0)
        elif piece == tj["model"].get("unk_token"):
            types.append(gguf.TokenType.UNKNOWN)
            scores.append(0.0)
        else:
            types.append(gguf.TokenType.NORMAL)
            scores.append(-float(i))
    for key, data in tc["added_tokens_decoder"].items():  # as llama.cpp reads them
        i, token = int(key), data["content"]
        if i >= vocab_size:
            continue
        if data.get("special") or _looks_special(token):
            types[i] = gguf.TokenType.CONTROL
        else:
            token = token.replace("\u2581", " ")  # llama.cpp pre-normalizes user-defined spaces
            types[i] = gguf.TokenType.USER_DEFINED
        scores[i] = -1000.0
        tokens[i] = token

    def write(w: gguf.GGUFWriter) -> None:
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        gguf.SpecialVocab(folder, n_vocab=len(tokens)).add_to_gguf(w, quiet=True)
        w.add_add_space_prefix(False)

    return write


@functools.cache
def _small_tokenizer(vocab_size: int) -> Callable[[gguf.GGUFWriter], None]:
    """A valid byte-level BPE vocabulary of ``vocab_size`` tokens for the weight
    tests: Qwen3's first merges, then <|endoftext|> and <|im_end|> (the eos)."""
    from conftest import asset_path

    tj = json.loads((asset_path("tokenizer-qwen3") / "tokenizer.json").read_text(encoding="utf-8"))
    reverse = {i: t for t, i in tj["model"]["vocab"].items()}
    n = vocab_size - 2
    merges = [" ".join(m) for m in tj["model"]["merges"][: n - 256]]
    tokens = [reverse[i] for i in range(n)] + ["<|endoftext|>", "<|im_end|>"]
    assert all("".join(m.split(" ")) == tokens[256 + k] for k, m in enumerate(merges))

    def write(w: gguf.GGUFWriter) -> None:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("qwen2")
        w.add_token_list(tokens)
        w.add_token_types([gguf.TokenType.NORMAL] * n + [gguf.TokenType.CONTROL] * 2)
        w.add_token_merges(merges)
        w.add_eos_token_id(vocab_size - 1)
        w.add_pad_token_id(vocab_size - 2)
        w.add_add_bos_token(False)

    return write


def _rope_factors(config: dict[str, Any]) -> np.ndarray:
    """llama.cpp's LlamaModel.generate_extra_tensors for rope_type llama3."""
    rope = config["rope_scaling"]
    dim = config["head_dim"]
    freqs = 1.0 / (config["rope_theta"] ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old = config.get("original_max_position_embeddings", 8192)
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            factors.append(1.0)
        elif wavelen > old / low:
            factors.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


def write_gguf(
    path: Path,
    config: dict[str, Any],
    tensors: dict[str, tuple[np.ndarray, T]],
    tokenizer: Callable[[gguf.GGUFWriter], None],
) -> Path:
    """Write a GGUF as convert_hf_to_gguf.py does.

    ``tensors`` maps HF names to (array, GGUF type): float arrays in HF layout
    for F32/F16/BF16 and the quantized types gguf can make (these are permuted,
    shifted and quantized here), or raw blocks already in GGUF row order for
    anything else.
    """
    model_type = config["model_type"]
    arch = GGUF_ARCH[model_type]
    w = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[arch])
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(f"tiny {model_type}")
    w.add_block_count(config["num_hidden_layers"])
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(config["hidden_size"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(config["num_attention_heads"])
    w.add_head_count_kv(config["num_key_value_heads"])
    w.add_rope_freq_base(config["rope_theta"])
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    w.add_key_length(config["head_dim"])
    w.add_value_length(config["head_dim"])
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    if model_type == "llama":
        w.add_vocab_size(config["vocab_size"])
        w.add_rope_dimension_count(config["head_dim"])
    if model_type == "gemma3_text" and config.get("sliding_window_pattern") != 1:
        w.add_sliding_window(config["sliding_window"])
    rope = config.get("rope_scaling") or {}
    if rope.get("rope_type") == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rope["factor"])
    tokenizer(w)

    names = gguf.get_tensor_name_map(arch, config["num_hidden_layers"])
    heads = {"q_proj": config["num_attention_heads"], "k_proj": config["num_key_value_heads"]}
    for hf_name, (x, qtype) in tensors.items():
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        assert name, hf_name
        if qtype not in (T.F32, T.F16, T.BF16) and x.dtype == np.uint8:  # raw blocks, GGUF order
            w.add_tensor(name, x, raw_dtype=qtype)
            continue
        proj = hf_name.split(".")[-2]
        if model_type == "llama" and proj in heads:
            x = _permute(x, heads[proj])
        if model_type == "gemma3_text" and hf_name.endswith("norm.weight"):
            x = x + 1
        if x.ndim == 1 or qtype == T.F32:
            w.add_tensor(name, x.astype(np.float32))
        elif qtype == T.F16:
            w.add_tensor(name, x.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(x, qtype), raw_dtype=qtype)
    if rope.get("rope_type") == "llama3":
        w.add_tensor("rope_freqs.weight", _rope_factors(config))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _as_stored(x: np.ndarray, qtype: T) -> np.ndarray:
    """What a weight is after a round trip through ``qtype`` (gguf's own codec)."""
    if x.ndim == 1 or qtype == T.F32:
        return x
    if qtype == T.F16:
        return x.astype(np.float16).astype(np.float32)
    return gguf.quants.dequantize(gguf.quants.quantize(x, qtype), qtype)


# -------------------------------------------------- small-vocabulary models

SMALL_VOCAB = 512


def small_model(model_type: str, seed: int = 0, **overrides: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A tiny config and HF weights with a 512-token vocabulary."""
    if model_type == "qwen2":
        config = tiny_config("qwen3", model_type="qwen2", architectures=["Qwen2ForCausalLM"],
                             vocab_size=SMALL_VOCAB, **overrides)
    elif model_type == "gemma3":
        config = tiny_config("gemma3", vocab_size=SMALL_VOCAB, **{**GEMMA3_GGUF, **overrides})
    else:
        config = tiny_config(model_type, vocab_size=SMALL_VOCAB, **overrides)
    weights = tiny_weights(config, seed)
    if model_type == "qwen2":  # Qwen2 has q/k/v biases
        rng = np.random.default_rng(seed + 1)
        for i in range(config["num_hidden_layers"]):
            for proj, n in (("q", config["num_attention_heads"]), ("k", config["num_key_value_heads"]),
                            ("v", config["num_key_value_heads"])):
                weights[f"model.layers.{i}.self_attn.{proj}_proj.bias"] = (
                    rng.standard_normal(n * config["head_dim"]) * 0.2).astype(np.float32)
    return config, weights


WEIGHT_TYPES = [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1]
LOSSY = {T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1}


@pytest.mark.parametrize("qtype", WEIGHT_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("model_type", ["llama", "qwen2", "qwen3", "gemma3"])
def test_weights_import_exactly(tmp_path: Path, model_type: str, qtype: T) -> None:
    config, weights = small_model(model_type)
    path = write_gguf(tmp_path / "tiny.gguf", config, {k: (v, qtype) for k, v in weights.items()},
                      _small_tokenizer(SMALL_VOCAB))
    model = mlx_local.Model.load(path)
    stored = {k: _as_stored(v, qtype) for k, v in weights.items()}
    reference = _reference_module(config, stored, tmp_path / "reference")

    ids = _ids(SMALL_VOCAB)
    expected = _logits(reference, ids)
    err = _rel_err(_logits(model.module, ids), expected)
    assert err <= RTOL, f"{model_type} {qtype.name}: logits off by {err:.3g} of their scale"

    if qtype in LOSSY:  # the format's own error is far above the tolerance
        original = _reference_module(config, weights, tmp_path / "original")
        assert _rel_err(_logits(original, ids), expected) > 10 * RTOL
    quantized = qtype in gguf_import.EXACT_BITS
    assert model.quantization == (f"{gguf_import.EXACT_BITS[qtype]}-bit, group 32" if quantized else "none")


# ----------------------------------------------------------------- K-quants


def _k_blocks(rng: np.random.Generator, qtype: T, rows: int, cols: int) -> np.ndarray:
    """Random but valid K-quant blocks (finite scales), dequantizing to weights
    with a standard deviation of 0.05-0.08."""
    block, size = GGML_QUANT_SIZES[qtype]
    data = rng.integers(0, 256, size=(rows, cols // block * size), dtype=np.uint8)
    b = data.reshape(-1, size)
    n = len(b)

    def f16(lo: float, hi: float) -> np.ndarray:
        return rng.uniform(lo, hi, size=(n, 1)).astype("<f2").view(np.uint8)

    if qtype == T.Q6_K:  # ql[128] qh[64] int8 scales[16] d
        b[:, 192:208] = rng.integers(-24, 25, size=(n, 16)).astype(np.int8).view(np.uint8)
        b[:, 208:210] = f16(1e-4, 3e-4)
    elif qtype == T.Q3_K:  # hmask[32] qs[64] scales[12] d
        b[:, 108:110] = f16(1e-3, 2e-3)
    elif qtype == T.Q2_K:  # scales[16] qs[64] d dmin
        b[:, 80:82] = f16(4e-3, 8e-3)
        b[:, 82:84] = f16(2e-3, 4e-3)
    else:
        raise ValueError(qtype)
    return data


def _k_model(mix: str, seed: int = 3) -> tuple[dict[str, Any], dict[str, tuple[np.ndarray, T]], dict[str, np.ndarray]]:
    """A llama with hidden size 256 (K-quant rows are 256-value super-blocks).

    Returns the config, the GGUF tensors (K-quant blocks in GGUF row order,
    norms in float) and the HF weights they stand for.
    """
    config = tiny_config("llama", hidden_size=256, intermediate_size=512, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=64, vocab_size=SMALL_VOCAB)
    rng = np.random.default_rng(seed)
    gguf_tensors: dict[str, tuple[np.ndarray, T]] = {}
    hf: dict[str, np.ndarray] = {}
    heads = {"q_proj": config["num_attention_heads"], "k_proj": config["num_key_value_heads"]}
    for name, w in tiny_weights(config, seed).items():
        if w.ndim == 1:
            gguf_tensors[name] = (w, T.F32)
            hf[name] = w
            continue
        if mix == "Q6_K":
            qtype = T.Q6_K
        else:  # as in llama.cpp's low-bit mixes: attention Q3_K, MLP Q2_K, embeddings Q6_K
            qtype = T.Q3_K if "self_attn" in name else T.Q2_K if "mlp" in name else T.Q6_K
        blocks = _k_blocks(rng, qtype, *w.shape)
        gguf_tensors[name] = (blocks, qtype)
        rows = gguf.quants.dequantize(blocks, qtype)  # GGUF row order
        proj = name.split(".")[-2]
        if proj in heads:  # GGUF row j holds original row p[j]
            original = np.empty_like(rows)
            original[_permuted_rows(rows.shape[0], heads[proj])] = rows
            rows = original
        hf[name] = rows
    return config, gguf_tensors, hf


@pytest.fixture(scope="module", params=["Q6_K", "Q2_K+Q3_K+Q6_K"])
def k_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("kquant")
    config, tensors, hf = _k_model(request.param)
    path = write_gguf(tmp / f"{request.param}.gguf", config, tensors, _small_tokenizer(SMALL_VOCAB))
    reference = _reference_module(config, hf, tmp / "reference")
    return request.param, path, config, hf, reference


def test_k_quants_exact_mode_keeps_float_weights(k_model: Any) -> None:
    mix, path, _, _, reference = k_model
    model = mlx_local.Model.load(path, gguf_weights="exact")
    assert model.quantization == "none"
    ids = _ids(SMALL_VOCAB)
    err = _rel_err(_logits(model.module, ids), _logits(reference, ids))
    assert err <= RTOL, f"{mix}: logits off by {err:.3g} of their scale"


def test_k_quants_quantized_mode_is_close(k_model: Any, tmp_path: Path) -> None:
    """Re-quantized by MLX: Q6_K to 8 bits, Q2_K/Q3_K to 4 (group 32).

    Bounds: every weight within one step of MLX's grid for its group
    (observed: 0.996 of a step, MLX moves the grid so that 0 is exact), a
    relative RMS weight error of at most 1% at 8 bits and 10% at 4 bits
    (observed: 0.44% and 7.5%), and for Q6_K logits within 5% of their scale
    (observed: 2.2%; random weights amplify errors, so the 4-bit mix, with 7.5%
    weight noise, has no useful logit bound). The logits must equal those of
    the exact model quantized by MLX itself at the same widths.
    """
    mix, path, config, hf, reference = k_model
    model = mlx_local.Model.load(path)
    q = model.config["quantization"]
    if mix == "Q6_K":
        assert (q["group_size"], q["bits"]) == (32, 8)
    else:  # Q2_K/Q3_K go to 4 bits, Q6_K (embeddings and output) to 8
        assert (q["group_size"], q["bits"]) == (32, 4)
        assert q["model.embed_tokens"]["bits"] == q["lm_head"]["bits"] == 8

    layers = {name: m for name, m in model.module.named_modules() if hasattr(m, "scales")}
    assert set(layers) == {k[: -len(".weight")] for k, v in hf.items() if v.ndim == 2}
    for name, layer in layers.items():
        exact = hf[f"{name}.weight"]
        bits = q[name]["bits"] if isinstance(q.get(name), dict) else q["bits"]
        assert (layer.bits, layer.group_size) == (bits, 32), name
        w = np.array(mx.dequantize(layer.weight, layer.scales, layer.biases, group_size=32, bits=bits))
        err = np.abs(w - exact).reshape(exact.shape[0], -1, 32).max(-1)
        groups = exact.reshape(exact.shape[0], -1, 32)
        step = (groups.max(-1) - groups.min(-1)) / (2**bits - 1)
        assert (err <= 1.01 * step + 1e-7).all(), f"{name}: {(err / np.maximum(step, 1e-30)).max():.3f} steps"
        rms = np.sqrt(((w - exact) ** 2).mean() / (exact**2).mean())
        assert 0 < rms <= (0.01 if bits == 8 else 0.10), f"{name}: relative RMS error {rms:.4f} at {bits} bits"

    ids = _ids(SMALL_VOCAB)
    actual = _logits(model.module, ids)
    err = _rel_err(actual, _logits(reference, ids))
    assert err > 10 * RTOL  # re-quantized, not kept
    if mix == "Q6_K":
        assert err <= 0.05, f"re-quantized logits off by {err:.3g} of their scale"

    # Independently: MLX's own quantizer applied to the exact weights, at the
    # widths above, gives that same model.
    module = _reference_module(config, hf, tmp_path / "exact")

    def widths(path: str, layer: Any) -> Any:
        if not hasattr(layer, "to_quantized"):
            return False
        own = q.get(path)
        return {"group_size": 32, "bits": own["bits"] if isinstance(own, dict) else q["bits"]}

    nn.quantize(module, class_predicate=widths)
    assert _rel_err(actual, _logits(module, ids)) <= RTOL


# ---------------------------------------------------------- Gemma 3 variants

#: Gemma 3 configurations whose GGUF carries them only indirectly.
GEMMA3_VARIANTS = {
    # llama.cpp scales the queries of Gemma 3 27B (the 62-layer one) by
    # hidden_size / heads (168 there) instead of head_dim (128).
    "27b_attention_scale": {
        "num_hidden_layers": 62,
        "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 10 + ["sliding_attention"] * 2,
        "head_dim": 8,
        "query_pre_attn_scalar": 16,
    },
    # Without a sliding window (sliding_window_pattern 1) llama.cpp writes no
    # window and uses global attention and the global rope base everywhere.
    "no_sliding_window": {
        "sliding_window_pattern": 1,
        "layer_types": ["full_attention"] * 6,
    },
    # Gemma 3 4B-27B scale the global layers' rope linearly.
    "linear_rope": {"rope_scaling": {"rope_type": "linear", "factor": 8.0}},
}


@pytest.mark.parametrize("variant", list(GEMMA3_VARIANTS))
def test_gemma3_variants(tmp_path: Path, variant: str) -> None:
    config, weights = small_model("gemma3", **GEMMA3_VARIANTS[variant])
    path = write_gguf(tmp_path / "gemma3.gguf", config, {k: (v, T.F16) for k, v in weights.items()},
                      _small_tokenizer(SMALL_VOCAB))
    model = mlx_local.Model.load(path)
    stored = {k: _as_stored(v, T.F16) for k, v in weights.items()}
    ids = _ids(SMALL_VOCAB)
    expected = _logits(_reference_module(config, stored, tmp_path / "reference"), ids)
    err = _rel_err(_logits(model.module, ids), expected)
    assert err <= RTOL, f"{variant}: logits off by {err:.3g} of their scale"
    # What the variant changes matters: the plain configuration is far off.
    plain = {k: v for k, v in config.items() if k not in ("query_pre_attn_scalar", "rope_scaling")}
    plain.update(sliding_window_pattern=6, query_pre_attn_scalar=config["head_dim"])
    other = _logits(_reference_module(plain, stored, tmp_path / "plain"), ids)
    assert _rel_err(other, expected) > 100 * RTOL


# ------------------------------------------------------------------ rope


def test_llama3_rope_scaling_comes_back_from_rope_freqs(tmp_path: Path) -> None:
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    config, weights = small_model("llama", rope_theta=500000.0, max_position_embeddings=131072,
                                  rope_scaling=scaling)
    path = write_gguf(tmp_path / "llama31.gguf", config, {k: (v, T.F16) for k, v in weights.items()},
                      _small_tokenizer(SMALL_VOCAB))
    model = mlx_local.Model.load(path)
    stored = {k: _as_stored(v, T.F16) for k, v in weights.items()}
    ids = _ids(SMALL_VOCAB, n=48)
    expected = _logits(_reference_module(config, stored, tmp_path / "reference"), ids)
    assert _rel_err(_logits(model.module, ids), expected) <= RTOL
    # Without the scaling the logits are far off: the check above saw it.
    unscaled = {k: v for k, v in config.items() if k != "rope_scaling"}
    assert _rel_err(_logits(_reference_module(unscaled, stored, tmp_path / "unscaled"), ids), expected) > 100 * RTOL


def test_rope_freqs_that_are_not_llama3_are_refused(tmp_path: Path) -> None:
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    config, weights = small_model("llama", rope_theta=500000.0, rope_scaling=scaling)
    path = write_gguf(tmp_path / "odd.gguf", {**config, "rope_scaling": {**scaling, "high_freq_factor": 2.0}},
                      {k: (v, T.F32) for k, v in weights.items()}, _small_tokenizer(SMALL_VOCAB))
    with pytest.raises(UnsupportedArchitectureError, match="rope"):
        mlx_local.Model.load(path)


# ------------------------------------------- real tokenizers, full vocabularies

#: tiny_models architecture -> (config overrides, how llama.cpp writes its tokenizer).
#: Importing a full vocabulary takes a few seconds, mostly transformers
#: building the tokenizer from the file's vocabulary and merges.
FULL = {
    "qwen3": ({}, "qwen2"),
    "llama": ({}, "llama-bpe"),
    "gemma3": (GEMMA3_GGUF, "sentencepiece"),
}

SAMPLES = [
    "Hello world! How are you doing today?",
    "  Leading spaces,\ttabs\tand\n\nnewlines\r\n  trailing  ",
    "Numbers: 0 7 42 123 1234 12345 3.14159 -2.5e10 1,000,000 2024-05-17",
    'def fib(n: int) -> int:\n    """Fibonacci."""\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n',
    "const x = {a: [1, 2, 3], 'b': \"c\"}; // comment\n#include <stdio.h>",
    "Ünïcödé: café naïve façade Zürich Ελληνικά русский язык עברית العربية हिन्दी",
    "中文文本，日本語のテキスト、한국어 텍스트。",
    "Emoji 🚀🔥 👍🏽 👨‍👩‍👧 and symbols ∑∫√π ≤ ≥ → ← ©®™",
    "URLs https://example.com/a?b=c&d=e#f and emails someone@example.org",
    "<|im_start|>user\nspecial<|im_end|> <start_of_turn>model <|eot_id|> <think>x</think>",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!!!!!!!!!????",
    "   ",
]

MESSAGES = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "What is 2 + 2? Answer with one digit."},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "And 3 × 3 = ? 日本語で"},
]


class _Full:
    """Per family: the tiny HF folder with the real tokenizer, its GGUF (F32,
    full vocabulary, tokenizer metadata as llama.cpp writes it), the imported
    model and transformers' tokenizer of the original files. Made once."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self._tmp, self._made = tmp_path_factory, {}

    def __getitem__(self, arch: str) -> tuple[dict[str, Any], Path, Path, mlx_local.Model, Any]:
        if arch not in self._made:
            from transformers import AutoTokenizer

            overrides, kind = FULL[arch]
            tmp = self._tmp.mktemp(f"full-{arch}")
            folder = tmp / "hf"
            folder.mkdir()
            config = tiny_config(arch, **overrides)
            weights = tiny_weights(config, seed=5)
            (folder / "config.json").write_text(json.dumps(config))
            save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
            copy_tokenizer(arch, folder)
            original = AutoTokenizer.from_pretrained(folder)
            if kind == "sentencepiece":
                tokenizer = _sentencepiece_tokenizer(folder, config["vocab_size"])
            else:
                tokenizer = _bpe_tokenizer(folder, original, config["vocab_size"], kind)
            path = write_gguf(tmp / f"{arch}.gguf", config, {k: (v, T.F32) for k, v in weights.items()}, tokenizer)
            self._made[arch] = (config, folder, path, mlx_local.Model.load(path), original)
        return self._made[arch]


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> _Full:
    return _Full(tmp_path_factory)


@pytest.mark.parametrize("arch", list(FULL))
def test_tokenizer_encodes_like_the_original(full: _Full, arch: str) -> None:
    _, _, _, model, original = full[arch]
    for text in SAMPLES:
        expected = original.encode(text)  # with the original's own BOS policy
        assert list(model.tokenizer.encode(text)) == expected, f"{arch}: {text!r}"
        if text.strip():
            assert model.encode(text, raw=True) == expected, f"{arch}: {text!r}"
        assert model.tokenizer.decode(expected) == original.decode(expected), f"{arch}: {text!r}"
    assert model.tokenizer.eos_token == original.eos_token
    if original.bos_token is not None:  # Qwen has none; its GGUF names <|endoftext|> but never adds it
        assert model.tokenizer.bos_token == original.bos_token


@pytest.mark.parametrize("arch", list(FULL))
def test_chat_template_matches_the_original(full: _Full, arch: str) -> None:
    _, _, _, model, original = full[arch]
    for conversation in (MESSAGES, MESSAGES[1:2]):
        text = original.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        assert model.encode(conversation) == original.encode(text, add_special_tokens=False), arch
    # A plain string goes through the template as one user message.
    text = original.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                        tokenize=False)
    assert model.encode("Hi") == original.encode(text, add_special_tokens=False)
    # Generation stops at the token that ends the template's turns.
    assert original.convert_tokens_to_ids(original.eos_token) in model.tokenizer.eos_token_ids


@pytest.mark.parametrize("arch", list(FULL))
def test_full_vocabulary_logits_match(full: _Full, arch: str) -> None:
    from mlx_lm.utils import load_model

    _, folder, _, model, _ = full[arch]
    ids = model.encode(SAMPLES[3] + SAMPLES[5], raw=True)
    assert 30 <= len(ids) <= 200
    reference, _ = load_model(folder)
    err = _rel_err(_logits(model.module, ids), _logits(reference, ids))
    assert err <= RTOL, f"{arch}: logits off by {err:.3g} of their scale"


# ------------------------------------------------------- cache and saving


def _imports() -> set[Path]:
    folder = home() / "imports"
    return set(folder.iterdir()) if folder.is_dir() else set()


def test_a_gguf_is_imported_once_and_its_provenance_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, weights = small_model("qwen3")
    path = write_gguf(tmp_path / "cached.gguf", config, {k: (v, T.Q8_0) for k, v in weights.items()},
                      _small_tokenizer(SMALL_VOCAB))
    calls: list[Path] = []
    real_import = gguf_import.import_gguf

    def counting(*args: Any, **kwargs: Any) -> Path:
        calls.append(Path(args[0]))
        return real_import(*args, **kwargs)

    monkeypatch.setattr(gguf_import, "import_gguf", counting)
    before = _imports()
    first = mlx_local.Model.load(path)
    new = _imports() - before
    assert len(calls) == 1 and len(new) == 1
    (folder,) = new
    assert first.path == folder and "cached" in folder.name
    assert not [p for p in folder.parent.iterdir() if ".partial-" in p.name]

    record = json.loads((folder / "mlx_local.json").read_text())
    assert record["source"]["type"] == "gguf"
    assert record["source"]["file"] == "cached.gguf"
    assert record["source"]["size"] == path.stat().st_size
    assert record["source"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert record["source"]["name"] == "tiny qwen3"
    assert record["import"]["weights"] == "quantized"
    summary = record["import"]["tensors"]  # GGUF type -> what became of it: tensor count
    assert sum(summary.values()) == len(weights) == 2 * 11 + 2
    assert sum(n for kind, n in summary.items() if kind.startswith("Q8_0")) == 2 * 7 + 1  # norms stay F32

    stamp = (folder / "config.json").stat().st_mtime_ns
    second = mlx_local.Model.load(path)
    assert len(calls) == 1 and _imports() - before == {folder}
    assert second.path == folder and (folder / "config.json").stat().st_mtime_ns == stamp
    ids = _ids(SMALL_VOCAB)
    assert np.array_equal(_logits(first.module, ids), _logits(second.module, ids))

    # Another weights mode is another import; so is a changed file.
    assert mlx_local.Model.load(path, gguf_weights="float").path != folder
    assert len(calls) == 2
    config, weights = small_model("qwen3", seed=1)
    write_gguf(path, config, {k: (v, T.Q8_0) for k, v in weights.items()}, _small_tokenizer(SMALL_VOCAB))
    changed = mlx_local.Model.load(path)
    assert len(calls) == 3 and changed.path != folder
    record = json.loads((changed.path / "mlx_local.json").read_text())
    assert record["source"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not np.allclose(_logits(changed.module, ids), _logits(first.module, ids))


def test_saved_import_opens_with_mlx_lm_and_model_load(tmp_path: Path) -> None:
    import mlx_lm

    config, weights = small_model("llama")
    path = write_gguf(tmp_path / "tiny.gguf", config, {k: (v, T.Q5_1) for k, v in weights.items()},
                      _small_tokenizer(SMALL_VOCAB))
    imported = mlx_local.Model.load(path)
    dest = imported.save(tmp_path / "saved")
    assert (dest / "config.json").is_file() and (dest / "mlx_local.json").is_file()

    before = _imports()
    reloaded = mlx_local.Model.load(dest)
    assert reloaded.path == dest and _imports() == before  # a folder now: nothing imported
    assert reloaded.quantization == imported.quantization == "5-bit, group 32"
    module, tokenizer = mlx_lm.load(str(dest))

    ids = _ids(SMALL_VOCAB)
    expected = _logits(_reference_module(config, {k: _as_stored(v, T.Q5_1) for k, v in weights.items()},
                                          tmp_path / "reference"), ids)
    for name, m in (("import", imported.module), ("Model.load", reloaded.module), ("mlx_lm.load", module)):
        err = _rel_err(_logits(m, ids), expected)
        assert err <= RTOL, f"{name}: logits off by {err:.3g} of their scale"
    text = "hello world, 123 tokens"
    assert list(tokenizer.encode(text)) == imported.encode(text, raw=True) == reloaded.encode(text, raw=True)
    assert tokenizer.eos_token_ids == imported.tokenizer.eos_token_ids == {SMALL_VOCAB - 1}

"""A Hugging Face Qwen3 folder written to GGUF, with Q4_0 tensors, for llama.cpp.

The benchmark's Qwen3-0.6B-shaped model (models.py) exists as a bfloat16
safetensors folder; llama.cpp needs a GGUF. :func:`write_qwen3_gguf` writes
the very same float weights, with the ``gguf`` package (a dependency of
mlx_local), the way llama.cpp's ``convert_hf_to_gguf.py`` + ``llama-quantize
--pure Q4_0`` would:

- architecture ``qwen3``, llama.cpp's tensor names (``token_embd``,
  ``blk.N.attn_q``, ..., ``output_norm``; Qwen3 needs no q/k permutation),
  tied embeddings (no ``output.weight``);
- every 2-D weight Q4_0 (blocks of 32: one float16 scale, 4-bit values),
  the embedding table included (``--pure``: no Q6_K output/embedding as
  llama-quantize's default mix would choose), norms float32;
- the tokenizer from the folder's ``tokenizer.json``: ``gpt2`` byte-level
  BPE with the ``qwen2`` pre-tokenizer, tokens, types, merges, the special
  ids and the chat template, padded to the model's vocabulary as the
  converter pads (``[PAD<i>]``, unused).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

#: HF name (after "model.layers.N.") -> llama.cpp name (after "blk.N.").
_LAYER_NAMES = {
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}
_TOP_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
              "lm_head.weight": "output.weight"}


def gguf_name(hf_name: str) -> str:
    """llama.cpp's name for a Qwen3 tensor of the Hugging Face checkpoint."""
    if hf_name in _TOP_NAMES:
        return _TOP_NAMES[hf_name]
    parts = hf_name.split(".", 3)
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[3] in _LAYER_NAMES:
        return f"blk.{parts[2]}.{_LAYER_NAMES[parts[3]]}"
    raise ValueError(f"no GGUF name for tensor {hf_name!r}")


def quantize_q4_0(a: np.ndarray, chunk_rows: int = 4096) -> np.ndarray:
    """``a`` (rows, cols; cols a multiple of 32) as Q4_0 blocks, one uint8 row of cols / 32 * 18 bytes per row.

    llama.cpp's ``quantize_row_q4_0_ref`` in numpy, in float32 as the C code
    computes: per block of 32, ``d = m / -8`` for ``m`` the value of largest
    magnitude, ``q = min(15, trunc(x / d + 8.5))``, stored as float16 ``d``
    then 16 bytes of nibbles (low nibbles: the block's first 16 values).
    """
    rows, cols = a.shape
    if cols % 32:
        raise ValueError(f"Q4_0 needs rows of a multiple of 32 values, not {cols}")
    out = np.empty((rows, cols // 32 * 18), dtype=np.uint8)
    for r in range(0, rows, chunk_rows):
        b = np.ascontiguousarray(a[r:r + chunk_rows], dtype=np.float32).reshape(-1, 32)
        m = np.take_along_axis(b, np.abs(b).argmax(axis=-1)[:, None], axis=-1)[:, 0]
        d = m / np.float32(-8)
        inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
        q = np.minimum(15, (b * inv[:, None] + np.float32(8.5)).astype(np.int8)).astype(np.uint8)
        blocks = np.empty((b.shape[0], 18), dtype=np.uint8)
        blocks[:, :2] = d.astype(np.float16).view(np.uint8).reshape(-1, 2)
        blocks[:, 2:] = q[:, :16] | (q[:, 16:] << 4)
        out[r:r + chunk_rows] = blocks.reshape(-1, cols // 32 * 18)
    return out


def _float_weights(folder: Path) -> dict[str, np.ndarray]:
    """The folder's safetensors as float32 numpy arrays (bfloat16 included, via MLX)."""
    import mlx.core as mx

    out: dict[str, np.ndarray] = {}
    for f in sorted(folder.glob("*.safetensors")):
        for k, v in mx.load(str(f)).items():
            out[k] = np.array(v.astype(mx.float32))
    return out


def _tokenizer(writer: Any, folder: Path, vocab_size: int) -> None:
    """Byte-level BPE tokenizer metadata from ``tokenizer.json`` (+ ``tokenizer_config.json``)."""
    import gguf

    tok = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    cfg_path = folder / "tokenizer_config.json"
    tcfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
    model = tok["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"{folder / 'tokenizer.json'}: a {model.get('type')} tokenizer, not byte-level BPE")
    by_id: dict[int, str] = {int(i): t for t, i in model["vocab"].items()}
    special: dict[int, bool] = {}
    for a in tok.get("added_tokens", []):
        by_id[int(a["id"])] = a["content"]
        special[int(a["id"])] = bool(a.get("special"))
    size = max(vocab_size, max(by_id) + 1)
    tokens, types = [], []
    for i in range(size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in special:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if special[i] else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    ids = {t: i for i, t in by_id.items()}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for key, add in (("eos_token", writer.add_eos_token_id), ("pad_token", writer.add_pad_token_id),
                     ("bos_token", writer.add_bos_token_id)):
        name = tcfg.get(key)
        if isinstance(name, dict):
            name = name.get("content")
        if name in ids:
            add(ids[name])
    if "bos_token" not in tcfg or tcfg["bos_token"] is None:  # what llama.cpp's converter sets for Qwen
        writer.add_bos_token_id(ids.get("<|endoftext|>", 0))
    writer.add_add_bos_token(bool(tcfg.get("add_bos_token", False)))
    if isinstance(tcfg.get("chat_template"), str):
        writer.add_chat_template(tcfg["chat_template"])


def write_qwen3_gguf(folder: Path, out: Path, *, name: str | None = None) -> Path:
    """Write the Qwen3 model in ``folder`` to ``out`` (GGUF, Q4_0 weights, float32 norms), atomically."""
    import gguf

    folder, out = Path(folder), Path(out)
    cfg = json.loads((folder / "config.json").read_text())
    if cfg.get("model_type") != "qwen3":
        raise ValueError(f"{folder}: model_type {cfg.get('model_type')!r}, this writer handles 'qwen3' only")
    weights = _float_weights(folder)
    tmp = out.with_name(f".{out.name}.partial")
    out.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(tmp), "qwen3")
    arch = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.QWEN3]
    assert arch == "qwen3"
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    w.add_name(name or folder.name)
    w.add_context_length(int(cfg.get("max_position_embeddings", 40960)))
    w.add_embedding_length(int(cfg["hidden_size"]))
    w.add_block_count(int(cfg["num_hidden_layers"]))
    w.add_feed_forward_length(int(cfg["intermediate_size"]))
    w.add_head_count(int(cfg["num_attention_heads"]))
    w.add_head_count_kv(int(cfg["num_key_value_heads"]))
    w.add_key_length(int(head_dim))
    w.add_value_length(int(head_dim))
    w.add_rope_freq_base(float(cfg.get("rope_theta", 1e6)))
    w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-6)))
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _tokenizer(w, folder, int(cfg["vocab_size"]))
    for hf, arr in weights.items():
        if hf == "lm_head.weight" and cfg.get("tie_word_embeddings"):
            continue
        if arr.ndim == 2 and arr.shape[1] % 32 == 0:
            q = quantize_q4_0(arr)
            w.add_tensor(gguf_name(hf), q, raw_dtype=gguf.GGMLQuantizationType.Q4_0)
        else:
            w.add_tensor(gguf_name(hf), arr.astype(np.float32))
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()
    os.replace(tmp, out)
    return out

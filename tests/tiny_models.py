"""Tiny random-weight models in Hugging Face layout, with real tokenizers.

`write_tiny_model(folder, "qwen3")` writes config.json, model.safetensors (HF
tensor names, seeded random weights) and the real tokenizer files of that
family from the npm assets, so the model loads through the same paths as a
downloaded one while staying a few MB of weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from conftest import asset_path

#: architecture -> (tokenizer asset, vocab size of that tokenizer's model)
TOKENIZERS = {
    "llama": ("tokenizer-llama3_1", 128256),
    "qwen3": ("tokenizer-qwen3", 151936),
    "gemma3": ("tokenizer-gemma3", 262144),
}


def tiny_config(arch: str, **overrides: Any) -> dict[str, Any]:
    vocab = TOKENIZERS[arch][1]
    base: dict[str, Any] = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "rms_norm_eps": 1e-6,
        "vocab_size": vocab,
        "max_position_embeddings": 4096,
        "rope_theta": 10000.0,
        "torch_dtype": "float32",
    }
    if arch == "llama":
        base.update(model_type="llama", architectures=["LlamaForCausalLM"], tie_word_embeddings=False,
                    bos_token_id=128000, eos_token_id=128009, attention_bias=False, mlp_bias=False)
    elif arch == "qwen3":
        base.update(model_type="qwen3", architectures=["Qwen3ForCausalLM"], tie_word_embeddings=True,
                    bos_token_id=151643, eos_token_id=151645, attention_bias=False)
    elif arch == "gemma3":
        base.update(model_type="gemma3_text", architectures=["Gemma3ForCausalLM"], tie_word_embeddings=True,
                    bos_token_id=2, eos_token_id=[1, 106], query_pre_attn_scalar=16, sliding_window=8,
                    sliding_window_pattern=2, layer_types=["sliding_attention", "full_attention"],
                    rope_local_base_freq=10000.0, hidden_activation="gelu_pytorch_tanh",
                    final_logit_softcapping=None, attn_logit_softcapping=None)
    else:
        raise ValueError(arch)
    base.update(overrides)
    return base


def tiny_weights(config: dict[str, Any], seed: int = 0, scale: float = 0.2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    h, f, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    hd, nh, nkv = config["head_dim"], config["num_attention_heads"], config["num_key_value_heads"]
    gemma = config["model_type"].startswith("gemma")

    def rand(*shape):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def norm(n):  # gemma norms are stored as w in (1 + w)
        return (rng.standard_normal(n) * 0.1 + (0.0 if gemma else 1.0)).astype(np.float32)

    w = {"model.embed_tokens.weight": rand(v, h), "model.norm.weight": norm(h)}
    if not config.get("tie_word_embeddings", False):
        w["lm_head.weight"] = rand(v, h)
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "self_attn.q_proj.weight"] = rand(nh * hd, h)
        w[p + "self_attn.k_proj.weight"] = rand(nkv * hd, h)
        w[p + "self_attn.v_proj.weight"] = rand(nkv * hd, h)
        w[p + "self_attn.o_proj.weight"] = rand(h, nh * hd)
        w[p + "mlp.gate_proj.weight"] = rand(f, h)
        w[p + "mlp.up_proj.weight"] = rand(f, h)
        w[p + "mlp.down_proj.weight"] = rand(h, f)
        w[p + "input_layernorm.weight"] = norm(h)
        w[p + "post_attention_layernorm.weight"] = norm(h)
        if config["model_type"] in ("qwen3", "gemma3_text"):
            w[p + "self_attn.q_norm.weight"] = norm(hd)
            w[p + "self_attn.k_norm.weight"] = norm(hd)
        if gemma:
            w[p + "pre_feedforward_layernorm.weight"] = norm(h)
            w[p + "post_feedforward_layernorm.weight"] = norm(h)
    return w


def copy_tokenizer(arch: str, folder: Path) -> None:
    src = asset_path(TOKENIZERS[arch][0])
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / name, folder / name)


def write_tiny_model(folder: Path, arch: str, *, seed: int = 0, scale: float = 0.2, **config_overrides: Any) -> Path:
    """Write a tiny `arch` model ("llama", "qwen3" or "gemma3") into `folder`.

    ``scale`` is the weights' standard deviation: smaller weights give flatter
    logits, which quantization changes less (a smaller KL divergence).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = tiny_config(arch, **config_overrides)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    save_file(tiny_weights(config, seed, scale), str(folder / "model.safetensors"), metadata={"format": "pt"})
    copy_tokenizer(arch, folder)
    return folder


def write_tiny_llama_like_smollm2(folder: Path, smollm2_folder: Path, *, scale: float = 0.05) -> Path:
    """A tiny float16 llama with SmolLM2's tokenizer (files from an imported SmolLM2 folder): a 49k vocabulary.

    The other tokenizers' vocabularies (128k-262k) make quality measurements (a KL over every token of the
    vocabulary at each of ~1000 positions) several times slower; small weights keep the logits flat, so
    quantization changes them little (a KL well under convert's default target).
    """
    folder = write_tiny_model(folder, "llama", scale=scale, tie_word_embeddings=True, torch_dtype="float16",
                              vocab_size=49152, bos_token_id=1, eos_token_id=2)  # fmt: skip
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copyfile(Path(smollm2_folder) / name, folder / name)
    return folder

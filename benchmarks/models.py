"""The model folders the benchmark runs on, built once and cached.

- SmolLM2-135M-Instruct from the embedded Q4_1 GGUF, three ways:
  float32 (``gguf_weights="float"``), 8-bit (``mlx_local.convert``, g64) and
  4-bit (``Model.load(gguf)``'s default: the Q4_1 blocks repacked losslessly,
  embeddings from the file's Q8_0).
- A random-weight model shaped exactly like Qwen3-0.6B (28 layers, hidden
  1024, 16 heads / 8 KV heads of 128, MLP 3072, vocabulary 151936, tied
  embeddings) with the real Qwen3 tokenizer, saved as bfloat16 safetensors
  like the real checkpoint and quantized to 4-bit (g64) by mlx-lm through
  ``mlx_local.convert``: what ``mlx-community/Qwen3-0.6B-4bit`` is, minus
  the trained weights (speed and memory do not depend on their values).
  The same float weights are also written to a Q4_0 GGUF beside it
  (gguf_writer.py), so llama.cpp runs the very same model.

Everything lives under ``$MLX_LOCAL_HOME/bench`` (``~/.cache/mlx_local/bench``);
the GGUF imports are mlx_local's own cached imports.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mlx_local  # first: it picks the BLAS before mlx loads
from mlx_local import _assets as assets

#: Bump when the way a cached model is built changes, so it is rebuilt.
BUILD_VERSION = 1

QWEN3_0_6B_CONFIG = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "hidden_size": 1024,
    "intermediate_size": 3072,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "hidden_act": "silu",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000,
    "rope_scaling": None,
    "max_position_embeddings": 40960,
    "max_window_layers": 28,
    "sliding_window": None,
    "use_sliding_window": False,
    "tie_word_embeddings": True,
    "vocab_size": 151936,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "torch_dtype": "bfloat16",
    "use_cache": True,
}


@dataclass(frozen=True)
class BenchModel:
    """One configuration: a name, its MLX model folder and what it came from."""

    name: str  # e.g. "smollm2-135m-4bit"
    label: str  # for tables and charts
    folder: Path  # the MLX/HF folder both systems load
    source_file: Path | None  # the GGUF it was imported from, if any
    description: str
    peer_gguf: Path | None = None  # the GGUF llama.cpp runs as this configuration's peer, if any


def bench_home() -> Path:
    return assets.home() / "bench"


def folder_bytes(path: Path) -> int:
    """Bytes on disk of a file, or of every file in a folder."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def _build_once(folder: Path, build: Callable[[Path], None], log: Callable[[str], None]) -> Path:
    """Run ``build(tmp)`` and rename tmp to ``folder``, unless ``folder`` is already there."""
    if _complete(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"building {folder} (once; cached for later runs)")
    build(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def _imported_folder(gguf: Path, gguf_weights: str) -> Path:
    """mlx_local's cached import folder of ``gguf`` (imported now if needed)."""
    import gc

    model = mlx_local.Model.load(gguf, gguf_weights=gguf_weights, progress=False)
    folder = model.path
    del model
    gc.collect()
    return folder


def write_qwen3_shaped(folder: Path, seed: int = 0) -> None:
    """A random bfloat16 model with Qwen3-0.6B's shapes, HF tensor names and tokenizer."""
    import mlx.core as mx

    cfg = QWEN3_0_6B_CONFIG
    h, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd, nh, nkv = cfg["head_dim"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    counter = seed * 10_000

    def rand(*shape: int) -> mx.array:  # N(0, 0.02), the initializer_range of the real config
        nonlocal counter
        counter += 1
        return (mx.random.normal(shape, key=mx.random.key(counter)) * 0.02).astype(mx.bfloat16)

    def ones(n: int) -> mx.array:
        return mx.ones((n,), dtype=mx.bfloat16)

    w = {"model.embed_tokens.weight": rand(v, h), "model.norm.weight": ones(h)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "self_attn.q_proj.weight"] = rand(nh * hd, h)
        w[p + "self_attn.k_proj.weight"] = rand(nkv * hd, h)
        w[p + "self_attn.v_proj.weight"] = rand(nkv * hd, h)
        w[p + "self_attn.o_proj.weight"] = rand(h, nh * hd)
        w[p + "self_attn.q_norm.weight"] = ones(hd)
        w[p + "self_attn.k_norm.weight"] = ones(hd)
        w[p + "mlp.gate_proj.weight"] = rand(f, h)
        w[p + "mlp.up_proj.weight"] = rand(f, h)
        w[p + "mlp.down_proj.weight"] = rand(h, f)
        w[p + "input_layernorm.weight"] = ones(h)
        w[p + "post_attention_layernorm.weight"] = ones(h)
    folder.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(folder / "model.safetensors"), w, metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    tok = assets.path("tokenizer-qwen3")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tok / name, folder / name)


def qwen3_shaped_gguf(bf16: Path, log: Callable[[str], None] = print) -> Path:
    """The Qwen3-0.6B-shaped bfloat16 folder's weights as a Q4_0 GGUF for llama.cpp, beside it (built once)."""
    from gguf_writer import write_qwen3_gguf

    out = bf16.with_name(f"qwen3-0.6b-shape-q4_0-v{BUILD_VERSION}.gguf")
    if not out.is_file():
        log(f"writing {out} (Q4_0, for llama.cpp; once)")
        write_qwen3_gguf(bf16, out, name="Qwen3-0.6B-shaped (random weights)")
    return out


def prepare(names: list[str] | None = None, log: Callable[[str], None] = print,
            peer_ggufs: bool = True) -> list[BenchModel]:
    """The benchmark's models (building what is missing), in table order.

    ``names`` limits which ones (see the ``name`` fields); None: all.
    ``peer_ggufs``: also write the GGUFs llama.cpp runs (the Qwen3 shape's Q4_0).
    """
    gguf = assets.path("smollm2")
    home = bench_home()
    out: list[BenchModel] = []

    def want(name: str) -> bool:
        return names is None or name in names

    if want("smollm2-135m-f32"):
        out.append(BenchModel("smollm2-135m-f32", "SmolLM2-135M f32", _imported_folder(gguf, "float"), gguf,
                              "SmolLM2-135M-Instruct, Q4_1 GGUF dequantized to float32 (gguf_weights='float')"))
    if want("smollm2-135m-8bit"):
        def build8(tmp: Path) -> None:
            mlx_local.convert(gguf, tmp, bits=8, quality=False)

        folder = _build_once(home / f"smollm2-135m-8bit-v{BUILD_VERSION}", build8, log)
        out.append(BenchModel("smollm2-135m-8bit", "SmolLM2-135M 8-bit", folder, gguf,
                              "SmolLM2-135M-Instruct, Q4_1 GGUF re-quantized by mlx_local.convert(bits=8), group 64"))
    if want("smollm2-135m-4bit"):
        out.append(BenchModel("smollm2-135m-4bit", "SmolLM2-135M 4-bit", _imported_folder(gguf, "quantized"), gguf,
                              "SmolLM2-135M-Instruct, Q4_1 GGUF repacked losslessly (Model.load default), 4-bit g32, "
                              "embeddings 8-bit", peer_gguf=gguf))
    if want("qwen3-0.6b-shape-4bit"):
        bf16 = _build_once(home / f"qwen3-0.6b-shape-bf16-v{BUILD_VERSION}", write_qwen3_shaped, log)

        def build4(tmp: Path) -> None:
            mlx_local.convert(bf16, tmp, bits=4, quality=False)

        folder = _build_once(home / f"qwen3-0.6b-shape-4bit-v{BUILD_VERSION}", build4, log)
        out.append(BenchModel("qwen3-0.6b-shape-4bit", "Qwen3-0.6B-shaped 4-bit", folder, None,
                              "random weights shaped like Qwen3-0.6B, bfloat16, quantized by mlx-lm to 4-bit g64 "
                              "(bfloat16 scales, like mlx-community/Qwen3-0.6B-4bit)",
                              peer_gguf=qwen3_shaped_gguf(bf16, log) if peer_ggufs else None))
    return out


if __name__ == "__main__":  # build (or find) them all and say where they are
    for m in prepare():
        print(f"{m.name:24} {folder_bytes(m.folder) / 1e6:8.1f} MB  {m.folder}")

"""Memory estimates against what MLX really allocates: peaks measured in fresh processes (the slow half of
test_memory, apart so that the two halves run on different workers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import mlx_local

from tiny_models import write_tiny_model

pytestmark = pytest.mark.slow  # real models and subprocesses

HERE = Path(__file__).parent


# -------------------------------------------------- against measured peak

_MEASURE = r"""
import json, sys
import mlx_local
import mlx.core as mx
src, gguf_weights, contexts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
model = mlx_local.Model.load(src, gguf_weights=gguf_weights, force=True)
ids = model.encode("The history of the river town is long and full of small events. " * 400, raw=True)
out = []
for n in contexts:
    opts = model.default_options.updated(max_tokens=16, temperature=0.0, stop=())
    last = list(model.run(ids[: n - 16], opts))[-1]
    out.append({"context": n, "peak": mx.get_peak_memory(), "generated": last.stats.generated_tokens})
    mx.clear_cache()
    mx.reset_peak_memory()
print(json.dumps(out))
"""


def _measured_peaks(source: Path, contexts: list[int], gguf_weights: str = "quantized") -> list[dict]:
    # The estimate is fitted to the unfused CPU path; the fused ops' tiled attention peaks lower at long prompts
    # and is not refitted yet (see _memory._overhead), so the peaks are measured without them.
    env = {**os.environ, "MLX_LOCAL_FUSED": "off"}
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(source), gguf_weights, json.dumps(contexts)],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _check_within(source: Path, rows: list[dict], tolerance: float, **kwargs) -> None:
    report = []
    for row in rows:
        est = mlx_local.estimate_memory(source, context=row["context"], **kwargs)
        report.append((row["context"], est.total, row["peak"], est.total / row["peak"] - 1))
    bad = [r for r in report if abs(r[3]) > tolerance]
    assert not bad, "estimate vs measured peak (context, estimate, peak, error): " + repr(report)


@pytest.mark.parametrize("gguf_weights", ["quantized", "float"])
def test_estimate_within_15_percent_of_peak_on_smollm2(smollm2_gguf, gguf_weights):
    rows = _measured_peaks(smollm2_gguf, [128, 1024] if gguf_weights == "quantized" else [128, 2048], gguf_weights)
    _check_within(smollm2_gguf, rows, 0.15, gguf_weights=gguf_weights)


@pytest.mark.parametrize("arch, overrides", [
    ("llama", {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 3, "num_attention_heads": 8,
               "num_key_value_heads": 2, "head_dim": 16}),
    ("qwen3", {}),
    ("gemma3", {"sliding_window": 256, "num_hidden_layers": 4,
                "layer_types": ["sliding_attention", "full_attention"] * 2}),
])  # fmt: skip
def test_estimate_within_15_percent_of_peak_on_tiny_models(tmp_path, arch, overrides):
    folder = write_tiny_model(tmp_path / arch, arch, seed=0, **overrides)
    mlx_local.convert(folder, tmp_path / "q4", bits=4, quality=False)
    for source in (folder, tmp_path / "q4"):
        rows = _measured_peaks(source, [128, 1024, 4096])
        _check_within(source, rows, 0.15)


#: Qwen2.5-0.5B's shape, but with its output head untied (as in the GGUF trial of issue 12):
#: a 152k vocabulary, an MLP five times the hidden size, q/k/v biases; 8 of its 24 layers (what the
#: estimate is tested on, the head and one layer's transient, is per layer: 8 cost a third of 24).
QWEN2_5_0_5B = {
    "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 896, "num_hidden_layers": 8,
    "num_attention_heads": 14, "num_key_value_heads": 2, "head_dim": 64, "intermediate_size": 4864,
    "vocab_size": 151936, "tie_word_embeddings": False, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
    "max_position_embeddings": 32768, "torch_dtype": "float16", "bos_token_id": 151643, "eos_token_id": 151645,
}  # fmt: skip


@pytest.fixture(scope="module")
def qwen2_5_0_5b_shape(tmp_path_factory) -> Path:
    """An HF-layout float16 folder of that shape with seeded random weights (0.8 GB) and Qwen's tokenizer."""
    import numpy as np
    from safetensors.numpy import save_file

    from tiny_models import copy_tokenizer

    c = QWEN2_5_0_5B
    h, f, v, hd = c["hidden_size"], c["intermediate_size"], c["vocab_size"], c["head_dim"]
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    rng = np.random.default_rng(0)

    def rand(*shape: int):
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)

    w = {"model.embed_tokens.weight": rand(v, h), "lm_head.weight": rand(v, h), "model.norm.weight": np.ones(h, np.float16)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for name, shape in [("self_attn.q_proj", (q, h)), ("self_attn.k_proj", (kv, h)), ("self_attn.v_proj", (kv, h))]:
            w[p + name + ".weight"], w[p + name + ".bias"] = rand(*shape), rand(shape[0])
        w[p + "self_attn.o_proj.weight"] = rand(h, q)
        w[p + "mlp.gate_proj.weight"], w[p + "mlp.up_proj.weight"], w[p + "mlp.down_proj.weight"] = rand(f, h), rand(f, h), rand(h, f)
        w[p + "input_layernorm.weight"] = w[p + "post_attention_layernorm.weight"] = np.ones(h, np.float16)
    folder = tmp_path_factory.mktemp("qwen2_5_0_5b") / "float16"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(c))
    save_file(w, str(folder / "model.safetensors"), metadata={"format": "pt"})
    copy_tokenizer("qwen3", folder)  # Qwen3 kept Qwen2.5's tokenizer: the same 151936 ids
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("bits", [5, 4])
def test_estimate_within_15_percent_of_peak_on_a_qwen2_5_0_5b_shape(qwen2_5_0_5b_shape, tmp_path, bits):
    """A big vocabulary, an untied head and a wide MLP: dequantizing for the prefill dominates the overhead."""
    before = {n: mlx_local.estimate_memory(qwen2_5_0_5b_shape, context=n, bits=bits) for n in (128, 1024)}
    quantized = tmp_path / f"q{bits}"
    mlx_local.convert(qwen2_5_0_5b_shape, quantized, bits=bits, quality=False)
    rows = _measured_peaks(quantized, [128, 1024])
    _check_within(quantized, rows, 0.15)
    for n, est in before.items():  # what convert would make, estimated before converting, is the same
        assert est.total == mlx_local.estimate_memory(quantized, context=n).total


# ------------------------------------------------------ Model.load check



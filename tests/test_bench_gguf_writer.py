"""benchmarks/gguf_writer.py: the Q4_0 GGUF the benchmark writes for llama.cpp.

The quantizer must be llama.cpp's (byte for byte what gguf-py's reference
gives), and the file must hold the model it was written from: read back by
mlx_local's own GGUF import, it computes what the float model computes with
the Q4_0-rounded weights, and its tokenizer encodes as the original does.
(That llama.cpp loads it as ``qwen3`` is checked by running the benchmark.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import mlx_local

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import gguf_writer  # noqa: E402

from tiny_models import write_tiny_model  # noqa: E402


def test_q4_0_is_byte_identical_to_gguf_py() -> None:
    rng = np.random.default_rng(3)
    a = (rng.standard_normal((96, 256)) * 0.05).astype(np.float32)
    a[0, :32] = 0.0  # an all-zero block: scale 0
    a[1, 5] = 3.0  # one large value dominating its block
    ours = gguf_writer.quantize_q4_0(a, chunk_rows=40)  # several chunks, a partial last one
    ref = gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q4_0)
    assert ours.shape == ref.shape == (96, 256 // 32 * 18)
    assert np.array_equal(ours, ref)


def test_q4_0_rejects_rows_not_a_multiple_of_32() -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        gguf_writer.quantize_q4_0(np.zeros((4, 48), np.float32))


def test_gguf_name_of_an_unknown_tensor_says_which() -> None:
    assert gguf_writer.gguf_name("model.layers.7.mlp.down_proj.weight") == "blk.7.ffn_down.weight"
    with pytest.raises(ValueError, match="model.layers.0.mlp.experts"):
        gguf_writer.gguf_name("model.layers.0.mlp.experts.weight")


@pytest.mark.slow
def test_written_gguf_holds_the_model(tmp_path: Path) -> None:
    import mlx.core as mx

    hf = write_tiny_model(tmp_path / "hf", "qwen3")
    out = gguf_writer.write_qwen3_gguf(hf, tmp_path / "m.gguf")
    assert out.is_file() and not list(tmp_path.glob(".*partial"))

    # The float model with every 2-D weight rounded through Q4_0: what the GGUF must compute.
    rounded = tmp_path / "rounded"
    rounded.mkdir()
    w = load_file(str(hf / "model.safetensors"))
    for k, v in w.items():
        if v.ndim == 2:
            w[k] = gguf.quants.dequantize(gguf_writer.quantize_q4_0(v), gguf.GGMLQuantizationType.Q4_0)
    save_file(w, str(rounded / "model.safetensors"), metadata={"format": "pt"})
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (rounded / name).write_bytes((hf / name).read_bytes())

    from_gguf = mlx_local.Model.load(out, progress=False)
    expected = mlx_local.Model.load(rounded, progress=False)
    cfg = json.loads((hf / "config.json").read_text())
    got_cfg = json.loads((from_gguf.path / "config.json").read_text())
    for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
              "intermediate_size", "vocab_size"):
        assert got_cfg[k] == cfg[k], k

    text = "The quick brown fox, 42 times. <|im_start|>user\nhi<|im_end|>"
    ids = expected.tokenizer.encode(text)
    assert from_gguf.tokenizer.encode(text) == ids
    x = mx.array([ids])
    a = np.array(from_gguf.module(x)[0].astype(mx.float32))
    b = np.array(expected.module(x)[0].astype(mx.float32))
    assert np.abs(a - b).max() <= 1e-3 * np.abs(b).max()

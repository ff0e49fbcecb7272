"""Model folders in MLX layout (made by mlx-lm) load as they are, computed in float32 here."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm import convert as mlx_lm_convert
from mlx_lm import load as mlx_lm_load

import mlx_local

from tiny_models import write_tiny_model

pytestmark = pytest.mark.slow  # real models, subprocesses or the network stand-in


@pytest.fixture(scope="module")
def mlx_4bit_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlx")
    hf = write_tiny_model(root / "hf", "qwen3", seed=5)
    out = root / "mlx-4bit"
    mlx_lm_convert(str(hf), str(out), quantize=True, q_bits=4, q_group_size=64, dtype="bfloat16")
    return out


def test_mlx_quantized_folder_loads_and_matches_mlx_lm(mlx_4bit_folder):
    model = mlx_local.Model.load(mlx_4bit_folder)
    assert model.quantization == "4-bit, group 64"
    assert model.dtype == "float32"
    q_proj = model.module.model.layers[0].self_attn.q_proj
    assert q_proj.scales.dtype == mx.float32  # stored as bfloat16, computed in float32

    reference, _ = mlx_lm_load(str(mlx_4bit_folder))
    reference.set_dtype(mx.float32)  # same weights, same dtype: same numbers
    ids = mx.array([model.encode("The quick brown fox jumps over the lazy dog.")])
    ours = np.array(model.module(ids))
    theirs = np.array(reference(ids))
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def test_cpu_prefill_path_equals_decode_path(mlx_4bit_folder):
    """Prompt processing dequantizes for BLAS, decoding uses the quantized kernel:
    both give the same logits for the same positions."""
    from mlx_lm.models.cache import make_prompt_cache

    model = mlx_local.Model.load(mlx_4bit_folder)
    ids = model.encode("One two three four five six")
    whole = np.array(model.module(mx.array([ids])))[0]
    cache = make_prompt_cache(model.module)
    stepwise = [np.array(model.module(mx.array([[t]]), cache=cache))[0, 0] for t in ids]
    np.testing.assert_allclose(whole, np.stack(stepwise), rtol=1e-3, atol=1e-3)


def test_explicit_dtype(mlx_4bit_folder):
    model = mlx_local.Model.load(mlx_4bit_folder, dtype="bfloat16")
    assert model.dtype == "bfloat16"
    assert model.module.model.layers[0].self_attn.q_proj.scales.dtype == mx.bfloat16
    assert model.generate("Hi", max_tokens=2).stats.generated_tokens == 2

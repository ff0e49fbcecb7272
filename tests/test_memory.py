"""Will it fit: estimate_memory() against what MLX really allocates, and Model.load's check."""

from __future__ import annotations

from pathlib import Path

import pytest

import mlx_local
from mlx_local import _memory as memory
from mlx_local import _units as units

from tiny_models import write_tiny_model

pytestmark = pytest.mark.slow  # real models and subprocesses

HERE = Path(__file__).parent


# ------------------------------------------------------- exact components


def _cache_bytes(cache: list) -> int:
    """Bytes mlx-lm's caches hold: allocated KV buffers, or recurrent states."""
    total = 0
    for c in cache:
        arrays = [c.keys, c.values] if hasattr(c, "keys") else list(c.cache)
        total += sum(a.nbytes for a in arrays if a is not None)
    return total


def _param_bytes(model: mlx_local.Model) -> int:
    from mlx.utils import tree_flatten

    return sum(v.nbytes for _, v in tree_flatten(model.module.parameters()))


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma3"])
def test_weights_estimate_is_exact_for_folders(tmp_path, arch):
    folder = write_tiny_model(tmp_path / arch, arch, seed=2, torch_dtype="bfloat16")
    est = mlx_local.estimate_memory(folder)
    assert est.dtype == "float32" and est.basis == "safetensors headers"
    assert est.weights == _param_bytes(mlx_local.Model.load(folder))


def test_weights_estimate_is_exact_for_quantized_and_hypothetical_bits(tmp_path):
    folder = write_tiny_model(tmp_path / "float", "qwen3", seed=2)
    as_4bit = mlx_local.estimate_memory(folder, bits=4, group_size=32)
    mlx_local.convert(folder, tmp_path / "q4", bits=4, group_size=32, quality=False)
    stored = mlx_local.estimate_memory(tmp_path / "q4")
    actual = _param_bytes(mlx_local.Model.load(tmp_path / "q4"))
    assert stored.weights == actual
    assert as_4bit.weights == actual  # what convert would make, before converting
    assert stored.weights < 0.4 * mlx_local.estimate_memory(folder).weights


@pytest.mark.parametrize("gguf_weights", ["quantized", "float"])
def test_weights_estimate_is_exact_for_gguf_before_import(smollm2_gguf, gguf_weights, smollm2, smollm2_float):
    est = mlx_local.estimate_memory(smollm2_gguf, gguf_weights=gguf_weights)
    assert est.basis == "the GGUF header"
    model = smollm2 if gguf_weights == "quantized" else smollm2_float
    assert est.weights == _param_bytes(model)
    assert est.details["parameters"] == pytest.approx(134_515_008, rel=0.01)


@pytest.mark.parametrize("arch, overrides", [
    ("llama", {}),
    ("qwen3", {"num_key_value_heads": 1}),
    ("gemma3", {"sliding_window": 64, "num_hidden_layers": 4,  # sliding layers hold their window only
                "layer_types": ["sliding_attention", "full_attention"] * 2}),
])  # fmt: skip
@pytest.mark.parametrize("prompt_tokens", [40, 300, 700])
def test_kv_cache_estimate_matches_mlx_lm_caches(tmp_path, arch, overrides, prompt_tokens):
    from mlx_local.types import PromptCache

    folder = write_tiny_model(tmp_path / arch, arch, seed=1, **overrides)
    model = mlx_local.Model.load(folder)
    store = PromptCache()
    ids = (model.encode("The cat sat on the mat and looked at the dog. ", raw=True) * 200)[:prompt_tokens]
    opts = model.default_options.updated(max_tokens=20, temperature=0.0)
    result = list(model.run(ids, opts, prompt_cache=store))
    generated = [t for chunk in result for t in chunk.token_ids]
    cache, held = store.take(ids + generated + [0])  # the whole cache back, untrimmed
    assert held == len(ids) + len(generated)
    context = prompt_tokens + result[-1].stats.generated_tokens
    assert mlx_local.estimate_memory(folder, context=context).kv_cache == _cache_bytes(cache)


def test_linear_attention_state_matches_mlx_lm_qwen3_5():
    """Qwen3.5's Gated DeltaNet layers keep a fixed state; mlx-lm's own model says how big."""
    import mlx.core as mx
    from mlx_lm.models import qwen3_5
    from mlx_lm.models.cache import make_prompt_cache

    config = {
        "model_type": "qwen3_5", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 256,
        "rms_norm_eps": 1e-6, "linear_num_value_heads": 4, "linear_num_key_heads": 2, "linear_key_head_dim": 16,
        "linear_value_head_dim": 8, "linear_conv_kernel_dim": 4, "full_attention_interval": 4,
        "rope_theta": 10000.0, "partial_rotary_factor": 0.25, "max_position_embeddings": 4096,
        "tie_word_embeddings": True,
    }  # fmt: skip
    args = qwen3_5.TextModelArgs.from_dict(config)
    model = qwen3_5.TextModel(args)
    model.set_dtype(mx.float32)
    cache = make_prompt_cache(model)
    mx.eval(model(mx.array([list(range(100))]), cache=cache))
    assert memory.kv_cache_bytes(config, 100, 4) == _cache_bytes(cache)


def test_load_refuses_what_does_not_fit_and_names_what_would(smollm2_gguf, monkeypatch):
    est = mlx_local.estimate_memory(smollm2_gguf)
    monkeypatch.setenv("MLX_LOCAL_MEMORY_LIMIT", str(est.total // 2))
    with pytest.raises(mlx_local.InsufficientMemoryError) as e:
        mlx_local.Model.load(smollm2_gguf)
    message = str(e.value)
    assert units.format_bytes(est.total) in message and "force=True" in message
    assert e.value.required == est.total and e.value.available == est.total // 2
    assert e.value.suggestion is None or e.value.suggestion in message
    assert isinstance(e.value, MemoryError)
    assert mlx_local.Model.load(smollm2_gguf, force=True).generate("Hi", max_tokens=2).text


def test_load_suggests_a_smaller_catalog_model(monkeypatch, hf_cache, no_network):
    monkeypatch.setenv("MLX_LOCAL_MEMORY_LIMIT", "3GB")
    with pytest.raises(mlx_local.InsufficientMemoryError) as e:
        mlx_local.Model.load("qwen3-8b", offline=True)
    fits = mlx_local.estimate_memory(e.value.suggestion, offline=True)
    assert e.value.suggestion.startswith("qwen3-") and fits.total <= 3e9
    assert e.value.suggestion in str(e.value)
    assert no_network == []  # refused from the catalog, before any download


def test_estimate_errors_are_clear(tmp_path, no_network):
    with pytest.raises(mlx_local.InvalidOptionError, match="context"):
        mlx_local.estimate_memory(None, context=0)
    with pytest.raises(mlx_local.InvalidOptionError, match="bits"):
        mlx_local.estimate_memory(None, bits=7)
    with pytest.raises(mlx_local.ModelNotFoundError, match="qwen3-0.6b"):
        mlx_local.estimate_memory("qwen3-06b")
    with pytest.raises(mlx_local.ModelNotFoundError, match="offline"):
        mlx_local.estimate_memory("someone/not-downloaded", offline=True)
    (tmp_path / "notes").mkdir()
    with pytest.raises(mlx_local.InvalidModelError, match="config.json"):
        mlx_local.estimate_memory(tmp_path / "notes")

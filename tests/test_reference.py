"""mlx_local computes what transformers' PyTorch models compute.

For tiny random models of each supported family (tests/tiny_models.py: HF
layout, float32 weights, the real tokenizers), the logits of
``Model.load(folder).module`` must equal those of transformers' own
implementation on the same weights, and greedy generation must pick the same
tokens. transformers is the reference implementation of these architectures,
so this catches wrong configs, weight layouts, rope variants, attention masks
(Gemma 3's sliding window) and KV-cache handling.

Tolerance: both sides compute in float32, with different kernels and summation
orders, so logits agree to about 1e-6 of their scale (observed: ~1.5e-6). The
tests allow ``max |mlx - torch| <= 1e-4 * max |torch|`` and check, for Gemma 3,
that the sliding window changes the logits by far more than that.

PyTorch is a test dependency (``pip install torch==2.13.0``, the CPU build on
Linux); without it these tests fail, they are not skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlx.core as mx  # noqa: E402  (after mlx_local on purpose)
import numpy as np
import pytest

# mlx_local first: it picks the BLAS before MLX is loaded.
import mlx_local

from tiny_models import write_tiny_model

pytestmark = pytest.mark.slow  # real models, subprocesses or the network stand-in

#: Relative logit tolerance for float32 against float32 (see the module docstring).
RTOL = 1e-4

#: A varied prompt: prose, digits, code, accents, CJK, emoji. 25-45 tokens with
#: every tokenizer, so well past Gemma 3's tiny sliding window of 8.
PROMPT = (
    "The quick brown fox jumps over 13 lazy dogs; print(f'{x**2:.3f}') "
    "costs 4.50 € in Zürich, 東京 too 🚀"
)

#: Each case: tiny_models architecture and config overrides.
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("llama", {}),
    # Llama 3.1's rope scaling; with head_dim 16 and theta 5e5 half the
    # frequencies are rescaled, so a mistake in it shows.
    "llama3_rope": (
        "llama",
        {
            "rope_theta": 500000.0,
            "max_position_embeddings": 131072,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
        },
    ),
    "qwen3": ("qwen3", {}),
    # Four layers, sliding/full alternating (pattern 2, window 8); global rope
    # base differs from the local one, and query_pre_attn_scalar from head_dim,
    # so each is checked to be read from the config.
    "gemma3": (
        "gemma3",
        {
            "num_hidden_layers": 4,
            "layer_types": ["sliding_attention", "full_attention"] * 2,
            "sliding_window_pattern": 2,
            "rope_theta": 1_000_000.0,
            "query_pre_attn_scalar": 32,
        },
    ),
}


def _torch() -> Any:
    """PyTorch, or a test failure (not a skip) that says how to install it."""
    try:
        import torch
    except ImportError as e:
        pytest.fail(
            f"PyTorch is not importable ({e}); the reference tests need it. "
            "Install the CPU build with: pip install torch==2.13.0",
            pytrace=False,
        )
    return torch


def _torch_model(torch: Any, folder: Path, **config_overrides: Any) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager", **config_overrides
    )
    return model.eval()


def _torch_logits(torch: Any, model: Any, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy().astype(np.float64)


def _mlx_logits(model: mlx_local.Model, ids: list[int]) -> np.ndarray:
    return np.array(model.module(mx.array([ids]))[0], dtype=np.float64)


class _Cases:
    """Each case's folder, mlx_local model and transformers model, made once."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self._tmp, self._made = tmp_path_factory, {}

    def __getitem__(self, name: str) -> tuple[Path, mlx_local.Model, Any]:
        if name not in self._made:
            arch, overrides = CASES[name]
            folder = write_tiny_model(self._tmp.mktemp(name), arch, **overrides)
            self._made[name] = (folder, mlx_local.Model.load(folder), _torch_model(_torch(), folder))
        return self._made[name]


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> _Cases:
    return _Cases(tmp_path_factory)


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_transformers(cases: _Cases, name: str) -> None:
    torch = _torch()
    _, model, reference = cases[name]
    assert model.dtype == "float32"
    ids = model.encode(PROMPT, raw=True)
    assert 20 <= len(ids) <= 48, len(ids)

    expected = _torch_logits(torch, reference, ids)
    actual = _mlx_logits(model, ids)
    assert actual.shape == expected.shape == (len(ids), model.config["vocab_size"])
    scale = np.abs(expected).max()
    assert scale > 1.0  # random weights give logits of a few units: not a degenerate model
    err = np.abs(actual - expected).max()
    assert err <= RTOL * scale, f"{name}: max |mlx - torch| = {err:.3g}, logit scale {scale:.3g}"


def test_gemma3_sliding_window_is_exercised(cases: _Cases) -> None:
    """The prompt is long enough that the window changes the logits, so the
    match above really checks that both sides apply it the same way."""
    torch = _torch()
    folder, model, reference = cases["gemma3"]
    window = model.config["sliding_window"]
    ids = model.encode(PROMPT, raw=True)
    assert len(ids) > 2 * window

    with_window = _torch_logits(torch, reference, ids)
    without = _torch_logits(torch, _torch_model(torch, folder, sliding_window=4096), ids)
    scale = np.abs(with_window).max()
    # Identical while the whole prefix fits in the window...
    assert np.abs(with_window[:window] - without[:window]).max() <= RTOL * scale
    # ...and far apart after it, by much more than the tolerance of the match.
    assert np.abs(with_window[window:] - without[window:]).max() > 100 * RTOL * scale


@pytest.mark.parametrize("name", list(CASES))
def test_greedy_generation_matches_transformers(cases: _Cases, name: str) -> None:
    torch = _torch()
    from transformers import GenerationConfig

    _, model, reference = cases[name]
    messages = [{"role": "user", "content": PROMPT}]
    prompt_ids = model.encode(messages)  # through the chat template, as generate() does
    result = model.generate(messages, max_tokens=10, temperature=0.0)

    eos = sorted(model.tokenizer.eos_token_ids)
    config = GenerationConfig(
        max_new_tokens=10, do_sample=False, eos_token_id=eos, pad_token_id=eos[0], bos_token_id=None
    )
    with torch.no_grad():
        out = reference.generate(
            torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
            generation_config=config,
        )
    expected = [int(t) for t in out[0, len(prompt_ids):]]
    assert list(result.token_ids) == expected, f"{name}: mlx {list(result.token_ids)} != torch {expected}"
    assert len(expected) == 10 or expected[-1] in eos
    assert result.finish_reason == ("length" if expected[-1] not in eos else "stop")

"""Model.load / generate / stream on the real SmolLM2-135M-Instruct."""

from __future__ import annotations

import json
import re

import pytest

import mlx_local
from mlx_local.types import Chunk, Result

pytestmark = pytest.mark.slow  # real models, subprocesses or the network stand-in

PARIS = "What is the capital of France?"


def test_answers_paris_in_4bit(smollm2):
    result = smollm2.generate(PARIS, max_tokens=24)
    assert "Paris" in result.text
    assert result.finish_reason == "stop"
    assert smollm2.quantization.startswith("4-bit, group 32")


def test_answers_paris_in_float(smollm2_float):
    result = smollm2_float.generate(PARIS, max_tokens=24)
    assert "Paris" in result.text
    assert smollm2_float.quantization == "none"


def test_story_is_coherent_english(smollm2):
    text = smollm2.generate("Write a short story about a cat who finds a key.", max_tokens=60).text
    words = re.findall(r"[A-Za-z']+", text)
    assert len(words) >= 35, text
    common = {"the", "a", "and", "was", "to", "of", "in", "she", "he", "her", "his", "it", "cat"}
    assert sum(w.lower() in common for w in words) >= 8, text
    # Mostly plain English letters, no garbage bytes or endless repetition of one word.
    assert sum(c.isascii() for c in text) / len(text) > 0.97, text
    assert max(words.count(w) for w in set(words)) < len(words) / 4, text


def test_greedy_output_is_reproducible(smollm2):
    a = smollm2.generate("Name three fruits.", max_tokens=16)
    b = smollm2.generate("Name three fruits.", max_tokens=16)
    assert a.text == b.text and a.token_ids == b.token_ids


def test_same_seed_same_output_other_seed_other_output(smollm2):
    options = dict(max_tokens=16, temperature=1.0, top_p=0.95, seed=7)
    a = smollm2.generate("Tell me about the sea.", **options)
    b = smollm2.generate("Tell me about the sea.", **options)
    assert a.token_ids == b.token_ids
    others = {smollm2.generate("Tell me about the sea.", **{**options, "seed": s}).token_ids for s in (1, 2, 3)}
    assert len(others | {a.token_ids}) > 1


def test_stream_joins_to_generate_text(smollm2):
    options = dict(max_tokens=20, temperature=0.8, seed=3)
    chunks = list(smollm2.stream("Describe a sunrise in one sentence.", **options))
    result = smollm2.generate("Describe a sunrise in one sentence.", **options)
    assert all(isinstance(c, Chunk) for c in chunks)
    assert "".join(c.text for c in chunks) == result.text
    assert [c.finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1].finish_reason == result.finish_reason
    assert chunks[-1].stats is not None and all(c.stats is None for c in chunks[:-1])
    streamed_ids = tuple(i for c in chunks for i in c.token_ids)
    assert streamed_ids == result.token_ids and len(streamed_ids) == result.stats.generated_tokens


def test_stop_string_ends_generation_and_is_not_returned(smollm2):
    full = smollm2.generate(PARIS, max_tokens=24).text
    assert "Paris" in full
    cut = smollm2.generate(PARIS, max_tokens=24, stop=["Paris"])
    assert cut.finish_reason == "stop_string"
    assert cut.text == full[: full.index("Paris")]
    streamed = "".join(c.text for c in smollm2.stream(PARIS, max_tokens=24, stop="Paris"))
    assert streamed == cut.text


def test_stop_string_spanning_tokens(smollm2):
    full = smollm2.generate(PARIS, max_tokens=24).text
    needle = full[full.index("Paris") - 4 : full.index("Paris") + 3]  # crosses token boundaries
    cut = smollm2.generate(PARIS, max_tokens=24, stop=[needle, "zzzz-never"])
    assert cut.finish_reason == "stop_string"
    assert cut.text == full[: full.index(needle)]


def test_max_tokens_gives_length(smollm2):
    result = smollm2.generate("Count from one to fifty in words.", max_tokens=3)
    assert result.finish_reason == "length"
    assert result.stats.generated_tokens == 3 == len(result.token_ids)


def test_stats_are_measured(smollm2):
    result = smollm2.generate(PARIS, max_tokens=12)
    s = result.stats
    assert s.prompt_tokens == len(smollm2.encode(PARIS))
    assert s.generated_tokens == len(result.token_ids) > 0
    assert 0 < s.time_to_first_token < s.total_time
    assert s.prompt_tps > 0 and s.decode_tps > 0
    weights = sum(v.nbytes for _, v in __import__("mlx.utils", fromlist=["tree_flatten"]).tree_flatten(smollm2.module.parameters()))
    assert s.peak_memory >= weights
    assert set(s.as_dict()) >= {"prompt_tokens", "generated_tokens", "time_to_first_token", "prompt_tps", "decode_tps", "peak_memory"}
    assert "tok/s" in str(s)


def test_prompt_forms(smollm2):
    templated = smollm2.encode("Hi there")
    raw = smollm2.encode("Hi there", raw=True)
    im_start = smollm2.tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert im_start in templated and im_start not in raw
    assert smollm2.tokenizer.decode(raw) == "Hi there"
    # A plain string is one user message; messages may carry a system prompt.
    assert smollm2.encode([{"role": "user", "content": "Hi there"}]) == templated
    with_system = smollm2.encode([{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there"}])
    assert "You are terse." in smollm2.tokenizer.decode(with_system)
    result = smollm2.generate([{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": PARIS}], max_tokens=24)
    assert "Paris" in result.text
    assert isinstance(result, Result) and str(result) == result.text


def test_runtime_choice_is_visible(smollm2):
    assert smollm2.device == "cpu"  # these test machines have no GPU
    assert smollm2.dtype == "float32"
    text = repr(smollm2)
    assert "float32" in text and "cpu" in text and "llama" in text and "4-bit" in text
    assert smollm2.runtime.blas in text or smollm2.runtime.blas.split(" (")[0] in text
    params = smollm2.module.parameters()
    scales = params["model"]["layers"][0]["self_attn"]["q_proj"]["scales"]
    assert str(scales.dtype) == "mlx.core.float32"


def test_generation_config_supplies_defaults(tmp_path):
    from tiny_models import write_tiny_model

    folder = write_tiny_model(tmp_path / "m", "qwen3")
    (folder / "generation_config.json").write_text(
        json.dumps({"do_sample": True, "temperature": 0.6, "top_p": 0.95, "top_k": 20, "max_new_tokens": 7})
    )
    model = mlx_local.Model.load(folder)
    d = model.default_options
    assert (d.temperature, d.top_p, d.top_k, d.max_tokens) == (0.6, 0.95, 20, 7)
    assert model.generate("Hello", seed=1).stats.generated_tokens <= 7
    # A caller's option wins over the model's default.
    assert model.generate("Hello", max_tokens=2, seed=1).stats.generated_tokens <= 2


def test_default_model_is_smollm2(smollm2_gguf):
    model = mlx_local.Model.load()
    assert model.name == "SmolLM2-135M-Instruct"
    assert "Paris" in model.generate(PARIS, max_tokens=24).text

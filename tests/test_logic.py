"""Pure logic, no model weights (the fast tier): options, evaluation windows, recipes, tool parsing, messages."""

from __future__ import annotations

import pytest

from mlx_local._conversation import Conversation, check_messages
from mlx_local._quality import _windows
from mlx_local._recipes import AUTO_CANDIDATES, check_options, plans
from mlx_local._template import ChatTemplate
from mlx_local._thinking import ThinkTags
from mlx_local._tools import Toolset
from mlx_local.errors import InvalidOptionError
from mlx_local.types import GenerationOptions

from conftest import asset_path


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"max_tokens": 0}, "max_tokens=0"), ({"max_tokens": True}, "max_tokens"), ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"), ({"top_p": 1.5}, "top_p"), ({"top_k": -1}, "top_k"), ({"min_p": 2}, "min_p"),
        ({"repetition_penalty": 0}, "repetition_penalty"), ({"seed": -3}, "seed"), ({"stop": [""]}, "stop"),
        ({"stop_loops": "yes"}, "stop_loops"), ({"logprobs": 21}, "logprobs"), ({"logprobs": True}, "logprobs"),
        ({"colour": "red"}, "Unknown option"),
    ],
)  # fmt: skip
def test_options_are_checked(change, match):
    with pytest.raises(InvalidOptionError, match=match) as e:
        GenerationOptions().updated(**change)
    assert e.value.option == next(iter(change))


def test_options_defaults_and_stop_normalised():
    opts = GenerationOptions().updated(stop="END", logprobs=3)
    assert opts.stop == ("END",) and opts.stop_loops and opts.logprobs == 3
    gc = GenerationOptions.from_generation_config({"do_sample": True, "temperature": 0.6, "top_p": 0.9, "max_new_tokens": 64})
    assert (gc.temperature, gc.top_p, gc.max_tokens) == (0.6, 0.9, 64)
    assert GenerationOptions.from_generation_config({"temperature": 0.6}).temperature == 0.0  # no do_sample: greedy
    assert GenerationOptions.from_generation_config({"do_sample": True, "top_p": 7}) == GenerationOptions()  # odd: ignored


def test_quality_windows_spread_over_the_text():
    ids = list(range(3000))
    windows = _windows(ids, [-1], tokens=1024, window=256)
    assert len(windows) == 4 and all(w[0] == -1 and len(w) == 256 for w in windows)
    assert windows[0][1] == 0 and windows[-1][-1] == 2999  # first and last tokens covered
    assert len(_windows(ids[:100], [], tokens=1024, window=256)) == 1
    with pytest.raises(InvalidOptionError, match="too small"):
        _windows(ids, [0] * 10, tokens=4, window=12)


def test_recipes_and_their_checks():
    assert [p.label for p in plans(4, 64, None, "float16")] == ["4-bit g64"]
    assert [p.label for p in plans(4, 64, "mixed_3_6", "float16")] == ["mixed_3_6 g64"]
    assert len(plans(4, 64, "auto", "float16")) == len(AUTO_CANDIDATES)
    ok = {"bits": 4, "group_size": 64, "recipe": None, "dtype": None, "quality": True, "max_kl": None,
          "quality_tokens": 1024, "progress": None}  # fmt: skip
    check_options(**ok)
    for bad, option in (({"bits": 7}, "bits"), ({"group_size": 48}, "group_size"), ({"recipe": "best"}, "recipe"),
                        ({"recipe": "auto", "bits": 8}, "recipe"), ({"recipe": "auto", "quality": False}, "quality"),
                        ({"max_kl": 0.1}, "max_kl"), ({"quality_tokens": 0}, "quality_tokens"),
                        ({"progress": 3}, "progress")):  # fmt: skip
        with pytest.raises(InvalidOptionError) as e:
            check_options(**{**ok, **bad})
        assert e.value.option == option


@pytest.fixture(scope="module")
def qwen3_template():
    from mlx_lm.tokenizer_utils import load as load_tokenizer

    tok = load_tokenizer(asset_path("tokenizer-qwen3"))
    return ChatTemplate(tok, ThinkTags.of(tok), "qwen3")


def test_template_thinking_support_and_prompts(qwen3_template):
    assert qwen3_template.thinking == "switchable"
    on = qwen3_template.prompt([{"role": "user", "content": "Hi"}], thinking=True)
    off = qwen3_template.prompt([{"role": "user", "content": "Hi"}], thinking=False)
    assert len(off.ids) > len(on.ids) and not on.thinking_open  # no-thinking closes an empty block in the prompt


def test_tool_calls_are_parsed_with_mlx_lm_parsers(qwen3_template):
    def lookup(term: str) -> str:
        """Look a term up."""
        return term

    tools = Toolset([lookup], qwen3_template)
    assert tools.format == "template" and (tools.open, tools.close) == ("<tool_call>", "</tool_call>")
    calls, problems = tools.parse(['\n{"name": "lookup", "arguments": {"term": "mlx"}}\n', "not json"])
    assert [(c.id, c.name, c.arguments) for c in calls] == [("call_0", "lookup", {"term": "mlx"})]
    assert len(problems) == 1 and "not json" in problems[0]
    assert "lookup" in (tools.grammar() or "") or tools.choice == "auto"
    required = Toolset([lookup], qwen3_template, "required").grammar()
    assert required is not None and "%json" in required


def test_messages_are_checked_and_undone_by_exchange():
    with pytest.raises(InvalidOptionError, match="role 'wizard'"):
        check_messages([{"role": "wizard", "content": "hi"}])
    with pytest.raises(InvalidOptionError, match="Every message is empty"):
        check_messages([{"role": "user", "content": " "}])
    assert check_messages([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}])[0][
        "content"] == "ab"  # fmt: skip
    c = Conversation("sys")
    for m in ({"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
              {"role": "user", "content": "q2"}, {"role": "assistant", "content": "", "tool_calls": [{"id": "x"}]},
              {"role": "tool", "content": "r"}, {"role": "assistant", "content": "a2"}):  # fmt: skip
        c.add(m)
    assert [m["role"] for m in c.undo()] == ["user", "assistant", "tool", "assistant"]
    assert c.messages[0] == {"role": "system", "content": "sys"} and len(c.turns) == 2

"""The per-sequence decoder on a real tokenizer (Qwen3's): channels, tags of several tokens, stop strings, loops.

Pure logic, no model weights: the fast tier.
"""

from __future__ import annotations

import pytest

from mlx_local._decoder import ChannelTag, Decoder, LoopDetector
from mlx_local._generation import TokenLogprob

from conftest import asset_path


@pytest.fixture(scope="module")
def tok():
    from mlx_lm.tokenizer_utils import load as load_tokenizer

    return load_tokenizer(asset_path("tokenizer-qwen3"))


def ids(tok, text):
    return list(tok.encode(text, add_special_tokens=False))


def run(decoder, tokens, finish="length"):
    chunks = []
    for t in tokens:
        chunks += decoder.add(t)
        if decoder.finish_reason is not None:
            break
    return chunks + decoder.close(finish)


def texts(chunks, kind):
    return "".join(c.text for c in chunks if c.kind == kind)


def think_tag(tok):
    return ChannelTag("thinking", (tok.convert_tokens_to_ids("<think>"),), (tok.convert_tokens_to_ids("</think>"),), leading=True)


def test_plain_text_and_eos(tok):
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    d = Decoder(tok.detokenizer, eos_ids=[eos])
    chunks = run(d, ids(tok, "Hello there, friend.") + [eos] + ids(tok, " never seen"))
    assert texts(chunks, "content") == "Hello there, friend."
    assert chunks[-1].finish_reason == "stop" and d.tokens[-1] == eos
    assert sum(len(c.token_ids) for c in chunks) == len(d.tokens)  # every token reported exactly once


def test_thinking_comes_apart_without_tags_or_blank_lines(tok):
    d = Decoder(tok.detokenizer, tags=[think_tag(tok)])
    seq = [think_tag(tok).open[0]] + ids(tok, "\nLet me see.\n\n") + [think_tag(tok).close[0]] + ids(tok, "\n\nFour.")
    chunks = run(d, seq)
    assert texts(chunks, "thinking") == "Let me see."
    assert texts(chunks, "content") == "Four."
    assert d.counts["thinking"] == len(ids(tok, "\nLet me see.\n\n")) and d.opened == {"thinking"}


def test_a_think_tag_after_the_answer_began_is_just_a_token(tok):
    tag = think_tag(tok)
    d = Decoder(tok.detokenizer, tags=[tag])
    chunks = run(d, ids(tok, "The answer is here.") + [tag.open[0]] + ids(tok, " more"))
    assert "thinking" not in {c.kind for c in chunks} and texts(chunks, "content").startswith("The answer is here.")


def test_prompt_opened_block_starts_in_thinking(tok):
    tag = think_tag(tok)
    d = Decoder(tok.detokenizer, tags=[tag], inside="thinking")
    chunks = run(d, ids(tok, "\nhmm") + [tag.close[0]] + ids(tok, "Yes."))
    assert texts(chunks, "thinking") == "hmm" and texts(chunks, "content") == "Yes."


def test_tags_of_several_tokens(tok):
    open_, close = ids(tok, "<<call>>"), ids(tok, "<</call>>")
    assert len(open_) > 1 and len(close) > 1
    tag = ChannelTag("tool_call", tuple(open_), tuple(close))
    d = Decoder(tok.detokenizer, tags=[tag])
    chunks = run(d, ids(tok, "Checking. ") + open_ + ids(tok, '{"name": "f"}') + close + ids(tok, " Done."))
    assert texts(chunks, "tool_call") == '{"name": "f"}'
    # text after a tag starts a new segment, whose leading space the detokenizer drops
    assert texts(chunks, "content") in ("Checking. Done.", "Checking.Done.")


def test_a_broken_tag_is_text(tok):
    open_ = ids(tok, "<<call>>")
    d = Decoder(tok.detokenizer, tags=[ChannelTag("tool_call", tuple(open_), tuple(ids(tok, "<</call>>")))])
    chunks = run(d, ids(tok, "a ") + open_[:-1] + ids(tok, " b"))
    assert texts(chunks, "content") == "a " + tok.decode(open_[:-1]) + " b"
    assert d.counts["tool_call"] == 0


@pytest.mark.parametrize("stop", ["Paris", "is P", "."])
def test_stop_strings_are_cut_and_never_returned(tok, stop):
    d = Decoder(tok.detokenizer, stop=[stop])
    chunks = run(d, ids(tok, "The capital is Paris. Then more."))
    text = texts(chunks, "content")
    assert stop not in text and "The capital is Paris. Then more.".startswith(text)
    assert chunks[-1].finish_reason == "stop_string"


def test_stop_string_prefix_is_released_at_the_end(tok):
    d = Decoder(tok.detokenizer, stop=["Paris!"])
    chunks = run(d, ids(tok, "Paris"))
    assert texts(chunks, "content") == "Paris" and chunks[-1].finish_reason == "length"


def test_a_loop_ends_with_its_own_finish_reason(tok):
    sentence = ids(tok, " He's a name that has been passed down through generations of dogs.")
    d = Decoder(tok.detokenizer)
    chunks = run(d, ids(tok, "Biscuit is a name.") + sentence * 10)
    assert chunks[-1].finish_reason == "repetition"
    assert len(d.tokens) <= len(ids(tok, "Biscuit is a name.")) + max(3 * len(sentence), 48) + 1
    off = Decoder(tok.detokenizer, loops=False)
    assert run(off, sentence * 10)[-1].finish_reason == "length"


def test_natural_text_and_short_repeats_are_not_loops():
    detector = LoopDetector()
    text = "one two three four five six seven eight nine ten " * 2  # two copies of a span are not a loop
    assert not any(detector.add(hash(w) % 1000) for w in text.split())
    detector = LoopDetector()
    assert not any(detector.add(7) for _ in range(46))  # a short pattern must run 48 tokens
    assert detector.add(7) or detector.add(7)


def test_logprobs_travel_with_their_tokens(tok):
    d = Decoder(tok.detokenizer)
    chunks = []
    for t in ids(tok, "Hello world"):
        chunks += d.add(t, TokenLogprob(t, -0.5, ((t, -0.5),)))
    chunks += d.close()
    lps = [lp for c in chunks for lp in c.logprobs]
    assert [lp.token for lp in lps] == d.tokens and all(c.logprobs == () or len(c.logprobs) == len(c.token_ids) for c in chunks)

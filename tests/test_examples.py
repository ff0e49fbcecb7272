"""The example scripts run, on the embedded default model, offline."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tiny_models import write_tiny_llama_like_smollm2, write_tiny_model

EXAMPLES = Path(__file__).parent.parent / "examples"


def run(script: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
    )


def test_quickstart_answers_paris(smollm2_gguf):
    proc = run("quickstart.py")
    assert proc.returncode == 0, proc.stderr
    assert "Paris" in proc.stdout and "[stop]" in proc.stdout


def test_quickstart_falls_back_to_the_default_when_the_hub_is_out_of_reach(smollm2_gguf):
    proc = run("quickstart.py", MLX_LOCAL_MODEL="some-org/not-downloaded")
    assert proc.returncode == 0, proc.stderr
    assert "some-org/not-downloaded" in proc.stderr and "embedded default" in proc.stderr
    assert "SmolLM2-135M-Instruct" in proc.stdout and "Paris" in proc.stdout


@pytest.mark.parametrize("script", ["chat.py"])
def test_chat_example(smollm2_gguf, script):
    proc = run(script)
    assert proc.returncode == 0, proc.stderr
    assert "Biscuit" in proc.stdout.split("What is my dog called?")[-1]


COMPARE_ROW = re.compile(r"^(4bit-g64|4bit-g32|auto) +([\d.]+) MB +([\d.]+) +([\d.]+) +([\d.]+)% +'.*'$", re.M)


def test_convert_and_compare_example(smollm2, tmp_path):
    """The example on a tiny random llama with SmolLM2's tokenizer (MLX_LOCAL_MODEL, as its docstring shows).

    What SmolLM2 itself loses at each setting is test_convert's subject (it converts the real model there);
    here it is the script: three conversions with their reports, auto's choice, the table, the models written.
    On SmolLM2 the script takes minutes of a loaded 2-core machine; on this model seconds.
    """
    tiny = write_tiny_llama_like_smollm2(tmp_path / "tiny-llama", smollm2.path)
    out = tmp_path / "out"
    proc = run("convert_and_compare.py", str(out), MLX_LOCAL_MODEL=str(tiny), MLX_LOCAL_HOME=os.environ["MLX_LOCAL_HOME"],
               TMPDIR=str(tmp_path))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    for name in ("4bit-g64", "4bit-g32", "auto"):
        report = text.split(f"--- {name}\n", 1)[1].split("\n--- ", 1)[0]
        assert f"Converted {tiny} -> {out / name}" in report and "KL nats" in report, report
        assert (out / name / "config.json").is_file() and (out / name / "mlx_local.json").is_file()
    assert "target: mean KL <= 0.1 nats/token" in text and "chosen" in text
    rows = {name: [float(x) for x in rest] for name, *rest in COMPARE_ROW.findall(text)}
    assert list(rows) == ["4bit-g64", "4bit-g32", "auto"], text
    (g64_mb, g64_bits, _, _), (g32_mb, g32_bits, _, _) = rows["4bit-g64"], rows["4bit-g32"]
    assert g64_mb < g32_mb and g64_bits == 4.5 and g32_bits == 5.0  # a float16 scale and bias per 64 or 32 weights
    assert all(kl >= 0 and 0 <= top1 <= 100 for _, _, kl, top1 in rows.values())
    assert rows["auto"][2] <= 0.1  # auto's choice meets its target


def test_will_it_fit_example(smollm2_gguf):
    proc = run("will_it_fit.py", "8192")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "at 8192 tokens of context" in out and "qwen3-0.6b" in out and "gemma3-270m" in out
    assert "SmolLM2-135M-Instruct:" in out and "KV cache" in out


# ------------------------------------------- streaming, thinking, benchmark

import json  # noqa: E402
import statistics  # noqa: E402

import mlx_local  # noqa: E402

pytestmark = pytest.mark.slow  # real models, subprocesses or the network stand-in

STREAM_STATS = re.compile(
    r"^\[(stop|length)\] time to first token ([\d.]+) s \| prompt (\d+) tokens at ([\d.]+) tok/s \| "
    r"decode (\d+) tokens at ([\d.]+) tok/s \| peak memory (\d+) MiB$",
    re.M,
)


def test_streaming_example(smollm2_gguf):
    proc = run("streaming.py")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    first, second = out.split("> [system] ")
    assert "Paris" in first.split("What is the capital of France?")[-1]
    stats = STREAM_STATS.findall(out)
    assert len(stats) == 2, out  # one stats line per streamed answer
    assert STREAM_STATS.search(first) and STREAM_STATS.search(second)
    for _, ttft, prompt, prompt_tps, generated, decode_tps, peak in stats:
        assert float(ttft) > 0 and int(prompt) > 20 and float(prompt_tps) > 0
        assert int(generated) >= 2 and float(decode_tps) > 0 and 50 < int(peak) < 4096
    # The list of messages (system + user) was answered too.
    answer = second.split("Name one famous landmark in Paris.")[-1].split("\n[")[0]
    assert answer.strip()


TURN = re.compile(
    r"^\[(stop|length|stop_string)\] answer: (\d+) tokens at [\d.]+ tok/s"
    r"(?: \| thinking: (\d+) tokens \(budget (\d+|None), budget hit: (True|False)\) \| reply\.thinking: (None|\d+ characters))?$",
    re.M,
)


def test_chat_thinking_example_on_a_model_that_cannot_think(smollm2_gguf):
    proc = run("chat_thinking.py")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "Thinking support: 'none'" in out and "SmolLM2-135M-Instruct cannot think" in out
    assert "InvalidOptionError (option 'thinking'): SmolLM2-135M-Instruct cannot think: it has no thinking tags" in out
    assert "[thinking]" not in out
    turns = TURN.findall(out)
    assert len(turns) == 2 and all(t[0] == "stop" and int(t[1]) > 0 and t[2] == "" for t in turns), out
    first = out.split("> What is the capital of France?")[1].split("> Name a famous landmark")[0]
    assert "Paris" in first


def _thinking_2507_style(folder):
    """Make a tiny Qwen3's template open <think> itself, as Qwen3 Thinking-2507 and R1 distills do."""
    config = json.loads((folder / "tokenizer_config.json").read_text())
    head, _ = config["chat_template"].rsplit("{%- if add_generation_prompt %}", 1)
    config["chat_template"] = head + "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n<think>\\n' }}\n{%- endif %}\n"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("template", ["switchable", "always"])
def test_chat_thinking_example_honours_the_budget(tmp_path, template):
    """Tiny random-weight Qwen3 (real tokenizer and template): gibberish, but real thinking and budget."""
    folder = write_tiny_model(tmp_path / f"qwen3-{template}", "qwen3", seed=11)
    if template == "always":
        _thinking_2507_style(folder)
    model = mlx_local.Model.load(folder)
    transition = len(model.think_tags.transition_ids(model.tokenizer))  # the stop-thinking text and </think>

    proc = run("chat_thinking.py", MLX_LOCAL_MODEL=str(folder))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"Thinking support: '{template}'" in out and "cannot think" not in out
    turns = TURN.findall(out)
    assert len(turns) == 2, out
    (_, _, thinking, budget, hit, thought), (_, _, thinking2, _, hit2, thought2) = turns
    assert budget == "64" and int(thinking) <= 64 + transition
    # The second turn is asked with thinking=False: the block is closed empty in the prompt.
    assert int(thinking2) == 0 and hit2 == "False" and thought2 == "None"
    if template == "always":
        # The prompt opened <think>; random weights never close it, so the budget does, after exactly 64 tokens.
        assert hit == "True" and int(thinking) == 64 + transition - 1  # </think> itself is not a thinking token
        assert thought != "None" and "[thinking] " in out and "\n[answer] " in out
        thinking_text = out.split("[thinking] ", 1)[1].split("\n[answer] ", 1)[0]
        assert thinking_text.rstrip().endswith("I have to give the solution based on the thinking directly now.")


BENCH_ROW = re.compile(
    r"^\s*(\d+|median)\s+([\d.]+) s\s+([\d.]+)\s+([\d.]+)\s+(\d+)\s+(\d+) MiB$",
    re.M,
)


def test_benchmark_example(smollm2_gguf):
    proc = run("benchmark.py")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert re.search(r"^device: .+\((?:cpu|metal|cuda)\).+BLAS", out, re.M), out
    assert "SmolLM2-135M-Instruct" in out
    assert float(re.search(r"^load:\s+([\d.]+) s$", out, re.M).group(1)) > 0
    prompt_tokens = int(re.search(r"a (\d+)-token prompt, up to 64 tokens", out).group(1))
    assert 256 <= prompt_tokens < 320
    rows = BENCH_ROW.findall(out)
    assert [r[0] for r in rows] == ["1", "2", "3", "median"], out
    runs = [[float(x) for x in r[1:]] for r in rows[:3]]
    for ttft, prompt_tps, decode_tps, generated, peak in runs:
        assert ttft > 0 and prompt_tps > 0 and decode_tps > 0 and 2 <= generated <= 64 and 50 < peak < 4096
    # The printed median is the median of the printed runs, column by column.
    assert [float(x) for x in rows[3][1:]] == [statistics.median(column) for column in zip(*runs)]


# ------------------------------------------------- structured output and tools

import ast  # noqa: E402


def test_structured_output_example(smollm2_gguf):
    proc = run("structured_output.py")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    city, place, choice, tool = out.split("\n> ")[1:]
    # A JSON schema: the printed text is compact JSON and .parsed the same dict, with an integer population.
    text = city.splitlines()[1]
    parsed = ast.literal_eval(city.split("parsed: ", 1)[1].splitlines()[0])
    assert json.loads(text) == parsed and set(parsed) == {"city", "country", "population"}
    assert isinstance(parsed["population"], int) and not isinstance(parsed["population"], bool)
    assert parsed["city"] and parsed["country"] and ": " not in text
    # A pydantic class: .parsed is an instance of it, matching the printed JSON.
    m = re.search(r"^parsed: Place\(name='([^']+)', country='([^']+)'\)$", place, re.M)
    assert m, place
    assert json.loads(place.splitlines()[1]) == {"name": m.group(1), "country": m.group(2)}
    assert re.search(r"^choice: '(yes|no)'$", choice, re.M), choice
    # A required tool call, run by act(); its result reached the final answer.
    assert re.search(r"^tool call \(generic format\): get_weather\(\{'city': '[^']+'\}\)$", tool, re.M), tool
    result = re.search(r"^tool result: (22 degrees and sunny in .+)$", tool, re.M)
    assert result, tool
    answer = tool.split("answer: ", 1)[1].split("\n[")[0]
    assert "22" in answer, answer
    assert re.search(r"^\[stop\] after 1 round\(s\) of tool calls$", tool, re.M)


def test_openai_server_example(smollm2_gguf):
    proc = run("openai_server.py")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert re.search(r"^serving on http://127\.0\.0\.1:\d+/v1$", out, re.M), out
    assert "models: ['SmolLM2-135M-Instruct'" in out, out
    answer = re.search(r"^answer: (.*)$", out, re.M)
    streamed = re.search(r"^streamed: (.*)$", out, re.M)
    assert answer and streamed, out
    assert "Paris" in answer.group(1)
    assert streamed.group(1) == answer.group(1)  # greedy: the stream joins to the same answer
    assert re.search(r"^usage: \d+ prompt tokens, \d+ generated$", out, re.M), out
    assert re.search(r"^parsed: City\(name='[^']+', country='[^']+'\)$", out, re.M), out

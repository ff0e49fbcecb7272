"""The `mlx-local` command, run as a real subprocess on the real SmolLM2 model.

The interactive chat is driven through a pseudo-terminal (pexpect), as a
person at a terminal would: typing, slash commands, Ctrl-C, Ctrl-D.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest

from conftest import pythonpath_with_torch
from hub_server import FakeHub
from tiny_models import write_tiny_llama_like_smollm2, write_tiny_model

pytestmark = pytest.mark.slow  # real models, subprocesses or the network stand-in

CLI = str(Path(sys.executable).with_name("mlx-local"))


def mlx_local_cmd(*args: str, stdin: str | None = None, timeout: int = 300, **env: str) -> subprocess.CompletedProcess[str]:
    assert Path(CLI).is_file(), f"{CLI} is missing: install the package (pip install -e .) to get the console script"
    return subprocess.run(
        [CLI, *args], input=stdin, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
    )  # fmt: skip


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("cli") / "tiny-qwen3", "qwen3", seed=3)


# ------------------------------------------------------------ one-shot commands


def test_help_reads_well():
    top = mlx_local_cmd("--help")
    assert top.returncode == 0
    for command in ("chat", "generate", "convert", "models", "pull", "rm", "info", "bench"):
        assert command in top.stdout
        sub = mlx_local_cmd(command, "--help")
        assert sub.returncode == 0 and "usage: mlx-local " + command in sub.stdout
    assert "/budget" in mlx_local_cmd("chat", "--help").stdout


def test_generate_streams_the_answer_to_stdout(smollm2_gguf):
    proc = mlx_local_cmd("generate", "What is the capital of France?", "--temperature", "0", "--max-tokens", "24")
    assert proc.returncode == 0, proc.stderr
    assert "Paris" in proc.stdout
    assert "[stop]" in proc.stderr or "[length]" in proc.stderr  # stats on stderr, not mixed with the answer
    assert "tok/s" not in proc.stdout


def test_generate_reads_the_prompt_from_stdin_and_prints_json(smollm2_gguf):
    proc = mlx_local_cmd("generate", "-", "--json", "--temperature", "0", "--max-tokens", "24", "-q",
                         stdin="What is the capital of France?")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert "Paris" in result["text"] and result["finish_reason"] in ("stop", "length")
    assert result["stats"]["generated_tokens"] > 0 and result["stats"]["decode_tps"] > 0
    assert proc.stderr == ""  # --quiet


def test_errors_are_one_line_and_exit_non_zero(smollm2_gguf, tmp_path):
    proc = mlx_local_cmd("generate", "-m", "qwen3-06b", "hello")
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and "qwen3-0.6b" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    debug = mlx_local_cmd("generate", "-m", "qwen3-06b", "hello", "--debug")
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "ModelNotFoundError" in debug.stderr
    proc = mlx_local_cmd("rm", "not-on-disk")
    assert proc.returncode == 1 and "nothing was deleted" in proc.stderr
    proc = mlx_local_cmd("generate", "-m", str(tmp_path / "missing"), "hi")
    assert proc.returncode == 1 and "No such file or folder" in proc.stderr
    assert mlx_local_cmd("frobnicate").returncode == 2  # usage error, as argparse does


def test_info_says_whether_a_model_fits(smollm2_gguf):
    proc = mlx_local_cmd("info", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["device"]["backend"] == "cpu" and info["device"]["blas"].startswith("OpenBLAS")
    assert info["fits"] is True and info["estimate"]["source"] == "SmolLM2-135M-Instruct"
    assert info["estimate"]["total"] == sum(info["estimate"][k] for k in ("weights", "kv_cache", "overhead"))
    tight = mlx_local_cmd("info", "-m", "qwen3-8b", "--context", "32768", MLX_LOCAL_MEMORY_LIMIT="4GB")
    assert tight.returncode == 0, tight.stderr
    assert "qwen3-8b does NOT fit" in tight.stdout and "KV cache" in tight.stdout


def test_models_table_and_json(smollm2_gguf):
    table = mlx_local_cmd("models", "--lab", "qwen")
    assert table.returncode == 0, table.stderr
    assert "qwen3-0.6b" in table.stdout and "apache-2.0" in table.stdout and "gemma" not in table.stdout
    data = json.loads(mlx_local_cmd("models", "--thinking", "--json").stdout)
    names = {m["name"] for m in data["catalog"]}
    assert "qwen3-8b" in names and "deepseek-r1-distill-qwen-7b" in names and "smollm2-135m" not in names
    assert all(m["thinking"] != "none" for m in data["catalog"])
    small = json.loads(mlx_local_cmd("models", "--fits", "--json", MLX_LOCAL_MEMORY_LIMIT="1GB").stdout)
    assert small["catalog"] and all(m["fits"] and m["memory"] <= 1e9 for m in small["catalog"])


def test_pull_and_rm(tmp_path, tiny_folder):
    with FakeHub() as hub:
        hub.add_repo("tiny-org/tiny-qwen3", tiny_folder)
        env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(tmp_path / "hub"),
               "MLX_LOCAL_HOME": str(tmp_path / "home")}  # fmt: skip
        pulled = mlx_local_cmd("pull", "tiny-org/tiny-qwen3", "--json", **env)
        assert pulled.returncode == 0, pulled.stderr
        info = json.loads(pulled.stdout)
        assert info["kind"] == "downloaded" and info["complete"] and Path(info["path"], "config.json").is_file()
        listed = json.loads(mlx_local_cmd("models", "--json", **env).stdout)
        assert [m["repo_id"] for m in listed["other_local_models"]] == ["tiny-org/tiny-qwen3"]
        removed = mlx_local_cmd("rm", "tiny-org/tiny-qwen3", **env)
        assert removed.returncode == 0 and "freed" in removed.stdout
        assert not Path(info["path"]).exists()
        gone = mlx_local_cmd("pull", "tiny-org/absent", **env)
        assert gone.returncode == 1 and "no Hugging Face repo" in gone.stderr


def test_convert_prints_the_quality_report(smollm2, tmp_path):
    # SmolLM2's 49k-token vocabulary, not Qwen3's 152k: the quality measurement is ~2.5x quicker (43 s -> 17 s)
    tiny = write_tiny_llama_like_smollm2(tmp_path / "tiny-llama", smollm2.path)
    proc = mlx_local_cmd("convert", str(tiny), str(tmp_path / "q4"), "--bits", "4", "--group-size", "32", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["bits"] == 4 and report["group_size"] == 32 and report["quality"]["mean_kl"] >= 0
    assert report["quality"]["tokens"] >= 500  # the default measurement, not a shortened one
    assert (tmp_path / "q4" / "config.json").is_file()
    again = mlx_local_cmd("convert", str(tiny), str(tmp_path / "q4"))
    assert again.returncode == 1 and "pass --overwrite to replace it" in again.stderr  # the flag, not overwrite=True


def test_bench_reports_medians(smollm2_gguf):
    proc = mlx_local_cmd("bench", "--runs", "1", "--prompt-tokens", "48", "--tokens", "8", "--json", "-q")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["prompt_tokens"] == 48 and result["median"]["decode_tps"] > 0
    assert result["median"]["time_to_first_token"] > 0 and result["device"]["backend"] == "cpu"


# ------------------------------------------------------------- interactive chat


@pytest.fixture
def chat_session(smollm2_gguf, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TERM": "xterm", "MLX_LOCAL_HOME": os.environ["MLX_LOCAL_HOME"]}
    child = pexpect.spawn(CLI, ["chat", "--temperature", "0", "--max-tokens", "48"], env=env, cwd=str(tmp_path),
                          encoding="utf-8", timeout=180, dimensions=(40, 200))  # fmt: skip
    child.expect("Chatting with")
    yield child
    if child.isalive():
        child.terminate(force=True)


def _ask(child: pexpect.spawn, text: str) -> str:
    child.expect_exact(">>> ")
    child.sendline(text)
    child.expect_exact(">>> ")
    answer = child.before
    child.sendline("")  # give the prompt back for the next _ask
    return answer


def test_chat_two_turns_undo_save_and_load(chat_session, tmp_path):
    child = chat_session
    _ask(child, "My dog is called Biscuit. Say hello to him.")
    assert "Biscuit" in _ask(child, "What is my dog called?")
    assert "thinking off" in _ask(child, "/no_think")
    assert "dropped your question 'What is my dog called?' and its answer" in _ask(child, "/undo")
    assert "saved to" in _ask(child, "/save talk.json")
    saved = json.loads((tmp_path / "talk.json").read_text())
    assert len(saved["replies"]) == 1  # the undone exchange is gone
    assert "loaded talk.json: 1 exchange\r\n" in _ask(child, "/load talk.json")  # not "1 exchanges"
    assert "generated" in _ask(child, "/stats")
    child.expect_exact(">>> ")
    child.sendeof()  # Ctrl-D
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_ctrl_c_stops_an_answer_and_keeps_the_session(smollm2_gguf, tmp_path):
    # This one child keeps PyTorch (conftest hides it from the others): without it, run after the file's other
    # tests, the Ctrl-C was lost (the answer ran its 400 tokens; 3 runs of 3), though it passed alone (3 of 3)
    # and by hand (6 of 6, with and without torch). Not understood yet: see the suite branch's report.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TERM": "xterm", "PYTHONPATH": pythonpath_with_torch()}
    child = pexpect.spawn(CLI, ["chat", "--temperature", "0", "--max-tokens", "400"], env=env, cwd=str(tmp_path),
                          encoding="utf-8", timeout=180, dimensions=(40, 200))  # fmt: skip
    child.expect_exact(">>> ")
    question = "Tell me a long story about a lighthouse keeper."
    child.sendline(question)
    child.expect_exact(question + "\r\n")  # the terminal's echo of the line
    child.expect(r"\w+ \w+ \w+ \w+")  # the answer has started
    child.sendintr()  # Ctrl-C
    child.expect_exact("[stopped; that answer was not kept]")
    child.expect_exact(">>> ")
    child.sendline("What is the capital of France?")
    child.expect_exact("Paris")
    child.expect_exact(">>> ")
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_generate_with_a_schema_prints_the_json(smollm2_gguf, tmp_path):
    schema = tmp_path / "city.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
                                  "required": ["city", "country"], "additionalProperties": False}))  # fmt: skip
    proc = mlx_local_cmd("generate", "--schema", str(schema), "The capital of France, as JSON.", "-q")
    assert proc.returncode == 0, proc.stderr
    assert set(json.loads(proc.stdout)) == {"city", "country"}
    data = json.loads(mlx_local_cmd("generate", "--schema", str(schema), "Capital of Italy?", "--json", "-q").stdout)
    assert set(data["parsed"]) == {"city", "country"} and data["finish_reason"] == "stop"
    cut = mlx_local_cmd("generate", "--schema", str(schema), "Capital of Spain?", "--max-tokens", "3")
    assert cut.returncode == 1 and "cut short" in cut.stderr and "--max-tokens" in cut.stderr
    missing = mlx_local_cmd("generate", "--schema", str(tmp_path / "nope.json"), "x")
    assert missing.returncode == 1 and "no such file" in missing.stderr and "Loaded" not in missing.stderr

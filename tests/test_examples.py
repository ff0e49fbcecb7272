"""The example scripts run, on the embedded default model, offline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_convert_and_compare_example(smollm2_gguf, tmp_path):
    proc = run("convert_and_compare.py", MLX_LOCAL_HOME=os.environ["MLX_LOCAL_HOME"], TMPDIR=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "KL" in proc.stdout or "kl" in proc.stdout.lower()


def test_will_it_fit_example(smollm2_gguf):
    proc = run("will_it_fit.py", "8192")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "at 8192 tokens of context" in out and "qwen3-0.6b" in out and "gemma3-270m" in out
    assert "SmolLM2-135M-Instruct:" in out and "KV cache" in out

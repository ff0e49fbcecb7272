"""What a script's user sees when something fails: a short traceback ending in our error.

Each case runs a real script in a subprocess and counts the lines Python
prints. Before: 110 lines for an unreachable hub (httpcore, httpx and
huggingface_hub chained under ours), 33 for a truncated GGUF (chained from
the parser's internal exception). Our frames remain; chains of other
libraries' internals do not.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import mlx_local
from mlx_local.errors import HubUnreachableError

pytestmark = pytest.mark.slow  # real models, subprocesses or the network stand-in

MAX_LINES = 25


@pytest.fixture
def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run(tmp_path: Path, code: str, **env: str) -> list[str]:
    script = tmp_path / "script.py"
    script.write_text(code)
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path,
        env={**os.environ, **env}, timeout=300,
    )
    assert proc.returncode == 1
    return proc.stderr.rstrip("\n").splitlines()


def test_unreachable_hub(tmp_path, closed_port):
    lines = run(
        tmp_path,
        "import mlx_local\nmlx_local.Model.load('tiny-org/absent')\n",
        HF_ENDPOINT=f"http://127.0.0.1:{closed_port}",
        HF_HOME=str(tmp_path / "hf"),
    )
    text = "\n".join(lines)
    assert lines[-1].startswith("mlx_local.errors.HubUnreachableError: tiny-org/absent is not in the local")
    assert "Connection refused" in lines[-1]  # the root cause, in our message
    assert len(lines) <= MAX_LINES, text
    assert "httpcore" not in text and "httpx" not in text and "huggingface_hub" not in text
    assert text.count("Traceback (most recent call last)") == 1


def test_unreachable_hub_keeps_the_original_for_a_bug_report(monkeypatch, closed_port):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed_port}")
    with pytest.raises(HubUnreachableError) as e:
        mlx_local.Model.load("tiny-org/absent")
    assert e.value.__suppress_context__ and e.value.__cause__ is None  # not printed...
    original = e.value.__context__  # ...but there, whole, traceback and chain included
    assert type(original).__module__.startswith("huggingface_hub") and original.__traceback__ is not None


def test_truncated_gguf(tmp_path, smollm2_gguf):
    cut = tmp_path / "cut.gguf"
    with open(smollm2_gguf, "rb") as f:
        cut.write_bytes(f.read(5000))
    lines = run(tmp_path, f"import mlx_local\nmlx_local.Model.load({str(cut)!r})\n", MLX_LOCAL_HOME=str(tmp_path / "home"))
    text = "\n".join(lines)
    assert lines[-1].startswith(f"mlx_local.errors.InvalidModelError: {cut} is not a readable GGUF file")
    assert len(lines) <= MAX_LINES, text
    assert "_Malformed" not in text and text.count("Traceback (most recent call last)") == 1

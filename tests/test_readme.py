"""The README's Python snippets run as written, on the embedded default model, and say what they claim.

A snippet is tested when the line before its code block is
``<!-- tested: A | B -->``: the blocks run in order in one fresh process (a
later block may use what an earlier one defined), and each block's output
must contain every ``|``-separated expectation.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).parent.parent / "README.md"
_BLOCK = re.compile(r"<!-- tested: (?P<expect>.*?) -->\n```python\n(?P<code>.*?)```", re.S)
_MARK = "=== mlx_local README block {} ==="

pytestmark = pytest.mark.slow


def _tested_blocks() -> list[tuple[list[str], str]]:
    return [([e.strip() for e in m["expect"].split("|")], m["code"]) for m in _BLOCK.finditer(README.read_text())]


def test_readme_has_tested_snippets():
    blocks = _tested_blocks()
    assert len(blocks) >= 2 and all(expect and code.strip() for expect, code in blocks)


def test_readme_snippets_run_as_written(smollm2_gguf, tmp_path):
    blocks = _tested_blocks()
    script = "\n".join(f"print({_MARK.format(i)!r}, flush=True)\n{code}" for i, (_, code) in enumerate(blocks))
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    outputs = re.split(r"=== mlx_local README block \d+ ===\n", proc.stdout)[1:]
    assert len(outputs) == len(blocks)
    for i, ((expect, code), out) in enumerate(zip(blocks, outputs)):
        for e in expect:
            assert e in out, f"README block {i} should print {e!r}:\n{code}\n--- it printed:\n{out}"

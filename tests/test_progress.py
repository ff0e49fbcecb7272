"""The suite's per-file progress lines (tests/_progress.py), with and without pytest-xdist."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # real models, subprocesses or pseudo-terminals

TESTS = Path(__file__).parent

FILES = {
    "test_slow.py": "import time\n\ndef test_a():\n    time.sleep(0.6)\n\ndef test_b():\n    assert False\n\n"
                    "def test_c():\n    pass\n",
    "test_fast.py": "import pytest\n\ndef test_d():\n    pass\n\n@pytest.mark.skip\ndef test_e():\n    pass\n",
}  # fmt: skip


@pytest.mark.parametrize("workers", [["-n", "2", "--dist", "loadfile"], ["-n", "0"], ["-p", "no:xdist"]])
def test_a_line_per_file_with_its_counts_and_seconds(workers, tmp_path):
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "_progress", *workers, str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr  # test_b fails
    lines = {m["file"]: m for m in re.finditer(
        r"^(?P<file>test_\w+\.py): (?P<said>[\w ,]+) in (?P<s>[\d.]+) s  \[(?P<n>\d)/2 files, \d+:\d\d elapsed\]$",
        proc.stdout, re.M)}  # fmt: skip
    assert set(lines) == {"test_slow.py", "test_fast.py"}, proc.stdout
    assert lines["test_slow.py"]["said"] == "1 failed, 2 passed" and float(lines["test_slow.py"]["s"]) >= 0.6
    assert lines["test_fast.py"]["said"] == "1 passed, 1 skipped" and float(lines["test_fast.py"]["s"]) < 0.6
    assert {m["n"] for m in lines.values()} == {"1", "2"}

"""GGUF import copies: named for what they are, and no hidden float32 copy left by convert.

(Issue 11 item 10: ``convert(None, dest)`` left a 517 MB float32 import beside
the 119 MB one in the import cache, differing only by a hash suffix.) The
choice: a conversion's float32 import is a working copy under
``$MLX_LOCAL_HOME/tmp``, reused for the next conversion of the same file in
the process and deleted when the process ends; a float import the user made
(``gguf_weights="float"``) is reused as it is. Every import is listed by a
name that says its weights mode.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import mlx_local

pytestmark = pytest.mark.slow  # real models, subprocesses or the network stand-in


def scratch(home: Path) -> list[str]:
    tmp = home / "tmp"
    return sorted(p.name for p in tmp.glob("mlx_local-float-*")) if tmp.is_dir() else []


def imports(home: Path) -> list[str]:
    folder = home / "imports"
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []


def test_convert_of_the_default_leaves_no_float_copy(models_home, hf_cache, tmp_path):
    mlx_local.Model.load()  # the 119 MB quantized import, as a user would have it
    assert [n.rsplit("-", 2)[1] for n in imports(models_home)] == ["quantized"]
    code = "import mlx_local, sys; mlx_local.convert(None, sys.argv[1], bits=8, quality=False)"
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out")], capture_output=True, text=True,
                          env=dict(os.environ), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "out" / "config.json").is_file()
    assert [n.rsplit("-", 2)[1] for n in imports(models_home)] == ["quantized"]  # no float32 import kept
    assert scratch(models_home) == []  # nor its working copy, once the process ended
    assert [m.kind for m in mlx_local.local_models()] == ["imported"]


def test_conversions_of_one_gguf_in_a_process_import_it_once(smollm2_gguf, models_home, hf_cache, tmp_path):
    mlx_local.convert(smollm2_gguf, tmp_path / "a", bits=8, quality=False)
    first = scratch(models_home)
    assert len(first) == 1 and imports(models_home) == []
    copy = models_home / "tmp" / first[0] / "model"
    made = copy.stat().st_mtime_ns
    mlx_local.convert(smollm2_gguf, tmp_path / "b", bits=4, quality=False)
    assert scratch(models_home) == first and copy.stat().st_mtime_ns == made  # reused, not imported again
    assert mlx_local.local_models() == []  # nothing in the stores but what was asked for (a, b are elsewhere)


def test_a_float_import_the_user_made_is_reused_and_named_so(smollm2_gguf, models_home, hf_cache, tmp_path):
    float_model = mlx_local.Model.load(smollm2_gguf, gguf_weights="float")
    quantized = mlx_local.Model.load(smollm2_gguf)
    names = {m.name: m for m in mlx_local.local_models()}
    assert sorted(n.rsplit("-", 2)[1] for n in names) == ["float", "quantized"]
    assert names[float_model.path.name].size > 4 * names[quantized.path.name].size  # float32 vs 4-bit
    before = scratch(models_home)
    report = mlx_local.convert(smollm2_gguf, tmp_path / "c", bits=8, quality=False)
    assert scratch(models_home) == before and report.source_kind == "gguf"  # no working copy: it used the import
    removed = mlx_local.remove(float_model.path.name)  # by the name local_models() lists
    assert [m.path for m in removed.models] == [float_model.path]
    assert [m.path for m in mlx_local.local_models()] == [quantized.path]

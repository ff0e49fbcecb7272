"""Nothing leaves the machine: a model on disk loads and generates with every
socket refused, with and without offline=True."""

from __future__ import annotations

import pytest

import mlx_local

pytestmark = pytest.mark.slow  # real models, subprocesses or the network stand-in


@pytest.mark.parametrize("offline", [None, True])
def test_gguf_on_disk_needs_no_network(smollm2_gguf, no_network, offline, tmp_path, monkeypatch):
    # A fresh home: the GGUF import itself (tokenizer rebuild included) runs offline too.
    monkeypatch.setenv("MLX_LOCAL_HOME", str(tmp_path))
    model = mlx_local.Model.load(smollm2_gguf, offline=offline)
    result = model.generate("What is the capital of France?", max_tokens=12)
    assert "Paris" in result.text
    assert no_network == []


@pytest.mark.parametrize("offline", [None, True])
def test_default_model_and_folder_need_no_network(smollm2, no_network, offline):
    default = mlx_local.Model.load(offline=offline)
    folder = mlx_local.Model.load(smollm2.path, offline=offline)
    assert default.generate("Say hello.", max_tokens=4).stats.generated_tokens > 0
    assert "".join(c.text for c in folder.stream("Say hello.", max_tokens=4))
    assert no_network == []

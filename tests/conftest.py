"""Shared fixtures.

Every test runs with its own Hugging Face cache and mlx_local home (imports,
converted models) in temporary folders, so no test touches the user's real
caches. The fetched assets (real model and tokenizer files) are shared from the
real asset cache: `python -m mlx_local assets fetch` puts them there, and a test
that needs a missing one fails saying so.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

# Before anything imports huggingface_hub or mlx_local: isolate the caches.
_REAL_ASSETS = (
    Path(os.environ["MLX_LOCAL_HOME"]).expanduser() if os.environ.get("MLX_LOCAL_HOME") else Path.home() / ".cache" / "mlx_local"
) / "assets"
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="mlx_local-tests-"))
os.environ["MLX_LOCAL_HOME"] = str(_SESSION_DIR / "home")
os.environ["HF_HOME"] = str(_SESSION_DIR / "hf")
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.pop("HF_HUB_OFFLINE", None)
(_SESSION_DIR / "home").mkdir()
if _REAL_ASSETS.is_dir():
    (_SESSION_DIR / "home" / "assets").symlink_to(_REAL_ASSETS, target_is_directory=True)

# The processes the tests start (CLI, examples, notebooks, mlx.launch ranks) run without PyTorch, as a user's
# install does: torch is only the `reference` extra, for test_reference's in-process comparisons. Installed, it is
# imported by transformers (through mlx-lm's tokenizer loading) in every process that loads a model: ~5 s of
# CPU each on this machine. A sitecustomize on the inherited PYTHONPATH hides it; the pytest workers, which
# inherit the same PYTHONPATH, take it back in pytest_configure unless the slow tests (test_reference) are left out.
NO_TORCH = _SESSION_DIR / "no-torch"
NO_TORCH.mkdir()
(NO_TORCH / "sitecustomize.py").write_text("import sys\n\nsys.modules.setdefault('torch', None)  # tests/conftest.py\n")
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(NO_TORCH)) if p)


def pythonpath_with_torch() -> str:
    """PYTHONPATH without the no-torch folders (this process's and an xdist controller's), for a child that keeps torch."""
    return os.pathsep.join(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).name != NO_TORCH.name)

import pytest  # noqa: E402

pytest_plugins = ["_progress"]  # a line per test file as it finishes (tests/_progress.py)

import mlx_local  # noqa: E402  (chooses the BLAS before mlx is imported)
from mlx_local import _assets as assets  # noqa: E402


def asset_path(name: str) -> Path:
    """The fetched asset, or a test failure that says how to fetch it."""
    try:
        return assets.path(name)
    except mlx_local.ModelNotFoundError as e:
        pytest.fail(f"Test asset missing: {e} (the README's test command fetches every asset).", pytrace=False)


def _slow_tests_left_out(config: pytest.Config) -> bool:
    """Whether ``-m`` leaves out the tests marked slow (the fast tier: ``-m "not slow"``)."""
    markexpr = config.getoption("markexpr", default="") or ""
    if not markexpr:
        return False
    try:
        from _pytest.mark.expression import Expression

        return not Expression.compile(markexpr).evaluate(lambda name, **kwargs: name == "slow")
    except Exception:  # another pytest's internals: keep torch
        return False


def pytest_configure(config: pytest.Config) -> None:
    """Torch for this process only when a test here may use it: test_reference, which is slow (see above).

    The fast tier saves importing it (through transformers) in each worker: seconds of its minute.
    """
    if not _slow_tests_left_out(config):
        if "torch" in sys.modules and sys.modules["torch"] is None:  # an xdist worker started with the sitecustomize
            del sys.modules["torch"]
    elif "torch" not in sys.modules:
        sys.modules["torch"] = None  # type: ignore[assignment]


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    return asset_path("smollm2")


@pytest.fixture(scope="session")
def smollm2(smollm2_gguf: Path) -> mlx_local.Model:
    """The real SmolLM2-135M-Instruct, imported from its Q4_1 GGUF (lossless 4-bit)."""
    return mlx_local.Model.load(smollm2_gguf)


@pytest.fixture(scope="session")
def smollm2_float(smollm2_gguf: Path) -> mlx_local.Model:
    """The same model with every weight dequantized to float32."""
    return mlx_local.Model.load(smollm2_gguf, gguf_weights="float")


class NetworkBlocked(AssertionError):
    pass


@pytest.fixture
def no_network(monkeypatch):
    """Refuse every socket connection and name lookup; record each attempt.

    Yields the list of attempts, so a test can assert that it stayed empty
    even when the code under test swallowed the error.
    """
    attempts: list[str] = []

    def refuse(what):
        def _refuse(*args, **kwargs):
            attempts.append(f"{what}{args[1:] if what == 'connect' else args}")
            raise NetworkBlocked(f"network access attempted: {what} {args!r}")

        return _refuse

    monkeypatch.setattr(socket.socket, "connect", refuse("connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("connect_ex"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    yield attempts


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache of this test's own (downloads, pulls, removals)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def models_home(tmp_path, monkeypatch) -> Path:
    """An empty models folder and import cache of this test's own."""
    home = tmp_path / "mlx-home"
    home.mkdir()
    if _REAL_ASSETS.is_dir():
        (home / "assets").symlink_to(_REAL_ASSETS, target_is_directory=True)
    monkeypatch.setenv("MLX_LOCAL_HOME", str(home))
    monkeypatch.delenv("MLX_LOCAL_MODELS", raising=False)
    return home


def put_in_hf_cache(repo_id: str, folder: Path, *, revision: str = "main", commit: str = "0" * 40) -> Path:
    """Place a model folder in the (test) Hugging Face cache as a download would.

    The layout is huggingface_hub's own: content-addressed blobs, a snapshot
    of symlinks per commit, and a ref naming the commit.
    """
    import hashlib

    from huggingface_hub import constants

    repo = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for f in sorted(Path(folder).iterdir()):
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        if not blob.exists():
            blob.write_bytes(data)
        link = snapshot / f.name
        if not link.exists():
            link.symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return snapshot


def native_module():
    """mlx_local's native extension; on Linux x86-64 (unless MLX_LOCAL_NATIVE=off) a missing build fails, naming why."""
    import platform
    import sys

    from mlx_local import _native

    native = _native.load()
    if native.module is None:
        if sys.platform.startswith("linux") and platform.machine() == "x86_64" and os.environ.get("MLX_LOCAL_NATIVE") != "off":
            pytest.fail(f"the native kernels should be built and loaded here: {native.reason}", pytrace=False)
        pytest.skip(native.reason)  # another platform: the kernels are not built there
    return native.module


@pytest.fixture(scope="module")
def ext():
    """The native extension (see :func:`native_module`)."""
    return native_module()

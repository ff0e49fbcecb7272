"""Disk and permission failures are StorageError naming the path, never a bare OSError.

The failures are real, not simulated. Two kinds, both of which stop root as
well as an ordinary user (the tests run as root here, where chmod stops
nothing):

- a destination under a regular file (``file.txt/model``): the system
  answers ENOTDIR / EEXIST to anyone;
- a folder nobody may write into: ``chattr +i`` (immutable) when running as
  root, ``chmod 555`` otherwise. The fixture checks that a write really fails
  before the test relies on it.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import mlx_local
from mlx_local import _assets as assets
from mlx_local.errors import StorageError

from tiny_models import write_tiny_model

pytestmark = pytest.mark.slow  # real models, subprocesses or the network stand-in


@pytest.fixture
def read_only():
    """``read_only(folder)`` makes ``folder`` (created if needed) refuse every write, for root too."""
    locked: list[Path] = []

    def lock(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            chattr = shutil.which("chattr")
            if chattr is None or subprocess.run([chattr, "+i", str(folder)], capture_output=True).returncode:
                pytest.skip("running as root without a working chattr: no way to make a folder read-only")
        else:
            folder.chmod(0o555)
        locked.append(folder)
        with pytest.raises(OSError):  # it really refuses
            (folder / "probe").mkdir()
        return folder

    yield lock
    for folder in locked:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        else:
            folder.chmod(0o755)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama", "llama")


@pytest.fixture(scope="module")
def tiny(tiny_folder):
    return mlx_local.Model.load(tiny_folder)


def under_a_file(tmp_path: Path) -> Path:
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")
    return blocker / "model"


def check(e: pytest.ExceptionInfo, path: Path) -> None:
    assert isinstance(e.value, OSError) and isinstance(e.value, mlx_local.MLXLocalError)
    assert isinstance(e.value.__cause__, OSError) and not isinstance(e.value.__cause__, StorageError)
    assert str(path) in str(e.value) and str(path) in e.value.path
    assert "Traceback" not in str(e.value)


def test_save_under_a_file(tiny, tmp_path):
    dest = under_a_file(tmp_path)
    with pytest.raises(StorageError, match="Could not save the model") as e:
        tiny.save(dest)
    check(e, dest.parent)
    assert e.value.__cause__.errno in (errno.ENOTDIR, errno.EEXIST)


def test_save_into_a_read_only_folder(tiny, tmp_path, read_only):
    folder = read_only(tmp_path / "locked")
    with pytest.raises(StorageError, match="Could not save the model") as e:
        tiny.save(folder / "model")
    check(e, folder)
    assert list(folder.iterdir()) == []


def test_convert_into_a_read_only_folder_or_under_a_file(tiny_folder, tmp_path, read_only):
    folder = read_only(tmp_path / "locked")
    with pytest.raises(StorageError, match="Could not write the converted model") as e:
        mlx_local.convert(tiny_folder, folder / "out", quality=False)
    check(e, folder)
    assert list(folder.iterdir()) == []
    dest = under_a_file(tmp_path)
    with pytest.raises(StorageError, match="Could not write the converted model") as e:
        mlx_local.convert(tiny_folder, dest, quality=False)
    check(e, dest.parent)


def test_gguf_import_into_a_read_only_cache(smollm2_gguf, models_home, read_only):
    imports = read_only(models_home / "imports")
    with pytest.raises(StorageError, match="Could not write the GGUF import") as e:
        mlx_local.Model.load(smollm2_gguf)
    check(e, imports)


def test_asset_fetch_into_a_read_only_folder(tmp_path, monkeypatch, read_only, no_network):
    monkeypatch.setenv("MLX_LOCAL_HOME", str(tmp_path / "home"))
    folder = read_only(tmp_path / "home" / "assets")
    with pytest.raises(StorageError, match="Could not store the asset 'smollm2'") as e:
        assets.fetch("smollm2")
    check(e, folder)
    assert no_network == []  # refused before downloading anything


def test_remove_from_a_read_only_folder_deletes_nothing(tiny_folder, models_home, read_only):
    models = models_home / "models"
    shutil.copytree(tiny_folder, models / "mine")
    before = sorted(p.name for p in (models / "mine").iterdir())
    read_only(models)
    with pytest.raises(StorageError, match="Could not remove mine") as e:
        mlx_local.remove("mine")
    check(e, models / "mine")
    assert sorted(p.name for p in (models / "mine").iterdir()) == before
    assert [m.name for m in mlx_local.local_models() if m.kind == "converted"] == ["mine"]

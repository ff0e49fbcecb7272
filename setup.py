"""Builds mlx_local's optional native CPU kernels (issue 14); everything else is in pyproject.toml.

On Linux x86-64 the MLX C++ extension ``mlx_local/_native_lib/_native_ext*.so``
(sources in ``csrc/native``) is built with CMake against the mlx installed in the build
environment and nanobind 3.1.0 (the nanobind ABI of mlx 0.32's ``core.so``).
Nothing here can make the install fail: without a compiler or CMake, or if the
build fails, a warning is printed and mlx_local installs without it and runs as
before.  Either way ``_native_lib/_native_build.json`` beside it records what happened
(mlx version, nanobind ABI, the module's SHA-256, or why it was not built);
``mlx_local/_native.py`` checks that record before it loads anything.

``./setup.sh`` builds without build isolation, against the very mlx in
``.venv``; a plain ``pip install .`` builds in an isolated environment with the
mlx pinned in pyproject.toml's ``[build-system]``.  ``MLX_LOCAL_NATIVE=off``
skips the build.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# in a folder that is not a package, so that nothing imports it by accident (pkgutil does not list it)
NATIVE = "mlx_local._native_lib._native_ext"
RECORD = "_native_build.json"
SOURCES = Path(__file__).resolve().parent / "csrc" / "native"
_ABI = re.compile(rb"nanobind_[A-Za-z0-9_]*?_a\d+_v\d+(?:_stable)?")


def nanobind_abi(path: Path) -> str:
    """The nanobind ABI tag compiled into the shared library at ``path`` ('' if none)."""
    tags = sorted(set(_ABI.findall(path.read_bytes())))
    return tags[0].decode() if len(tags) == 1 else ";".join(t.decode() for t in tags)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def _skip_reason() -> str | None:
    if os.environ.get("MLX_LOCAL_NATIVE", "").lower() == "off":
        return "MLX_LOCAL_NATIVE=off at install time"
    if not (sys.platform.startswith("linux") and platform.machine().lower() in ("x86_64", "amd64")):
        return f"only built on Linux x86-64, not {sys.platform} {platform.machine()}"
    missing = [tool for tool in ("cmake", os.environ.get("CXX", "c++")) if shutil.which(tool) is None]
    if not (shutil.which("ninja") or shutil.which("make")):
        missing.append("make (or ninja)")
    if missing:
        return f"{' and '.join(missing)} not found (./setup.sh installs g++ and cmake)"
    return None


class _BuildError(RuntimeError):
    def __init__(self, message: str, log: str) -> None:
        super().__init__(message)
        self.log = log


class NativeBuild(build_ext):
    """build_ext that builds the CMake extension, and never fails the install."""

    def build_extension(self, ext: Extension) -> None:
        out = Path(self.get_ext_fullpath(ext.name)).resolve()
        out.parent.mkdir(parents=True, exist_ok=True)
        record = out.parent / RECORD
        reason, log = _skip_reason(), ""
        if reason is None:
            try:
                _write_json(record, self._build(out))
                print(f"mlx_local: built the native CPU kernels ({out.name})")
                return
            except Exception as e:  # the install goes on without the kernels
                reason = f"build failed: {e}" if isinstance(e, _BuildError) else f"build failed: {type(e).__name__}: {e}"
                log = e.log if isinstance(e, _BuildError) else ""
        out.unlink(missing_ok=True)
        print(
            f"WARNING: mlx_local's native CPU kernels were not built ({reason}); mlx_local works without them, slower on CPU.",
            file=sys.stderr,
        )
        _write_json(record, {"built": False, "reason": reason, "log": log})

    def copy_extensions_to_source(self) -> None:
        """In-place and editable builds: the record goes beside the module; a stale module goes away."""
        build_py = self.get_finalized_command("build_py")
        for ext in self.extensions:
            Path(self._get_inplace_equivalent(build_py, ext)[0]).parent.mkdir(parents=True, exist_ok=True)
        super().copy_extensions_to_source()
        for ext in self.extensions:
            inplace, regular = (Path(p) for p in self._get_inplace_equivalent(build_py, ext))
            if (regular.parent / RECORD).exists():
                shutil.copyfile(regular.parent / RECORD, inplace.parent / RECORD)
            if not regular.exists():
                inplace.unlink(missing_ok=True)

    def _build(self, out: Path) -> dict[str, Any]:
        import mlx.core as mx  # the mlx this build links against
        import nanobind

        tmp = Path(self.build_temp).resolve() / "native"
        if self.inplace or getattr(self, "editable_mode", False):
            # a source tree (./setup.sh, editable): keep the CMake build for the next run
            key = hashlib.sha1(f"{sys.executable} {mx.__file__} {getattr(mx, '__version__', '')}".encode()).hexdigest()[:10]
            tmp = SOURCES.parent.parent / "build" / f"native-{key}"
        tmp.mkdir(parents=True, exist_ok=True)
        built = tmp / "lib"
        args = [
            "cmake",
            "-S",
            str(SOURCES),
            "-B",
            str(tmp),
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={built}",
        ]
        if shutil.which("ninja"):
            args += ["-G", "Ninja"]
        jobs = str(max(1, min(os.cpu_count() or 1, 4)))
        for cmd in (args, ["cmake", "--build", str(tmp), "--parallel", jobs]):
            run = subprocess.run(cmd, capture_output=True, text=True)
            if run.returncode != 0:
                output = run.stdout + run.stderr
                errors = [line.strip() for line in output.splitlines() if "error" in line.lower()]
                raise _BuildError(f"{' '.join(cmd[:2])} exited with {run.returncode}: {(errors or ['?'])[0][:200]}", output[-3000:])
        so = next(built.glob("_native_ext*.so"))
        version = str(getattr(mx, "__version__", ""))
        core = Path(mx.__file__)
        abi, mlx_abi = nanobind_abi(so), nanobind_abi(core)
        if abi != mlx_abi:
            raise RuntimeError(f"nanobind {nanobind.__version__} has ABI {abi}, mlx {version}'s core.so {mlx_abi}")
        shutil.copyfile(so, out)
        return {
            "built": True,
            "file": out.name,
            "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
            "mlx": version,
            "nanobind": nanobind.__version__,
            "nanobind_abi": abi,
            "python": sys.implementation.cache_tag,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }


setup(ext_modules=[Extension(NATIVE, sources=[], optional=True)], cmdclass={"build_ext": NativeBuild})

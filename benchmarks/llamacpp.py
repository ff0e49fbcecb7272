"""llama.cpp as a peer: built once from a registry source distribution, run, parsed.

The source is llama-cpp-python's sdist from PyPI (``pip download --no-deps
--no-binary :all: llama-cpp-python==VERSION``), which vendors llama.cpp in
``vendor/llama.cpp``. :func:`ensure_built` unpacks it and builds only
``llama-bench`` with cmake, CPU only, into
``$MLX_LOCAL_HOME/bench/llama.cpp-<version>/`` (``~/.cache/mlx_local/bench``),
once; the build's flags, time and llama.cpp's own system line are recorded
in ``build.json`` beside it. The flags are llama.cpp's defaults for a CPU
build (``GGML_NATIVE=ON``: ``-march=native``, so AVX2/FMA/F16C here; OpenMP
threads), with everything but the library and the tool switched off.

:func:`bench` runs ``llama-bench -o json`` on a GGUF (prompt processing of
``n_prompt`` tokens and generation of ``n_gen`` tokens, ``-t threads``) and
returns its tests parsed: tokens/s per test, llama.cpp's own description
of the model and the build, and the peak RSS of the process (``max_rss``,
bytes). No network is used after the sdist download.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from models import bench_home

#: The llama-cpp-python release whose vendored llama.cpp is built.
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
#: What is built (llama-bench links the llama and ggml libraries statically).
TARGETS = ("llama-bench",)
#: cmake -D flags: llama.cpp's CPU defaults, with everything not needed off.
CMAKE_FLAGS = {
    "CMAKE_BUILD_TYPE": "Release",
    "GGML_NATIVE": "ON",  # llama.cpp's default: -march=native (AVX2, FMA, F16C on the dev machine)
    "BUILD_SHARED_LIBS": "OFF",
    "LLAMA_BUILD_TESTS": "OFF",
    "LLAMA_BUILD_EXAMPLES": "OFF",
    "LLAMA_BUILD_SERVER": "OFF",
    "LLAMA_BUILD_APP": "OFF",
    "LLAMA_BUILD_TOOLS": "ON",  # llama-bench is a tool
    "LLAMA_OPENSSL": "OFF",
    "LLAMA_CURL": "OFF",
    "GGML_CUDA": "OFF",
    "GGML_VULKAN": "OFF",
    "GGML_METAL": "OFF",
}


def home(version: str = LLAMA_CPP_PYTHON_VERSION) -> Path:
    """Where this version is built: ``$MLX_LOCAL_HOME/bench/llama.cpp-<version>``."""
    return bench_home() / f"llama.cpp-{version}"


def binary(version: str = LLAMA_CPP_PYTHON_VERSION) -> Path:
    return home(version) / "build" / "bin" / "llama-bench"


def build_record(version: str = LLAMA_CPP_PYTHON_VERSION) -> dict[str, Any] | None:
    """The recorded build (flags, seconds, compiler, commit), or None if not built."""
    rec = home(version) / "build.json"
    if not rec.is_file() or not binary(version).is_file():
        return None
    return dict(json.loads(rec.read_text()))


def _sdist(version: str, log: Callable[[str], None]) -> Path:
    """The sdist archive, downloaded by pip (the registry's ordinary client) if missing."""
    where = bench_home()
    archive = where / f"llama_cpp_python-{version}.tar.gz"
    if archive.is_file():
        return archive
    where.mkdir(parents=True, exist_ok=True)
    log(f"  downloading llama-cpp-python=={version}'s source distribution from PyPI")
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                    f"llama-cpp-python=={version}", "-d", str(where)], check=True, capture_output=True, text=True)
    if not archive.is_file():
        raise FileNotFoundError(f"pip download did not produce {archive}")
    return archive


def source_dir(version: str = LLAMA_CPP_PYTHON_VERSION, log: Callable[[str], None] = print) -> Path:
    """The unpacked ``vendor/llama.cpp`` of the sdist (also the home of its gguf-py)."""
    src = home(version) / "src"
    llama = src / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
    if (llama / "CMakeLists.txt").is_file():
        return llama
    archive = _sdist(version, log)
    tmp = src.with_name("src.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tarfile.open(archive) as tf:
        tf.extractall(tmp, filter="data")
    shutil.rmtree(src, ignore_errors=True)
    tmp.rename(src)
    return llama


#: The CMakeCache entries recorded in build.json: what decides the CPU code and the threads.
RECORDED = ("CMAKE_BUILD_TYPE", "CMAKE_CXX_COMPILER", "CMAKE_C_FLAGS_RELEASE", "CMAKE_CXX_FLAGS_RELEASE",
            "BUILD_SHARED_LIBS", "GGML_NATIVE", "GGML_CPU", "GGML_OPENMP", "GGML_OPENMP_ENABLED", "GGML_LLAMAFILE",
            "GGML_CPU_REPACK", "GGML_BLAS", "GGML_AVAILABLE_BACKENDS", "GGML_CPU_ALL_VARIANTS", "GGML_BACKEND_DL")


def _cache_flags(cache: Path) -> dict[str, str]:
    out = {}
    for line in cache.read_text(errors="replace").splitlines():
        name, _, value = line.partition("=")
        k = name.split(":", 1)[0]
        if k in RECORDED:
            out[k] = value
    return out


def ensure_built(version: str = LLAMA_CPP_PYTHON_VERSION, jobs: int | None = None,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Build llama-bench once (a few minutes on 2 cores); return the build record."""
    rec = build_record(version)
    if rec is not None:
        return rec
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"building llama.cpp needs {tool}, which is not on PATH")
    llama = source_dir(version, log)
    build = home(version) / "build"
    shutil.rmtree(build, ignore_errors=True)
    jobs = jobs or os.cpu_count() or 2
    log(f"  building llama.cpp from llama-cpp-python {version}'s sdist into {build} (once; {jobs} jobs)")
    start = time.perf_counter()
    configure = ["cmake", "-S", str(llama), "-B", str(build), *[f"-D{k}={v}" for k, v in CMAKE_FLAGS.items()]]
    cfg = subprocess.run(configure, capture_output=True, text=True)
    if cfg.returncode != 0:
        raise RuntimeError(f"cmake configure of llama.cpp failed:\n{cfg.stdout[-3000:]}\n{cfg.stderr[-3000:]}")
    configured = time.perf_counter()
    make = ["cmake", "--build", str(build), "--config", "Release", "-j", str(jobs), "--target", *TARGETS]
    mk = subprocess.run(make, capture_output=True, text=True)
    if mk.returncode != 0:
        raise RuntimeError(f"building llama.cpp failed:\n{mk.stdout[-3000:]}\n{mk.stderr[-3000:]}")
    end = time.perf_counter()
    picked = _cache_flags(build / "CMakeCache.txt")
    rec = {
        "llama_cpp_python": version,
        "source": f"PyPI sdist llama_cpp_python-{version}.tar.gz, vendor/llama.cpp",
        "targets": list(TARGETS),
        "cmake_flags": CMAKE_FLAGS,
        "cmake_cache": picked,
        "configure_seconds": configured - start,
        "build_seconds": end - configured,
        "jobs": jobs,
        "ggml_cpu_variant": [ln.strip() for ln in cfg.stdout.splitlines() if "Adding CPU backend variant" in ln
                             or "x86 detected" in ln or "OpenMP found" in ln.replace("Found OpenMP", "OpenMP found")],
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (home(version) / "build.json").write_text(json.dumps(rec, indent=2))
    log(f"  built in {rec['configure_seconds'] + rec['build_seconds']:.0f} s "
        f"(configure {rec['configure_seconds']:.0f} s, build {rec['build_seconds']:.0f} s)")
    return rec


def bench(gguf: Path, *, n_prompt: list[int], n_gen: int, threads: int = 2, repetitions: int = 1,
          version: str = LLAMA_CPP_PYTHON_VERSION) -> list[dict[str, Any]]:
    """Run llama-bench on ``gguf``; one dict per test (``pp<n>`` and ``tg<n>``), tokens/s in ``tps``.

    Prompt tests process ``n`` tokens in one batch from an empty context;
    the generation test generates ``n_gen`` tokens one at a time from an
    empty context (llama-bench's definitions). ``samples_ts`` holds each
    repetition's tokens/s.
    """
    args = [str(binary(version)), "-m", str(gguf), "-o", "json", "-t", str(threads), "-r", str(repetitions),
            "-n", str(n_gen), "-p", ",".join(str(n) for n in n_prompt) if n_prompt else "0"]
    with tempfile.TemporaryFile("w+") as out_f, tempfile.TemporaryFile("w+") as err_f:
        proc = subprocess.Popen(args, stdout=out_f, stderr=err_f, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own resource usage: its peak RSS
        proc.returncode = os.waitstatus_to_exitcode(status)
        out_f.seek(0)
        err_f.seek(0)
        stdout, stderr = out_f.read(), err_f.read()
    if proc.returncode != 0:
        raise RuntimeError(f"llama-bench failed on {gguf}:\n{stderr[-3000:]}")
    tests = json.loads(stdout)
    max_rss = usage.ru_maxrss * 1024  # KiB on Linux
    out = []
    for t in tests:
        name = f"pp{t['n_prompt']}" if t["n_prompt"] else f"tg{t['n_gen']}"
        out.append({"test": name, "n_prompt": t["n_prompt"], "n_gen": t["n_gen"], "tps": t["avg_ts"],
                    "samples_ts": t.get("samples_ts"), "n_threads": t.get("n_threads"),
                    "cpu_info": t.get("cpu_info"), "backends": t.get("backends"),
                    "build_commit": t.get("build_commit"), "build_number": t.get("build_number"),
                    "model_type": t.get("model_type"), "model_size": t.get("model_size"),
                    "model_n_params": t.get("model_n_params"), "n_batch": t.get("n_batch"),
                    "n_ubatch": t.get("n_ubatch"), "flash_attn": t.get("flash_attn"), "max_rss": max_rss})
    return out


if __name__ == "__main__":  # build (or find) it, and say how it was built
    print(json.dumps(ensure_built(), indent=2))

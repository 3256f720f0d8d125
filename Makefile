# The two commands of the README:
#   make test   set up .venv with the pinned stack and run the test suite
#   make demo   set up .venv and run the main job on the bundled demo images
# Both are idempotent: set-up is redone only when requirements/ or setup.py change.
# CI also runs `make lint` (`make lint-fix` applies its automatic fixes) and
# `make test-classic` (the oldest supported stack).

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip
STAMP   = $(VENV)/.tagclip-installed
PYTEST_ARGS ?=

# The oldest stack the project supports (docs/compatibility.md, "The tested
# range"): OpenMMLab's classic torch 2.1 one, with mmcv 2.1.0 built from source.
CLASSIC_PYTHON ?= python3.11
CLASSIC_VENV   ?= .venv-classic
CLASSIC_PY      = $(CLASSIC_VENV)/bin/python
CLASSIC_STAMP   = $(CLASSIC_VENV)/.tagclip-installed

# pip's wheel cache is keyed by mmcv's version only, so an mmcv wheel built
# against one torch would be served to a venv with another (whose ops then fail
# to load). mmcv's build therefore gets one cache per torch, named after the
# torch pin of the stack's constraints file.
MMCV_CACHE_ROOT ?= $(HOME)/.cache/pip-tagclip-mmcv
torch_pin = $(shell sed -n 's/^torch==\([0-9.]*\).*/\1/p' $(1))

.PHONY: all setup test test-fast demo lint lint-fix setup-classic test-classic clean

all: test

# $(call install_stack,PYTHON,VENV,CONSTRAINTS): a venv with torch, mmcv built
# from its source distribution (the per-torch wheel cache makes it fast after
# the first build on a machine), and nothing else.
define install_stack
	test -x $(2)/bin/python || $(1) -m venv $(2)
	$(2)/bin/python -m pip install -q --upgrade "pip<26"
	$(2)/bin/python -m pip install -c $(3) -r requirements/build.txt
	PIP_CACHE_DIR=$(MMCV_CACHE_ROOT)-torch$(call torch_pin,$(3)) MAX_JOBS=$${MAX_JOBS:-2} \
	  $(2)/bin/python -m pip install --no-build-isolation -c $(3) -r requirements/mmcv.txt
endef

# $(call install_rest,VENV,CONSTRAINTS): the runtime and test dependencies,
# the package (editable) and the import check.
define install_rest
	$(1)/bin/python -m pip install -c $(2) -r requirements/runtime.txt -r requirements/tests.txt
	$(1)/bin/python -m pip install --no-build-isolation --no-deps -e .
	$(1)/bin/python -c "import mmcv.ops, tagclip_mmseg, torch; print('tagclip_mmseg', tagclip_mmseg.__version__, 'installed with torch', torch.__version__)"
endef

$(STAMP): setup.py requirements/*.txt
	$(call install_stack,$(PYTHON),$(VENV),requirements/constraints.txt)
	$(call install_rest,$(VENV),requirements/constraints.txt)
	$(PIP) install -c requirements/constraints.txt -r requirements/lint.txt
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) demo/image_demo.py demo/images --out-dir demo/outputs

# The hooks of .pre-commit-config.yaml run .venv's programs (requirements/lint.txt).
LINT_PATH = PATH="$(abspath $(VENV))/bin:$$PATH"

# pre-commit's checks (ruff, isort, codespell, whitespace; settings in
# pyproject.toml and setup.cfg) over every tracked file, the oldest Python
# setup.py's python_requires admits (vermin), and the layer order of
# README.md, "Layout" (lint-imports; contracts in setup.cfg, [importlinter]).
lint: $(STAMP)
	$(LINT_PATH) $(VENV)/bin/pre-commit run --all-files --show-diff-on-failure
	$(VENV)/bin/vermin --no-tips -t=3.8- --eval-annotations --violations tagclip_mmseg tools demo setup.py
	PYTHONPATH=$(CURDIR) $(VENV)/bin/lint-imports
	$(PY) tools/analysis_tools/check_doc_links.py

# The automatic fixes of `make lint` (ruff's safe fixes, import order,
# unambiguous spelling, whitespace), then what is left to fix by hand.
lint-fix: $(STAMP)
	$(LINT_PATH) .ci/lint_fix.sh

# The classic stack is an existing OpenMMLab environment (torch and mmcv)
# first: installing the package into it, as a user would (`pip install .` and
# `pip install -e .`, dependencies resolved), must leave torch, torchvision,
# mmcv and numpy as they were (.ci/check_install_keeps_stack.sh).
$(CLASSIC_STAMP): setup.py requirements/*.txt
	$(call install_stack,$(CLASSIC_PYTHON),$(CLASSIC_VENV),requirements/constraints-classic.txt)
	.ci/check_install_keeps_stack.sh $(CLASSIC_PY)
	$(call install_rest,$(CLASSIC_VENV),requirements/constraints-classic.txt)
	touch $(CLASSIC_STAMP)

setup-classic: $(CLASSIC_STAMP)

# The `classic` selection (every path once) on the classic stack.
test-classic: $(CLASSIC_STAMP)
	$(CLASSIC_PY) -m pytest -m classic $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(CLASSIC_VENV) build *.egg-info

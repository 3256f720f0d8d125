# The two commands of the README:
#   make test   set up .venv with the pinned stack and run the test suite
#   make demo   set up .venv and run the main job on the bundled demo images
# Both are idempotent: set-up is redone only when requirements/ or setup.py change.

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip
CONSTRAINTS = -c requirements/constraints.txt
STAMP   = $(VENV)/.tagclip-installed
PYTEST_ARGS ?=

.PHONY: all setup test test-fast demo clean

all: test

$(STAMP): setup.py requirements/*.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip<26"
	$(PIP) install $(CONSTRAINTS) -r requirements/build.txt
	# Full mmcv (with compiled ops) from its source distribution; pip's wheel
	# cache makes this fast after the first build on a machine.
	MAX_JOBS=$${MAX_JOBS:-2} $(PIP) install --no-build-isolation $(CONSTRAINTS) -r requirements/mmcv.txt
	$(PIP) install $(CONSTRAINTS) -r requirements/runtime.txt -r requirements/tests.txt
	$(PIP) install --no-build-isolation --no-deps -e .
	$(PY) -c "import mmcv.ops, tagclip_mmseg; print('tagclip_mmseg', tagclip_mmseg.__version__, 'installed')"
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) demo/image_demo.py demo/images --out-dir demo/outputs

clean:
	rm -rf $(VENV) build *.egg-info

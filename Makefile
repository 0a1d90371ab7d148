# Two set-up commands: `make demo` and `make test`. Both work on a fresh clone of a fresh machine.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_PACKAGES := dcmtk dicom3tools chromium r-base-core r-cran-rms r-cran-proc fonts-dejavu-core
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test test-fast venv sysdeps firmware tflite-env bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[train,dev]'
	@touch $(STAMP)

venv: $(STAMP)

# Debian packages the tests use: a real DICOM peer, a real browser, R's rms/pROC as the statistics reference.
sysdeps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# Second environment with numpy<2 and the last tflite-runtime, for the Coral/Jetson code path.
TFLITE_VENV := .venv-tflite
$(TFLITE_VENV)/.installed:
	@test -x $(TFLITE_VENV)/bin/python || $(PY) -m venv $(TFLITE_VENV)
	$(TFLITE_VENV)/bin/pip install --quiet 'numpy<2' 'tflite-runtime==2.14.*' 'opencv-python-headless<4.11'
	@touch $@
tflite-env: $(TFLITE_VENV)/.installed

test: sysdeps venv tflite-env
	$(BIN)/python -m pytest -ra -q $(PYTEST_ARGS)

test-fast: venv
	$(BIN)/python -m pytest -ra -q -m "not slow" $(PYTEST_ARGS)

demo: venv
	$(BIN)/noa-edge demo

# Regenerates firmware_assets/demo-phantom reproducibly from the seed (long: trains a network).
firmware: venv
	bash benchmarks/make_demo_bundle.sh

bench: venv
	$(BIN)/noa-edge bench

clean:
	rm -rf $(VENV) $(TFLITE_VENV) build *.egg-info

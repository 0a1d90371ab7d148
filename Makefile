# Two set-up commands: `make demo` and `make test`. Both work on a fresh clone of a fresh machine.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BASE_STAMP := $(VENV)/.installed-base
APT_PACKAGES := dcmtk dicom3tools chromium r-base-core r-cran-rms r-cran-proc fonts-dejavu-core poppler-utils systemd
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test test-fast lint mutants venv venv-base sysdeps firmware tflite-env axe bench wheelhouse clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[train,dev]'
	@touch $(STAMP)

venv: $(STAMP)

# The device install alone (no TensorFlow, scikit-learn, matplotlib): what `make demo` needs. `make test`
# later adds the extras to the same .venv; a .venv that already has them is left as it is.
$(BASE_STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	@touch $(BASE_STAMP)

venv-base: $(BASE_STAMP)

# Offline wheelhouse for a device: wheelhouse/$(PLATFORM)-py$(PYTHON)/ (binary wheels + install.sh, --no-index).
PLATFORM ?= x86_64
PYTHON ?= $(shell $(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
wheelhouse: venv-base
	@test -x $(BIN)/uv || $(BIN)/pip install --quiet 'uv>=0.9,<0.10'
	PIP="$(BIN)/python -m pip" UV=$(BIN)/uv bash deploy/wheelhouse.sh $(PLATFORM) $(PYTHON) wheelhouse/$(PLATFORM)-py$(PYTHON)

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

# axe-core (npm) for the accessibility checks the browser tests inject; into git-ignored .npm/, pinned.
AXE_VERSION := 4.14.1
NPM_DIR := .npm
AXE_STAMP := $(NPM_DIR)/.axe-core-$(AXE_VERSION)
$(AXE_STAMP):
	@# npm comes with Node.js; Debian's npm package conflicts with NodeSource's nodejs, so only when npm is absent
	@command -v npm >/dev/null || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends npm; }
	npm install --prefix $(NPM_DIR) --no-save --no-audit --no-fund --loglevel=error axe-core@$(AXE_VERSION)
	@touch $@
axe: $(AXE_STAMP)

test: sysdeps venv tflite-env axe
	$(BIN)/python -m pytest -ra -q $(PYTEST_ARGS)

# Everything but the tests marked slow (training, conversion, the end-to-end chain): < 3 min, docs/TESTING.md.
# pytest's own exit status is make's: a failure, or 5 = no test collected, fails the target.
test-fast: sysdeps venv tflite-env axe
	$(BIN)/python -m pytest -ra -q -m "not slow" $(PYTEST_ARGS)

# ruff (style, imports, bugbear, blind excepts) on the whole tree, mypy on edge/; config in pyproject.toml.
lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

# Plants each curated bug of tests/mutants/mutants.toml alone in a temporary copy and runs its tests; exit 1
# if one survives or no longer applies. MUTANTS_ARGS="--only crop-xy-swap" runs a subset.
mutants: venv
	$(BIN)/python tests/mutants/run.py $(MUTANTS_ARGS)

demo: venv-base
	$(BIN)/noa-edge demo

# Regenerates firmware_assets/demo-phantom reproducibly from the seed (long: trains a network).
firmware: venv
	bash benchmarks/make_demo_bundle.sh

bench: venv
	$(BIN)/noa-edge bench

clean:
	rm -rf $(VENV) $(TFLITE_VENV) build *.egg-info wheelhouse

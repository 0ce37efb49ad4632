# lockstep: make prereg -> make capture -> make audit; `lockstep verify` for reviewers.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STUDY ?= demo
STUDY_DIR := preregistrations/$(STUDY)
STAMP := $(VENV)/.installed

.PHONY: venv prereg capture audit demo test verify browser clean-venv

venv: $(STAMP)

# torch is pinned first on its own: `pip install torch==2.13.0` takes the CPU build from disk here;
# an unpinned torch would pull gigabytes of CUDA packages.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

prereg: venv
	$(BIN)/lockstep prereg $(STUDY_DIR)

capture: venv
	$(BIN)/lockstep capture $(STUDY_DIR)

audit: venv
	$(BIN)/lockstep label $(STUDY_DIR)
	$(BIN)/lockstep audit $(STUDY_DIR)

verify: venv
	$(BIN)/lockstep verify $(STUDY_DIR)

demo: venv
	$(BIN)/lockstep demo

# The report test opens report.html in a real headless Chromium (Debian's chromium + chromium-driver).
browser:
	tools/install-browser.sh

test: venv browser
	$(BIN)/python -m pytest -q

clean-venv:
	rm -rf $(VENV)

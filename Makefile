# lockstep: make prereg -> make capture -> make audit; `lockstep verify` for reviewers.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STUDY ?= demo
STUDY_DIR := preregistrations/$(STUDY)
STAMP := $(VENV)/.installed

.PHONY: venv prereg capture audit demo demo-discovery demo-trained train-demo test verify browser clean-venv

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

# Retrain the committed trained demo models (models/trained-moe, models/trained-heads) from their seeds; a few minutes on CPU.
train-demo: venv
	$(BIN)/python tools/train_demo.py

# Discovery to confirmation, on the planted model and on its null twin, in a scratch git repository
# (runs/demo-discovery/): discover, propose, freeze, capture, audit, verify (tools/demo_discovery.sh).
demo-discovery: venv
	tools/demo_discovery.sh planted

# The same flow on the models trained here (models/, tools/train_demo.py): units no one chose by hand
# (runs/demo-trained/).
demo-trained: venv
	tools/demo_discovery.sh trained

# The report test opens report.html in a real headless Chromium (Debian's chromium + chromium-driver).
browser:
	tools/install-browser.sh

test: venv browser
	$(BIN)/python -m pytest -q

clean-venv:
	rm -rf $(VENV)

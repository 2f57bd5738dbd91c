# MedGate: two commands. `make run` starts the service with the embedded default;
# `make test` runs the whole suite. Both create .venv in the repository root.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU build of PyTorch; a looser pin pulls a multi-GB CUDA build.
TORCH := torch==2.13.0
APT_TOOLS := dcmtk dicom3tools orthanc orthanc-dicomweb

.PHONY: run test install dev system-tools lint bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e .
	touch $@

$(VENV)/.dev-installed: $(VENV)/.installed
	$(PIP) install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

dev: $(VENV)/.dev-installed

# DICOM peers and validators the tests talk to (dcmtk storescu/echoscu/findscu, dciodvfy).
system-tools:
	@missing=""; \
	for t in storescu:dcmtk dciodvfy:dicom3tools Orthanc:orthanc; do \
	  command -v $${t%%:*} >/dev/null 2>&1 || missing="$$missing $${t#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_TOOLS); \
	  else echo "missing system tools:$$missing (sudo apt-get install $(APT_TOOLS))"; fi; \
	fi

run: install
	$(VENV)/bin/medgate kb build
	$(VENV)/bin/medgate db upgrade
	$(VENV)/bin/medgate serve

test: dev system-tools
	$(PY) -m pytest -q

lint: dev
	$(VENV)/bin/ruff check .

bench: dev system-tools
	$(PY) bench/ingest.py

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache

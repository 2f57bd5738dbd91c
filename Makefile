# MedGate: two commands. `make run` starts the service with the embedded default;
# `make test` runs the whole suite. Both create .venv in the repository root.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU build of PyTorch; a looser pin pulls a multi-GB CUDA build.
TORCH := torch==2.13.0
APT_TOOLS := dcmtk dicom3tools orthanc orthanc-dicomweb chromium
# The OHIF viewer served under /viewer: the prebuilt @ohif/app package (MIT), pinned by version
# and by the tarball's checksum; fetched by `make viewer`, never committed (docs/viewer.md).
OHIF_VERSION := 3.13.2
OHIF_SHA256 := b189d3963bfc58e9394a9db8c7be75d07beb029ec211dbb126d47b62969dd3f1
VIEWER_DIR := viewer/ohif

.PHONY: run test install dev system-tools viewer lint bench clean

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

# DICOM peers and validators the tests talk to (dcmtk storescu/echoscu/findscu, dciodvfy),
# and the browser the viewer's test drives (Debian's chromium; tests/viewer).
system-tools:
	@missing=""; \
	for t in storescu:dcmtk dciodvfy:dicom3tools Orthanc:orthanc chromium:chromium; do \
	  command -v $${t%%:*} >/dev/null 2>&1 || missing="$$missing $${t#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_TOOLS); \
	  else echo "missing system tools:$$missing (sudo apt-get install $(APT_TOOLS))"; fi; \
	fi

# npm only fetches the package (npm pack); nothing is built or installed with it.
$(VIEWER_DIR)/.installed-$(OHIF_VERSION):
	@command -v npm >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm; \
	  else echo "npm is missing (sudo apt-get install npm)"; exit 1; fi; }
	rm -rf $(VIEWER_DIR) && mkdir -p $(VIEWER_DIR)
	cd $(VIEWER_DIR) && npm pack --silent @ohif/app@$(OHIF_VERSION) >/dev/null
	echo "$(OHIF_SHA256)  $(VIEWER_DIR)/ohif-app-$(OHIF_VERSION).tgz" | sha256sum -c --quiet
	tar -xzf $(VIEWER_DIR)/ohif-app-$(OHIF_VERSION).tgz -C $(VIEWER_DIR) --strip-components=1
	rm $(VIEWER_DIR)/ohif-app-$(OHIF_VERSION).tgz
	test -f $(VIEWER_DIR)/dist/index.html
	touch $@

viewer: $(VIEWER_DIR)/.installed-$(OHIF_VERSION)

# `kb build` takes the vectors of unchanged chunks from knowledge_base/.embeddings (checked by
# sha256), so on a fresh clone it takes about a second and never loads the model; it embeds
# only entries added or edited since. `serve` loads the index and the embedder in the
# background (/readyz reports "knowledge").
run: install
	$(VENV)/bin/medgate kb build
	$(VENV)/bin/medgate db upgrade
	$(VENV)/bin/medgate serve

test: dev system-tools viewer
	$(PY) -m pytest -q

lint: dev
	$(VENV)/bin/ruff check .

bench: dev system-tools
	$(PY) bench/ingest.py

clean:
	rm -rf $(VENV) var viewer .pytest_cache .ruff_cache

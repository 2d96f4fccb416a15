# Two commands matter: `make run` and `make test`.  Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SAMPLE ?= fixtures/sample/sample-image.tar

.PHONY: run test venv bench bench-deps clean lint

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m compileall -q converter  # what a regular install does: no compiling at each start
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/rootfs convert $(SAMPLE) -o sample-rootfs --force
	@echo; echo 'The merged view (rootfs ls $(SAMPLE)):'; $(VENV)/bin/rootfs ls $(SAMPLE)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench-deps:
	apt-get update && apt-get install -y umoci pigz zstd

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) sample-rootfs .bench build *.egg-info

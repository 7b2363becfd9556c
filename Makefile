# make demo | make test | make bench: each installs what it needs first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-boot bench packages lint clean

packages:
	@scripts/install-packages

$(STAMP): pyproject.toml | packages
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: packages $(STAMP)
	$(PY) -m pybootc.demo

test: packages $(STAMP)
	$(PY) -m pytest -n 2 --dist loadgroup -q -p no:cacheprovider

# The boot tests alone: every backend, and the Debian 13 guest too.
test-boot: packages $(STAMP)
	PYBOOTC_BOOT_ALL=1 $(PY) -m pytest -q -p no:cacheprovider -s tests/boot

bench: packages $(STAMP)
	$(PY) bench/run.py

lint: $(STAMP)
	$(VENV)/bin/ruff check pybootc tests bench
	$(VENV)/bin/ruff format --check pybootc tests bench
	$(VENV)/bin/mypy pybootc

clean:
	rm -rf $(VENV) demo/work

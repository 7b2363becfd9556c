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
	$(PY) -m pybootc.sample.demo

# Everything but the boot tests on both cores, then the boot scenario for both backends
# and the soft reboot (a Debian forky guest), one at a time: a qemu guest under TCG keeps
# a core busy, and its timeouts assume it has one. The smoke boot tests repeat parts of
# the scenario and run in `make test-boot`.
test: packages $(STAMP)
	$(PY) -m pytest -n 2 -q -p no:cacheprovider -m "not boot"
	$(PY) -m pytest -q -p no:cacheprovider -m boot tests/boot/test_boot_scenario.py \
		tests/boot/test_soft_reboot.py

# Every boot test on a Debian 12 guest, then on a Debian 13 guest (the soft reboot, which
# always boots forky, once).
test-boot: packages $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -s tests/boot
	PYBOOTC_BOOT_RELEASE=trixie $(PY) -m pytest -q -p no:cacheprovider -s tests/boot \
		--ignore tests/boot/test_soft_reboot.py

BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): pyproject.toml | $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

bench: packages $(STAMP) $(BENCH_STAMP)
	$(PY) bench/run.py

lint: $(STAMP)
	$(VENV)/bin/ruff check pybootc tests bench
	$(VENV)/bin/ruff format --check pybootc tests bench
	$(VENV)/bin/mypy pybootc tests bench

clean:
	rm -rf $(VENV) demo/work

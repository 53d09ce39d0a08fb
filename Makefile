# The two commands the README starts with: `make demo` and `make test`.
# Each sets up what it needs on a fresh machine: a .venv with the package and,
# as root, the Debian packages docker-registry, skopeo and docker.io; the tests
# also need chromium and libnss3-tools (certutil) for the status page test.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PACKAGES := docker-registry skopeo docker.io
TEST_PACKAGES := $(PACKAGES) chromium libnss3-tools
PYTEST_ARGS ?=

.PHONY: demo test test-fast packages test-packages venv clean

demo: venv packages
	$(PY) -m gateway demo

test: venv test-packages
	$(PY) -m pytest $(PYTEST_ARGS)

# The suite without the tests that start a real dockerd.
test-fast: venv test-packages
	$(PY) -m pytest -m "not dockerd" $(PYTEST_ARGS)

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $@

packages:
	@scripts/ensure-packages $(PACKAGES)

test-packages:
	@scripts/ensure-packages $(TEST_PACKAGES)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

# The gateway beside nginx on one registry, on
# loopback; see BENCHMARKS.md. HAProxy joins when installed. BENCH_ARGS=--quick
# gives a one-minute run.
BENCH_ARGS ?=
BENCH_PACKAGES := nginx hey curl

.PHONY: bench bench-quick
bench: venv packages
	@scripts/ensure-packages $(BENCH_PACKAGES)
	$(PY) -m bench $(BENCH_ARGS)

bench-quick:
	$(MAKE) bench BENCH_ARGS=--quick

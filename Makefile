# The two commands of the README. Each creates .venv and installs what it needs on first use.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint

$(STAMP): pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[rl,dev]'
	touch $(STAMP)

## demo: the main job: the shipped toy audit, end to end on this machine's CPU; ends with the path of its report.
demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/rrf-audit compare toy toy-safe --out reports/toy-vs-toy-safe

## test: the whole test suite (also what CI runs). Installs Debian's chromium for the browser test if it can.
test: $(STAMP)
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	  || echo "note: chromium could not be installed here; the browser test will skip and say so"
	HF_HUB_OFFLINE=1 $(BIN)/pytest -q -n 2 --dist loadfile --no-loadscope-reorder

lint: $(STAMP)
	$(BIN)/ruff check rrf audit prompts tests bench

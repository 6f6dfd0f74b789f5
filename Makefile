# Two targets do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU build of torch: an unpinned torch pulls a CUDA build of several GB.
TORCH_PIN ?= torch==2.13.0
# Where ruff looks: everything in the repository (ruff skips .venv and other ignored folders).
LINT_PATHS ?= .

.PHONY: demo test test-fast test-compile fashion-data lint docs docs-serve install clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_PIN)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

# The extras for `make lint` and `make docs`, on top of the test install (same venv).
$(BIN)/.installed-lint: $(BIN)/.installed
	$(BIN)/pip install --quiet -e ".[lint]"
	touch $@

$(BIN)/.installed-docs: $(BIN)/.installed
	$(BIN)/pip install --quiet -e ".[docs]"
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/mlem demo --overwrite

# pytest exits 5 when it collects no tests; make fails on any non-zero exit, so that is a failure too.
test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

# Everything but the end-to-end benchmark runs (marked slow).
test-fast: $(BIN)/.installed
	$(BIN)/python -m pytest -q -m "not slow"

# torch.compile of UNet ladders end to end (marked compile; minutes each on a CPU, not in `make test`).
test-compile: $(BIN)/.installed
	$(BIN)/python -m pytest -q -m compile

lint: $(BIN)/.installed-lint
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

# The documentation site into build/site/; --strict turns every warning (a broken link or API reference) into a failure.
docs: $(BIN)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: $(BIN)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

# Fashion-MNIST's IDX files for the image benchmarks and training (Debian's package; needs root).
# The tests do not need it: they write tiny IDX files of their own.
fashion-data:
	test -d /usr/share/datasets/fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache build/site

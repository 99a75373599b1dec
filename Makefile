# One command each for the README: `make serve` (set-up + main job) and `make test` (set-up + tests).
# Both create .venv on first use. On a GPU machine, install your CUDA build of torch into .venv
# first (or set TORCH_SPEC); the default pins the CPU build this project is tested with.

VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup test lint typecheck pytest client-test serve assets clean

setup: $(STAMP)

$(STAMP): pyproject.toml clients/pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ./clients -e ".[all]"
	touch $(STAMP)

lint: setup
	$(VENV)/bin/ruff check .

typecheck: setup
	$(VENV)/bin/mypy

pytest: setup
	$(VENV)/bin/pytest -q

client-test:
	bash scripts/test_client_without_torch.sh

test: lint typecheck pytest client-test

serve: setup
	$(VENV)/bin/energy-rerank serve

# Rebuilds the embedded default bundles (tiny reference policy + energy head on the synthetic task).
assets: setup
	bash scripts/build_default_assets.sh

clean:
	rm -rf $(VENV) .venv-client .pytest_cache .mypy_cache .ruff_cache

# Regenerates the CLI reference (docs/cli.md) from the argparse parsers; a test fails when it is stale.
.PHONY: docs
docs: setup
	$(PY) -m energy_rerank.cli_reference > docs/cli.md.tmp && mv docs/cli.md.tmp docs/cli.md

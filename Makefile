# Two set-up commands that work on a fresh machine:  make demo  /  make test
# The CPU wheel of torch is pinned here because an unpinned `torch` pulls a multi-GB
# CUDA build; on a GPU machine install your own torch first and `pip install -e .`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export WANDB_MODE ?= offline
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

.PHONY: demo test lint bench install clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	bash scripts/demo.sh $(PY)

# ruff (pyflakes, pycodestyle, isort, pyupgrade) and import-linter (imports only go down the
# stages, see ddpm_lesion/__init__.py): a wrong-way import or a lint error fails CI.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

# Two pytest-xdist workers, one per core: most tests wait on a single-threaded subprocess, so
# one worker leaves a core idle (649-688 s serial, median 461 s on two; BENCHMARKS.md "Test suite").
# --dist loadfile keeps a file on one worker, so its module fixtures (trained models) are
# built once. `make test TEST_WORKERS=0` runs serially.
TEST_WORKERS ?= 2

test: lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

bench: $(STAMP)
	$(PY) bench/sample.py
	$(PY) bench/sample.py --size tiny --tiny_model bench/models/ddpm-lesion-tiny-32-long --work_dir /tmp/ddpm-lesion-bench/sample-long
	$(PY) bench/train.py

clean:
	rm -rf runs/demo out/demo

# The two commands: `make demo` and `make test`. Each creates .venv if missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo

.PHONY: demo test test-extras test-slow install clean

install: $(STAMP)

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

# Pretrain on the embedded digits data, then print linear-probe and kNN accuracy
# beside a random-init encoder and raw pixels (runs/demo/results.json).
demo: $(STAMP)
	rm -rf $(DEMO_DIR)
	$(PY) -m bt_jax.main --config configs/digits.py --workdir $(DEMO_DIR)

# Fast tests (the default set); CPU only, 8 virtual devices.
test: $(STAMP)
	$(PY) -m pytest -q -rs -n 2 --durations=10 -m "not slow" tests

# The fast tests that need an optional package (libtpu: `pip install 'bt_jax[tpu]'`; XLA:GPU:
# `pip install 'bt_jax[gpu-plan]'`; PyTorch: `pip install torch`). `make test` runs them too
# where the package is there, else skips them.
test-extras: $(STAMP)
	$(PY) -m pytest -q -rs -n 2 -m "(libtpu or cuda_plugin or torch) and not slow" tests

# The tests that take a minute or more each on a 2-core CPU: whole training runs (every
# artifact and resume, on-device augmentation, folders, the kNN monitor, SIGKILL/SIGTERM
# resume, 2 processes, the evaluation CLI, a refused resume, a profiled run, the files of
# each recipe's settings), one step of
# each ablation, the tiny ablation sweep and tuning run, and the benchmark scripts. CI runs them after `make test` (.ci/run).
test-slow: $(STAMP)
	$(PY) -m pytest -q -rs -n 2 --durations=5 -m slow tests

clean:
	rm -rf $(VENV) runs .pytest_cache

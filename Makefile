# The quick start is `make train` and `make test`; `make test-readme` runs the README's commands as written. Each builds .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: train test test-fast test-readme bench lint format evaluate tune cluster-up cluster-down clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

train: $(STAMP)  ## train the default CNN, then evaluate it on the test set
	$(PY) jobs/train.py --evaluate $(ARGS)

test: $(STAMP)  ## the whole suite (real Ray, real MNIST subsets)
	$(PY) -m pytest -q $(ARGS)

test-fast: $(STAMP)  ## skip the slow fault/cluster tests
	$(PY) -m pytest -q -m "not slow" $(ARGS)

bench: $(STAMP)  ## long measurements; results go to docs/benchmarks.md
	$(PY) bench/run_all.py $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

evaluate: $(STAMP)  ## evaluate the newest run's best checkpoint
	$(PY) jobs/evaluate.py $(ARGS)

tune: $(STAMP)  ## a learning-rate / optimizer sweep
	$(PY) jobs/tune.py $(ARGS)

cluster-up: $(STAMP)  ## a Ray head on 127.0.0.1 (GCS :6379, job server :8265, token auth) whose jobs run .venv's python
	$(PY) -m mnist_ray.head up

cluster-down:  ## stop the head cluster-up started (its session only: other Ray instances keep running)
	$(PY) -m mnist_ray.head down

test-readme: $(STAMP)  ## run the README's marked shell blocks as a user would (about 10 minutes)
	$(PY) -m pytest -q -m readme --durations=0 tests/test_readme.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

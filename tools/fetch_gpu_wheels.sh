#!/usr/bin/env bash
# Download into .whl/ the pure-Python wheels that `import sensq.*` needs and the GPU machine lacks, so that the device
# tool can carry them (`carry: [".whl"]`) and bench/gpu_suite.sh can install them there without a network.
#
# That machine (nvidia-h200, Python 3.12) has torch 2.11, triton 3.6, transformers 5.17, accelerate, numpy, scipy,
# matplotlib, pytest, tokenizers, safetensors — but not fastcore (sensq's CLI helpers, fastcore.test in the cuda cells)
# nor fastprogress (progress bars). fastprogress 1.1.x imports python-fasthtml and a web stack (starlette, uvicorn,
# httpx, ...); 1.0.3 has no dependencies and the same `progress_bar` API, so the GPU machine gets 1.0.3.
# Both wheels have no Requires-Dist of their own (checked: unzip -p WHEEL '*/METADATA' | grep ^Requires-Dist).
#
#   bash tools/fetch_gpu_wheels.sh            # PYTHON=/path/to/python with pip (default: python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=(fastcore==1.12.47 fastprogress==1.0.3)
mkdir -p .whl
for w in "${WHEELS[@]}"; do                       # one version of each: two would stop the install there
  name=${w%%==*}; ver=${w##*==}
  for f in .whl/"$name"-*.whl; do [ -e "$f" ] && [[ "$f" != .whl/"$name-$ver"-* ]] && rm -v "$f"; done
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform any --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
ls -l .whl

#!/usr/bin/env bash
# The prepared GPU check (one command, <= 8 minutes on one H200): install what the machine lacks, then run
# scripts/gpu_check.py on every family's tiny model and write one JSON of pass / fail / skipped with timings.
#
#   scripts/gpu_check.sh fetch        # here (with PyPI): download the wheels a bare GPU image lacks into .whl/
#   scripts/gpu_check.sh [OUT.json]   # on the GPU machine: install .whl/ (or requirements/gpu.lock where PyPI is
#                                     # reachable), then check; default OUT: $OUT/gpu_check.json or
#                                     # benchmarks/results/gpu_check.json
#
# The device image of this workplace has torch, transformers, peft and accelerate but no network; vLLM's CUDA wheel
# is larger than what may travel (64 MiB), so there the vLLM steps report "skipped: vLLM is not installed".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=(trl==1.16.0 datasets==5.2.0 dill multiprocess pydantic==2.14.4 pydantic-core annotated-types
        typing-inspection openai==3.57.0 distro jiter sniffio bitsandbytes==0.50.2 ImageHash==4.3.2 PyWavelets)

if [[ "${1:-}" == "fetch" ]]; then
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  plat=(); for v in $(seq 39 -1 17); do plat+=(--platform "manylinux_2_${v}_x86_64"); done
  $PY -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" \
      --platform manylinux2014_x86_64 --platform any -d .whl "${WHEELS[@]}"
  du -sh .whl
  exit 0
fi

out=${1:-${OUT:+$OUT/gpu_check.json}}
out=${out:-benchmarks/results/gpu_check.json}
if compgen -G ".whl/*.whl" > /dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD/src
elif $PY -m pip download -q --no-deps -d /tmp/probe six==1.16.0 > /dev/null 2>&1; then
  $PY -m pip install -q --no-deps -r requirements/gpu.lock && $PY -m pip install -q --no-deps -e .
else
  export PYTHONPATH=$PWD/src
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
timeout 480 $PY scripts/gpu_check.py --out "$out"
echo "wrote $out"

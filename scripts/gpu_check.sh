#!/usr/bin/env bash
# The prepared GPU check (one command, <= 8 minutes on one H100/H200): install what the machine lacks from the
# carried wheels, then run scripts/gpu_check.py (every stage kind of a real-shape 7B build in 4-bit with gradient
# checkpointing at real resolution, GPU peak vs `dermvlm plan`, vLLM steps where vLLM is installed) into one JSON.
#
#   scripts/gpu_check.sh fetch          # here (with PyPI): the wheels a bare CUDA image lacks, into .whl/
#                                       # (git-ignored; the device tool carries it when `carry` names .whl)
#   scripts/gpu_check.sh [OUT.json]     # on the GPU machine: install .whl/, check; default OUT: $OUT/gpu_check.json
#                                       # or benchmarks/results/gpu_check.json
#   scripts/gpu_check.sh --dry-run [OUT.json]   # on CPU: the same steps without CUDA (1 layer, peak RSS)
#
# What travels: the device image of this workplace has CUDA torch, accelerate, numpy, pandas, pyarrow, PIL, OpenCV,
# scikit-learn, networkx, matplotlib, rich, typer, huggingface_hub, tokenizers, safetensors (KINDS.md), and no
# network. It lacks TRL, datasets, bitsandbytes, pydantic and ImageHash, and its transformers (5.17) is older than
# TRL's vision SFT needs (5.18): those go as wheels for CPython 3.12. bitsandbytes' wheel (43 MB) holds a library
# per CUDA release; `fetch` repacks it with the CUDA 13 ones only (BNB_CUDA to choose), so everything fits the
# 64 MiB a call may carry. The environment step of the JSON lists any requirement still missing there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=(transformers==5.19.0 trl==1.16.0 peft==0.21.2 datasets==5.2.0 "dill<0.4.2" "multiprocess<0.70.20"
        bitsandbytes==0.50.2 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types typing-inspection
        ImageHash==4.3.2 PyWavelets)
BNB_CUDA=${BNB_CUDA:-130 132}

if [[ "${1:-}" == "fetch" ]]; then
  rm -rf .whl && mkdir -p .whl
  plat=(); for v in $(seq 39 -1 17); do plat+=(--platform "manylinux_2_${v}_x86_64"); done
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" \
      --platform manylinux2014_x86_64 --platform any -d .whl "${WHEELS[@]}"
  $PY - "$BNB_CUDA" .whl/bitsandbytes-*.whl <<'EOF'
"""Rewrite the bitsandbytes wheel without the libraries of other CUDA releases (and their RECORD lines)."""
import re, sys, zipfile
keep, path = sys.argv[1].split(), sys.argv[2]
def wanted(name):
    m = re.search(r"libbitsandbytes_(cuda|rocm|xpu)(\d*)", name)
    return m is None or (m.group(1) == "cuda" and m.group(2) in keep)
with zipfile.ZipFile(path) as src:
    items = [(i, src.read(i)) for i in src.infolist() if wanted(i.filename)]
with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as out:
    for info, data in items:
        if info.filename.endswith(".dist-info/RECORD"):
            data = b"\n".join(line for line in data.splitlines() if wanted(line.decode())) + b"\n"
        out.writestr(info, data)
EOF
  du -sh .whl
  exit 0
fi

dry=()
if [[ "${1:-}" == "--dry-run" ]]; then dry=(--dry-run); shift; fi
out=${1:-${OUT:+$OUT/gpu_check.json}}
out=${out:-benchmarks/results/gpu_check.json}
if compgen -G ".whl/*.whl" > /dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD/src
elif [[ -x .venv/bin/python ]]; then
  PY=.venv/bin/python  # a machine set up with `make setup` / `make setup-gpu`
else
  export PYTHONPATH=$PWD/src
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
limit=480
[[ ${#dry[@]} -gt 0 ]] && limit=3600  # CPU is slower; the 8 minutes are the GPU budget
timeout "$limit" $PY scripts/gpu_check.py "${dry[@]}" --out "$out"
echo "wrote $out"

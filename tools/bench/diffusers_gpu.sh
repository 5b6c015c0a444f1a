#!/usr/bin/env bash
# The diffusers 0.42.1 competitor benchmark (tools/bench/diffusers_gpu.py) on the GPU
# machine, run from the repo root. The machine has no network: diffusers comes from the
# wheels that tools/bench/fetch_wheels.sh put in .whl/ (carry .whl/ along), installed into
# /tmp/site. Arguments go to the Python script, e.g.
#
#   tools/bench/diffusers_gpu.sh --part gen --preset w480 --layers 8
#
# Logs under $OUT (default ./gpu-out): diffusers.txt (everything printed), diffusers.jsonl
# (the JSON lines alone) and diffusers-env.txt (versions and GPU).
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
ls .whl/*.whl >/dev/null 2>&1 || { echo "no wheels in .whl/: run tools/bench/fetch_wheels.sh and carry .whl" >&2; exit 2; }
PIP=(python3 -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile
    --no-cache-dir --upgrade --target /tmp/site)
"${PIP[@]}" .whl/*.whl || exit 2
# diffusers 0.42.1 wants huggingface_hub>=1.32; add the carried one only if the image's is older.
if ! python3 -c 'import sys, huggingface_hub as h; from packaging.version import Version as V; sys.exit(V(h.__version__) < V("1.32"))'; then
    echo "installed huggingface_hub is older than 1.32: adding $(ls .whl/hub/*.whl)"
    "${PIP[@]}" .whl/hub/*.whl || exit 2
fi
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c 'import torch, diffusers, transformers, huggingface_hub as h; print(f"torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}), diffusers {diffusers.__version__} from {diffusers.__file__}, transformers {transformers.__version__}, huggingface_hub {h.__version__}")'
} 2>&1 | tee "$OUT/diffusers-env.txt"
python3 tools/bench/diffusers_gpu.py "$@" 2>&1 | tee "$OUT/diffusers.txt"
rc=${PIPESTATUS[0]}
grep '^{' "$OUT/diffusers.txt" > "$OUT/diffusers.jsonl"
exit "$rc"

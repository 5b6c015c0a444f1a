#!/usr/bin/env bash
# `phyai bench` on the GPU machine with the carried CUDA binary (.carry/phyai.gz, from
# tools/cuda/build.sh then gzip). Arguments go to `phyai bench`. Logs under $OUT.
set -uo pipefail
# shellcheck source=tools/gpu/env.sh
. "$(dirname "$0")/env.sh"
export PHYAI_LOG=${PHYAI_LOG:-warn}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
ls "$SP/nvidia/cudnn/lib" | grep -m1 'libcudnn.so.' | tee -a "$OUT/gpu.txt"
python3 -m pip list 2>/dev/null | grep -i -E "cudnn|^torch " | tee -a "$OUT/gpu.txt"
/tmp/phyai bench "$@" 2>&1 | tee "$OUT/bench.txt"

#!/usr/bin/env bash
# `phyai bench` on the GPU machine with the carried CUDA binary (.carry/phyai.gz, from
# tools/cuda/build.sh then gzip). Arguments go to `phyai bench`. Logs under $OUT.
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
SP=$(python3 -c "import site;print(site.getsitepackages()[0])")
export LD_LIBRARY_PATH=$SP/nvidia/cu13/lib:$SP/nvidia/nccl/lib:$SP/nvidia/cudnn/lib:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0 PHYAI_LOG=${PHYAI_LOG:-warn}
gunzip -c .carry/phyai.gz > /tmp/phyai && chmod +x /tmp/phyai
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
ls "$SP/nvidia/cudnn/lib" | grep -m1 'libcudnn.so.' | tee -a "$OUT/gpu.txt"
pip list 2>/dev/null | grep -i -E "cudnn|^torch " | tee -a "$OUT/gpu.txt"
/tmp/phyai bench "$@" 2>&1 | tee "$OUT/bench.txt"

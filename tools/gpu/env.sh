#!/usr/bin/env bash
# Sourced by the tools/gpu scripts on the GPU machine: $OUT for logs (default ./gpu-out),
# the loader path to the CUDA libraries of the machine's Python packages, NVLink multicast
# off for NCCL, and the carried binary ($BIN, default .carry/phyai.gz) unpacked to /tmp/phyai.
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
SP=$(python3 -c "import site;print(site.getsitepackages()[0])")
export LD_LIBRARY_PATH=$SP/nvidia/cu13/lib:$SP/nvidia/nccl/lib:$SP/nvidia/cudnn/lib:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
gunzip -c "${BIN:-.carry/phyai.gz}" > /tmp/phyai && chmod +x /tmp/phyai

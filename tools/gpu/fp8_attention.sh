#!/usr/bin/env bash
# FP8 attention on the GPU machine, quick: the GPU test against exact attention (carried
# .carry/fp8_parity.gz) and attention alone at the W720 and W480 generation shapes, cuDNN
# bf16 then the FP8 kernel, in one run. Logs under $OUT.
set -uo pipefail
# shellcheck source=tools/gpu/env.sh
. "$(dirname "$0")/env.sh"
export PHYAI_LOG=${PHYAI_LOG:-warn}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/gpu.txt"
gunzip -c .carry/fp8_parity.gz > /tmp/fp8_parity && chmod +x /tmp/fp8_parity
PHYAI_FIXTURES=tests/fixtures PHYAI_GPU_TESTS=1 timeout 300 /tmp/fp8_parity --ignored --nocapture \
  cuda_fp8_attention 2>&1 | tee "$OUT/fp8_attention_test.txt"
for f in "" "--fp8-attention"; do
  # shellcheck disable=SC2086
  timeout 200 /tmp/phyai bench --json --part attention --preset w720 --preset w480 $f 2>&1 |
    tee -a "$OUT/attention.jsonl"
done

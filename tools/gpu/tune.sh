#!/usr/bin/env bash
# The FP8 GEMMs' first-call tuning (PHYAI_FP8_AUTOTUNE) on the GPU machine: the GPU FP8
# tests, the GEMMs of one Nano layer and the W480/W720 forwards (FP8 + FP8 attention) with
# cuBLASLt's first pick, then with the fastest of its candidates; the tuning's choices are
# logged to $OUT/tune.log. Then FP8 attention alone in each tile configuration of its kernel.
set -uo pipefail
# shellcheck source=tools/gpu/env.sh
. "$(dirname "$0")/env.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
if [ -f .carry/fp8_parity.gz ]; then
  gunzip -c .carry/fp8_parity.gz > /tmp/fp8_parity && chmod +x /tmp/fp8_parity
  PHYAI_FIXTURES=tests/fixtures PHYAI_GPU_TESTS=1 /tmp/fp8_parity --ignored --nocapture cuda_fp8 > "$OUT/fp8_test.txt" 2>&1
  tail -4 "$OUT/fp8_test.txt"
fi
B="/tmp/phyai bench --json"
for tune in 0 1; do  # 1: time the candidates
  export PHYAI_FP8_AUTOTUNE=$tune
  PHYAI_LOG=phyai=info $B --part fp8-gemm --preset w720 --preset w480 2> >(grep -a "FP8 GEMM" >> "$OUT/tune.log") | tee -a "$OUT/fp8_gemm.jsonl"
  $B --part gen --preset w480 --preset w720 --quantize fp8 --fp8-attention 2>/dev/null | tee -a "$OUT/gen.jsonl"
done
# The FP8 attention kernel's tile configurations (PHYAI_FP8_ATTENTION_TILES, 0 = FlashInfer's).
for t in 0 1 2 3 4; do
  PHYAI_FP8_ATTENTION_TILES=$t $B --part attention --preset w720 --preset w480 --fp8-attention 2>&1 \
    | sed "s/^{/{\"tiles\": $t, /" | tee -a "$OUT/attention.jsonl"
done

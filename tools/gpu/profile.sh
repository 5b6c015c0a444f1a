#!/usr/bin/env bash
# Where the device time of the FP8 forwards and requests goes, stage by stage of the video
# tower's layers (`phyai bench --profile`): the W720 and W480 forwards (FP8 GEMMs + FP8
# attention; BF16=1 adds bf16 at W720), then the t2v 256p and 480p and t2i 720p requests at
# the published settings (FULL720=1 adds t2v 720p). JSON lines in $OUT/profile.jsonl. With
# .carry/fp8_parity.gz and .carry/glue.gz (see tools/cuda/test-bins.sh) it runs those GPU
# tests first.
set -uo pipefail
# shellcheck source=tools/gpu/env.sh
. "$(dirname "$0")/env.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$OUT/gpu.txt"
if [ -f .carry/fp8_parity.gz ]; then
  gunzip -c .carry/fp8_parity.gz > /tmp/fp8_parity && chmod +x /tmp/fp8_parity
  PHYAI_FIXTURES=tests/fixtures PHYAI_GPU_TESTS=1 /tmp/fp8_parity --ignored --nocapture cuda_fp8 2>&1 \
    | grep -aE "^test |test result|panicked|vs exact|rel err" | tee -a "$OUT/fp8_test.txt"
fi
if [ -f .carry/glue.gz ]; then
  gunzip -c .carry/glue.gz > /tmp/glue && chmod +x /tmp/glue
  (cd crates/phyai && PHYAI_GPU_TESTS=1 /tmp/glue --ignored --nocapture cuda_glue 2>&1) \
    | grep -aE "^test |test result|panicked|qk_norm_rope|assert" | tee -a "$OUT/fp8_test.txt"
fi
B=(/tmp/phyai bench --json --profile)
for p in w720 w480; do
  "${B[@]}" --part gen --preset $p --quantize fp8 --fp8-attention --runs 3 2>>"$OUT/errs.txt" | tee -a "$OUT/profile.jsonl"
done
if [ "${BF16:-0}" = 1 ]; then
  "${B[@]}" --part gen --preset w720 --runs 3 2>>"$OUT/errs.txt" | tee -a "$OUT/profile.jsonl"
fi
CELLS=("t2v --resolution 256p" "t2i --resolution 720p" "t2v --resolution 480p")
if [ "${FULL720:-0}" = 1 ]; then CELLS+=("t2v --resolution 720p"); fi
for c in "${CELLS[@]}"; do
  # shellcheck disable=SC2086
  "${B[@]}" --workload $c --precision fp8 --fp8-attention 2>>"$OUT/errs.txt" | tee -a "$OUT/profile.jsonl"
done

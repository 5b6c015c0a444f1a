#!/usr/bin/env bash
# Where the device time of the FP8 forwards and requests goes, stage by stage of the video
# tower's layers (`phyai bench --profile`): the W720 and W480 forwards (FP8 GEMMs + FP8
# attention, and bf16 at W720 beside them), then the t2v 256p and t2i 720p requests at the
# published settings. JSON lines in $OUT/profile.jsonl.
set -uo pipefail
# shellcheck source=tools/gpu/env.sh
. "$(dirname "$0")/env.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$OUT/gpu.txt"
B=(/tmp/phyai bench --json --profile)
for p in w720 w480; do
  "${B[@]}" --part gen --preset $p --quantize fp8 --fp8-attention --runs 3 2>>"$OUT/errs.txt" | tee -a "$OUT/profile.jsonl"
done
"${B[@]}" --part gen --preset w720 --runs 3 2>>"$OUT/errs.txt" | tee -a "$OUT/profile.jsonl"
for c in "t2v --resolution 256p" "t2i --resolution 720p"; do
  # shellcheck disable=SC2086
  "${B[@]}" --workload $c --precision fp8 --fp8-attention 2>>"$OUT/errs.txt" | tee -a "$OUT/profile.jsonl"
done

#!/usr/bin/env bash
# FP8 on the GPU machine, in one run beside bf16: the FP8 layer tests (the carried test
# binary .carry/fp8_parity.gz, built with `cargo test --features cuda --no-run`), the GEMMs
# of one Nano generation layer against bf16 and a square ceiling, attention alone (cuDNN
# bf16 and the FP8 kernel), and the Nano generation
# forward at W480 and W720 in bf16, FP8, and FP8 with FP8 attention (`--fp8-attention`).
# `quality` as first argument adds the FP8 quality guard (velocity error, PSNR of a W480
# request; without and with FP8 attention) and a W720 FP8 request end to end.
# `accum` instead compares the FP8 GEMMs' two accumulations (PHYAI_FP8_ACCUMULATION): the
# GEMMs alone, the W480/W720 forwards beside bf16, and the quality guard with fast
# accumulation.
set -uo pipefail
# shellcheck source=tools/gpu/env.sh
. "$(dirname "$0")/env.sh"
export PHYAI_LOG=${PHYAI_LOG:-warn}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
if [ -f .carry/fp8_parity.gz ]; then
  gunzip -c .carry/fp8_parity.gz > /tmp/fp8_parity && chmod +x /tmp/fp8_parity
  PHYAI_FIXTURES=tests/fixtures PHYAI_GPU_TESTS=1 /tmp/fp8_parity --ignored --nocapture cuda_fp8 2>&1 | tee "$OUT/fp8_test.txt"
fi
B="/tmp/phyai bench --json"
if [ "${1:-}" = accum ]; then
  $B --part fp8-gemm --preset w720 --preset w480 2>&1 | tee "$OUT/fp8_gemm.jsonl"
  $B --part gen --preset w480 --preset w720 2>&1 | tee -a "$OUT/gen.jsonl"
  for acc in exact fast; do
    for q in "--quantize fp8" "--quantize fp8 --fp8-attention"; do
      # shellcheck disable=SC2086
      PHYAI_FP8_ACCUMULATION=$acc $B --part gen --preset w480 --preset w720 $q 2>&1 | tee -a "$OUT/gen.jsonl"
    done
  done
  PHYAI_FP8_ACCUMULATION=fast $B --part fp8-quality --preset w480 2>&1 | tee "$OUT/fp8_quality.jsonl"
  exit 0
fi
# Attention alone at the generation shapes: cuDNN bf16, then the FP8 kernel.
for f in "" "--fp8-attention"; do
  # shellcheck disable=SC2086
  $B --part attention --preset w720 --preset w480 $f 2>&1 | tee -a "$OUT/attention.jsonl"
done
$B --part fp8-gemm --preset w720 --preset w480 --preset i720 2>&1 | tee "$OUT/fp8_gemm.jsonl"
for q in "" "--quantize fp8" "--quantize fp8 --fp8-attention"; do
  # shellcheck disable=SC2086
  $B --part gen --preset w480 --preset w720 --preset i720 $q 2>&1 | tee -a "$OUT/gen.jsonl"
done
if [ "${1:-}" = quality ]; then
  $B --part fp8-quality --preset w480 2>&1 | tee "$OUT/fp8_quality.jsonl"
  $B --part fp8-quality --preset w480 --fp8-attention 2>&1 | tee -a "$OUT/fp8_quality.jsonl"
  $B --part e2e --preset w720 --quantize fp8 2>&1 | tee "$OUT/e2e_fp8.jsonl"
fi

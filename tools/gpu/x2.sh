#!/usr/bin/env bash
# The two-GPU measurements (nvidia-h200-x2) in stages that each fit one device call; carry
# .carry/phyai.gz (tools/cuda/build.sh, gzipped) and .carry/gpu_parallel.gz
# (tools/cuda/test-bins.sh gpu_parallel). Logs under $OUT.
#
#   STAGE=agree  NCCL collectives on two ranks (all_to_all as send/recv); the demo
#                checkpoint on 1 GPU vs --tp 2 / --cfg 2 / --sp 2, f32 and bf16 (multi.sh)
#   STAGE=mp     two processes vs threads, a killed rank, a failing rank (multiprocess.sh)
#   STAGE=steps  guided step times and agreement, medium config at W480: 1 GPU, tp/cfg/sp=2
#   STAGE=w720   the same at the Nano width (4 layers) on the W720 grid: sp=2 vs tp=2 vs cfg=2
set -uo pipefail
# shellcheck source=tools/gpu/env.sh
. "$(dirname "$0")/env.sh"
export PHYAI_LOG=${PHYAI_LOG:-warn} PHYAI_GPU_TESTS=1 PHYAI_FIXTURES=$PWD/tests/fixtures
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
gp() {
  gunzip -c .carry/gpu_parallel.gz > /tmp/gp && chmod +x /tmp/gp
  /tmp/gp --ignored --nocapture "$@" 2>&1
}
case "${STAGE:?set STAGE to agree, mp, steps or w720}" in
  agree)
    gp nccl_collectives | tee "$OUT/nccl.txt"
    bash "$(dirname "$0")/multi.sh" 2>&1 | tee "$OUT/multi.txt" ;;
  mp)
    bash "$(dirname "$0")/multiprocess.sh" 2>&1 | tee "$OUT/multiprocess.txt" ;;
  steps)
    gp guided_step | tee "$OUT/steps_w480.txt" ;;
  w720)
    PHYAI_GPU_CONFIG=nano PHYAI_GPU_LAYERS=${LAYERS:-4} PHYAI_GPU_GRID=w720 \
      gp guided_step | tee "$OUT/steps_w720_nano.txt" ;;
  *) echo "unknown STAGE $STAGE" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Opt-in GPU correctness checks with carried binaries: the fused glue kernels against f32
# CPU (.carry/glue.gz, the `glue` test binary built with --features cuda), the bf16-GPU vs
# f32-CPU velocity test (.carry/tp.gz, the transformer_parity test binary) and a bf16 demo
# generation end to end. Logs under $OUT.
set -uo pipefail
# shellcheck source=tools/gpu/env.sh
. "$(dirname "$0")/env.sh"
export PHYAI_LOG=${PHYAI_LOG:-warn}
export PHYAI_FIXTURES=$PWD/tests/fixtures
if [ -f .carry/glue.gz ]; then
  gunzip -c .carry/glue.gz > /tmp/glue && chmod +x /tmp/glue
  (cd crates/phyai && PHYAI_GPU_TESTS=1 /tmp/glue --ignored --nocapture 2>&1 | tail -12) | tee "$OUT/glue.txt"
fi
if [ -f .carry/tp.gz ]; then
  gunzip -c .carry/tp.gz > /tmp/tp && chmod +x /tmp/tp
  (cd crates/phyai && PHYAI_GPU_TESTS=1 /tmp/tp --ignored --nocapture bf16_gpu_velocity_matches_f32_cpu 2>&1 | tail -5) | tee "$OUT/velocity.txt"
fi
/tmp/phyai demo-checkpoint /tmp/demo 2>&1 | tail -1
/tmp/phyai generate --checkpoint /tmp/demo --device cuda --dtype bf16 --sound \
  --prompt "A robot arm stacks three red cubes on a wooden table" \
  --num-frames 33 --height 256 --width 448 --steps 8 --out "$OUT/demo_bf16" --json 2>&1 | tail -12 | tee "$OUT/demo.txt"

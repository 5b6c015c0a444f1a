#!/usr/bin/env bash
# GPU smoke run of the carried CUDA binary (.carry/phyai.gz: tools/cuda/build.sh, then gzip):
# the demo checkpoint end to end on the GPU in bf16 and f32, and the tiny fixture
# checkpoint from the reference's initial noise with dumps, for comparison with the CPU.
# Writes logs and dumps under $OUT (or ./gpu-out).
set -uo pipefail
# shellcheck source=tools/gpu/env.sh
. "$(dirname "$0")/env.sh"
B=/tmp/phyai
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
$B demo-checkpoint /tmp/demo 2>&1 | tail -1
for dt in bf16 f32; do
  echo "== demo on cuda, $dt"
  $B generate --checkpoint /tmp/demo --device cuda --dtype $dt --sound \
     --prompt "A robot arm stacks three red cubes on a wooden table" \
     --num-frames 33 --height 256 --width 448 --steps 8 --out "$OUT/demo_$dt" --json 2>&1 | tail -12
done
echo "== tiny fixture t2av on cuda f32 with the reference noise"
$B generate --checkpoint tests/fixtures/tiny --device cuda --dtype f32 --sound --prompt-style diffusers \
   --prompt "A small drone flies over a green field at sunset, casting a long shadow." \
   --num-frames 9 --height 64 --width 96 --fps 24 --steps 3 --guidance-scale 6 \
   --init-noise .carry/t2av_noise.safetensors --dump-dir "$OUT/tiny_f32" --out "$OUT/tiny_f32" --quiet --json
$B generate --checkpoint tests/fixtures/tiny --device cuda --dtype bf16 --sound --prompt-style diffusers \
   --prompt "A small drone flies over a green field at sunset, casting a long shadow." \
   --num-frames 9 --height 64 --width 96 --fps 24 --steps 3 --guidance-scale 6 \
   --init-noise .carry/t2av_noise.safetensors --dump-dir "$OUT/tiny_bf16" --out "$OUT/tiny_bf16" --quiet --json
ls -la "$OUT" "$OUT"/tiny_f32 "$OUT"/tiny_bf16 2>&1 | head -30

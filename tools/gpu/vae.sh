#!/usr/bin/env bash
# The video VAE on the GPU machine: parity with diffusers (the opt-in vae_parity test,
# .carry/vae_parity.gz from tools/cuda/test-bins.sh), where the time of one 720p decoder
# stage goes, and whole decodes at W480 and W720 with the carried binary. Logs under $OUT.
set -uo pipefail
# shellcheck source=tools/gpu/env.sh
. "$(dirname "$0")/env.sh"
export PHYAI_LOG=${PHYAI_LOG:-warn}
if [ -f .carry/vae_parity.gz ]; then
  gunzip -c .carry/vae_parity.gz > /tmp/vae_parity && chmod +x /tmp/vae_parity
  PHYAI_FIXTURES=$PWD/tests/fixtures PHYAI_GPU_TESTS=1 /tmp/vae_parity --ignored --nocapture \
    gpu_vae_matches_diffusers 2>&1 | tail -12 | tee "$OUT/vae_parity.txt"
fi
/tmp/phyai bench --part vae-ops --runs 5 2>&1 | tee "$OUT/vae_ops.txt"
for p in ${PRESETS:-w480 w720}; do
  /tmp/phyai bench --part vae --preset "$p" --runs "${RUNS:-2}" 2>&1 | tee "$OUT/vae_$p.txt"
done

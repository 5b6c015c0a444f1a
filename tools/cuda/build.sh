#!/usr/bin/env bash
# Builds the CUDA-enabled `phyai` binary for Hopper (sm_90) on a machine without a GPU and
# copies the stripped binary to .carry/phyai, ready to run on a GPU machine with
#   SP=$(python3 -c "import site;print(site.getsitepackages()[0])")
#   LD_LIBRARY_PATH=$SP/nvidia/cu13/lib:$SP/nvidia/nccl/lib:$SP/nvidia/cudnn/lib .carry/phyai ...
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo fetch >/dev/null
# shellcheck source=/dev/null
source tools/cuda/build-env.sh .cuda-build
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target-cuda}
cargo build --release -p phyai-cli --features cuda "$@"
mkdir -p .carry
cp "$CARGO_TARGET_DIR/release/phyai" .carry/phyai
strip .carry/phyai
ls -la .carry/phyai

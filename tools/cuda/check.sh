#!/usr/bin/env bash
# Lints the CUDA build (`--features cuda`: the library with its CUDA-only modules, the CLI,
# and every test, bench and example target) on a machine without a GPU, so code behind the
# feature cannot stop compiling unnoticed. It needs the CUDA compiler because the build
# scripts emit PTX (candle's kernels and kernels/*.cu): build-env.sh installs the pinned
# CUDA 13.0 pieces from PyPI into .cuda-build/ (a git-ignored venv); the build goes to
# target-cuda/ (git-ignored, shared with build.sh), apart from the CPU build in target/.
# usage: tools/cuda/check.sh [extra clippy args]
set -euo pipefail
cd "$(dirname "$0")/../.."

# nvcc preprocesses every .cu file with the host C++ compiler, even when it only emits PTX.
if ! command -v g++ >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends g++ >/dev/null
fi

cargo fetch >/dev/null
# shellcheck source=/dev/null
source tools/cuda/build-env.sh .cuda-build
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target-cuda}
cargo clippy --release -p phyai -p phyai-cli --features phyai/cuda,phyai-cli/cuda \
    --all-targets "$@" -- -D warnings

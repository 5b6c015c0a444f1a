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

apt_install() {
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
# nvcc preprocesses every .cu file with the host C++ compiler, even when it only emits PTX.
command -v g++ >/dev/null 2>&1 || apt_install g++
# Debian ships venv support (ensurepip) apart from python3.
if [ ! -x .cuda-build/venv/bin/python ] && ! python3 -m venv .cuda-build/venv >/dev/null 2>&1; then
    apt_install python3-venv
    rm -rf .cuda-build/venv
    python3 -m venv .cuda-build/venv
fi

cargo fetch >/dev/null
# shellcheck source=/dev/null
source tools/cuda/build-env.sh .cuda-build
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target-cuda}
cargo clippy --release -p phyai -p phyai-cli --features phyai/cuda,phyai-cli/cuda \
    --all-targets "$@" -- -D warnings

#!/usr/bin/env bash
# Builds the named integration tests of the `phyai` crate with --features cuda and leaves
# each test binary stripped and gzipped as .carry/<name>.gz, for opt-in runs on a GPU
# machine (see tools/gpu/check.sh). usage: tools/cuda/test-bins.sh glue transformer_parity
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=/dev/null
source tools/cuda/build-env.sh .cuda-build >/dev/null
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target-cuda}
mkdir -p .carry
for t in "$@"; do
  exe=$(cargo test --release -p phyai --features cuda --test "$t" --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m.get("executable") and m["target"]["kind"]==["test"]: print(m["executable"])' | tail -1)
  [ -n "$exe" ] || { echo "no test binary for $t" >&2; exit 1; }
  strip -o ".carry/$t" "$exe"
  gzip -f ".carry/$t"
  ls -la ".carry/$t.gz"
done

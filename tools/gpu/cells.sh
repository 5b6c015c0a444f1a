#!/usr/bin/env bash
# The latency race's published cells on the GPU machine (`phyai bench --workload`, each
# timed after a warm-up request at the same shapes), in parts that each fit one device call:
#   small   t2i 720p and t2v 256p: bf16, FP8, FP8 + FP8 attention, each with the CFG
#           branches paired (the default on CUDA for these sizes) and one after the other
#           (PHYAI_CFG_PAIR=0)
#   quick   t2i 720p and t2v 256p: FP8 + FP8 attention only, paired and not
#   480p    t2v 480p: FP8, FP8 + FP8 attention
#   720p    t2v 720p: FP8 + FP8 attention (about 3 minutes a run)
# PHYAI_FP8_ACCUMULATION=exact in the environment runs the FP8 GEMMs with split accumulation.
# JSON lines under $OUT/cells.jsonl. Uses the carried binary (.carry/phyai.gz).
set -uo pipefail
# shellcheck source=tools/gpu/env.sh
. "$(dirname "$0")/env.sh"
export PHYAI_LOG=${PHYAI_LOG:-warn}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv,noheader | tee -a "$OUT/gpu.txt"
cell() {
  # cell LABEL ENV... -- ARGS...
  local label=$1
  shift
  local envs=()
  while [ "$1" != "--" ]; do envs+=("$1"); shift; done
  shift
  env "${envs[@]}" /tmp/phyai bench --json "$@" 2>"$OUT/$label.err" \
    | python3 -c 'import json, sys
label = sys.argv[1]
for line in sys.stdin:
    v = json.loads(line)
    v["label"] = label
    print(json.dumps(v))
    r = v.get("run", {})
    print(label, v.get("workload"), v.get("resolution"), v.get("precision"), round(v.get("seconds", 0), 3), "s; warm-up",
          round((r.get("warmup_ms") or 0) / 1e3, 2), "s", file=sys.stderr)' "$label" | tee -a "$OUT/cells.jsonl" >/dev/null
}
case "${1:-small}" in
small)
  for w in "t2i --resolution 720p" "t2v --resolution 256p"; do
    for p in "--precision bf16" "--precision fp8" "--precision fp8 --fp8-attention"; do
      for pair in 1 0; do
        # shellcheck disable=SC2086
        cell "pair$pair" PHYAI_CFG_PAIR=$pair -- --workload $w $p
      done
    done
  done
  ;;
quick)
  for w in "t2i --resolution 720p" "t2v --resolution 256p"; do
    for pair in 1 0; do
      # shellcheck disable=SC2086
      cell "pair$pair" PHYAI_CFG_PAIR=$pair -- --workload $w --precision fp8 --fp8-attention
    done
  done
  ;;
480p)
  for p in "--precision fp8" "--precision fp8 --fp8-attention"; do
    # shellcheck disable=SC2086
    cell default PHYAI_LOG=warn -- --workload t2v --resolution 480p $p
  done
  ;;
720p)
  cell default PHYAI_LOG=warn -- --workload t2v --resolution 720p --precision fp8 --fp8-attention
  ;;
*)
  echo "usage: cells.sh small|quick|480p|720p" >&2
  exit 2
  ;;
esac

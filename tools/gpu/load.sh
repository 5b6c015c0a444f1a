#!/usr/bin/env bash
# The loader's staging on the GPU machine: writes the random Nano checkpoint ($CK), then
# loads it and runs one W480 step (`--steps 1`, the time to the first denoising step is what
# counts) with the default pinned staging (cold, then warm), with PHYAI_LOAD_STAGE=pageable,
# and with PHYAI_PINNED_LOAD=0 (candle's path); then the demo's first runs with the cuDNN
# attention plans logged. One JSON line per run in $OUT/load.jsonl.
set -uo pipefail
# shellcheck source=tools/gpu/env.sh
. "$(dirname "$0")/env.sh"
export PHYAI_LOG=${PHYAI_LOG:-warn}
CK=${CK:-/var/tmp/phyai-nano}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
/tmp/phyai make-checkpoint --out "$CK" --size nano --quiet
G=(/tmp/phyai generate --checkpoint "$CK" --device cuda --width 832 --height 480 --num-frames 93
   --steps 1 --json --quiet --prompt "A robot arm stacks three red cubes on a wooden table")
run() {
  local name=$1
  shift
  local t0 t1
  t0=$(date +%s.%N)
  env "$@" "${G[@]}" --out "/tmp/$name" > "/tmp/$name.json" 2> "$OUT/$name.err"
  t1=$(date +%s.%N)
  python3 -c 'import json,sys; s=json.load(open(sys.argv[2])); print(json.dumps({"run": sys.argv[1], "wall": round(float(sys.argv[4]) - float(sys.argv[3]), 3), "first_step": s.get("first_step_seconds"), "seconds": s.get("seconds"), "load": s.get("load")}))' \
    "$name" "/tmp/$name.json" "$t0" "$t1" | tee -a "$OUT/load.jsonl"
}
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null
run pinned_cold PHYAI_LOAD_STAGE=
run pinned_warm PHYAI_LOAD_STAGE=
run pageable_warm PHYAI_LOAD_STAGE=pageable
run candle_warm PHYAI_PINNED_LOAD=0
run pageable_warm_again PHYAI_LOAD_STAGE=pageable
rm -rf ~/.nv/ComputeCache
D=(/tmp/phyai generate --device cuda --sound --json --prompt "A robot arm stacks three red cubes")
for name in demo_cache_empty demo_cache_warm; do
  PHYAI_LOG=warn,phyai::layers::cuda::cudnn_sdpa=info "${D[@]}" --out "/tmp/$name" > "/tmp/$name.json" 2> "$OUT/$name.err"
  python3 -c 'import json,sys; s=json.load(open(sys.argv[2])); print(json.dumps({"run": sys.argv[1], "seconds": s.get("seconds"), "first_step": s.get("first_step_seconds"), "total": s.get("total_seconds")}))' "$name" "/tmp/$name.json" | tee -a "$OUT/load.jsonl"
done
grep -ah "attention plan" "$OUT"/demo_cache_empty.err | head -8

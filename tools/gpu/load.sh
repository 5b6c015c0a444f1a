#!/usr/bin/env bash
# The loader's staging on the GPU machine: writes the random Nano checkpoint ($CK), then
# loads it and runs one W480 step (`--steps 1`, the time to the first denoising step is what
# counts) with each staging (PHYAI_LOAD_STAGE: registered, the default, cold then warm;
# pinned; pageable) and, with CANDLE=1, PHYAI_PINNED_LOAD=0 (candle's path); then the demo without the
# driver's kernel cache and with it, small attention as tensor ops (the default) and through
# cuDNN (PHYAI_SMALL_ATTENTION=0, its plans logged). One JSON line per run in $OUT/load.jsonl.
set -uo pipefail
# shellcheck source=tools/gpu/env.sh
. "$(dirname "$0")/env.sh"
export PHYAI_LOG=${PHYAI_LOG:-warn}
CK=${CK:-/var/tmp/phyai-nano}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
/tmp/phyai make-checkpoint --out "$CK" --size nano --quiet
G=(/tmp/phyai generate --checkpoint "$CK" --device cuda --width 832 --height 480 --num-frames 93
   --json --quiet --prompt "A robot arm stacks three red cubes on a wooden table")
run() {
  local name=$1
  shift
  local t0 t1
  t0=$(date +%s.%N)
  env "$@" "${G[@]}" --steps "${STEPS:-1}" --out "/tmp/$name" > "/tmp/$name.json" 2> "/tmp/$name.err"
  { echo "== $name"; tail -3 "/tmp/$name.err"; } >> "$OUT/errs.txt"
  t1=$(date +%s.%N)
  python3 -c 'import json,sys; s=json.load(open(sys.argv[2])); print(json.dumps({"run": sys.argv[1], "wall": round(float(sys.argv[4]) - float(sys.argv[3]), 3), "first_step": s.get("first_step_seconds"), "seconds": s.get("seconds"), "load": s.get("load")}))' \
    "$name" "/tmp/$name.json" "$t0" "$t1" | tee -a "$OUT/load.jsonl"
}
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null
run registered_cold PHYAI_LOAD_STAGE=
run registered_warm PHYAI_LOAD_STAGE=
run pinned_warm PHYAI_LOAD_STAGE=pinned
run pageable_warm PHYAI_LOAD_STAGE=pageable
run registered_warm_again PHYAI_LOAD_STAGE=
if [ "${CANDLE:-0}" = 1 ]; then run candle_warm PHYAI_PINNED_LOAD=0; fi
# The whole W480 request (35 steps) from the real files, page cache warm.
STEPS=35 run w480_35_steps PHYAI_LOAD_STAGE=
rm -rf ~/.nv/ComputeCache
D=(/tmp/phyai generate --device cuda --sound --json --prompt "A robot arm stacks three red cubes")
demo() {
  local name=$1
  shift
  local t0 t1
  t0=$(date +%s.%N)
  env PHYAI_LOG=warn,phyai::layers::cuda::cudnn_sdpa=info "$@" "${D[@]}" --out "/tmp/$name" > "/tmp/$name.json" 2> "/tmp/$name.err"
  t1=$(date +%s.%N)
  grep -a "attention plan" "/tmp/$name.err" | head -4 >> "$OUT/demo_plans.txt"
  python3 -c 'import json,sys; s=json.load(open(sys.argv[2])); print(json.dumps({"run": sys.argv[1], "wall": round(float(sys.argv[4]) - float(sys.argv[3]), 3), "seconds": s.get("seconds"), "first_step": s.get("first_step_seconds"), "total": s.get("total_seconds")}))' \
    "$name" "/tmp/$name.json" "$t0" "$t1" | tee -a "$OUT/load.jsonl"
}
demo demo_nocache CUDA_CACHE_DISABLE=1
demo demo_nocache_cudnn CUDA_CACHE_DISABLE=1 PHYAI_SMALL_ATTENTION=0
demo demo_nocache_again CUDA_CACHE_DISABLE=1
demo demo_cache_fill PHYAI_SMALL_ATTENTION=
demo demo_cache_warm PHYAI_SMALL_ATTENTION=
demo demo_cache_warm_cudnn PHYAI_SMALL_ATTENTION=0

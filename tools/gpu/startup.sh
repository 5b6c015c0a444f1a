#!/usr/bin/env bash
# Start-up on the GPU machine, in parts that each fit one device call:
#   demo        the demo generation on a fresh machine: empty driver cache with the compiled
#               kernel images, the same with CUDA_CACHE_DISABLE=1, then the PTX path
#               (PHYAI_KERNEL_IMAGES=0) for comparison, and `bench --part jit` (these two
#               with ALL_READS=1)
#   checkpoint  writes a random Nano checkpoint in the published layout ($CK, default
#               /var/tmp/phyai-nano, on disk) and generates W480 from it twice: first with the files
#               dropped from the page cache (cold), then again (warm); `--json` gives the
#               load split and the first denoising step. ALL_READS=1 adds a second warm run,
#               the other ways of reading, and `bench --part read` cold and warm
#   read        `bench --part read` on that checkpoint: positioned reads, the memory map and
#               O_DIRECT, after dropping the page cache and again
#   serve       the server on that checkpoint: its time outside the engine against its own
#               full-size generations (serve_overhead.py)
# Logs and JSON under $OUT. Uses the carried binary (.carry/phyai.gz). For a dry run of the
# script on a CPU: DEVICE=cpu SIZE=tiny W=64 H=64 F=5 STEPS=2 BIN=<gzipped CPU binary>.
set -uo pipefail
# shellcheck source=tools/gpu/env.sh
. "$(dirname "$0")/env.sh"
export PHYAI_LOG=${PHYAI_LOG:-warn}
CK=${CK:-/var/tmp/phyai-nano}
DEVICE=${DEVICE:-cuda}
SIZE=${SIZE:-nano}
W=${W:-832}
H=${H:-480}
F=${F:-93}
STEP_ARGS=()
[ -n "${STEPS:-}" ] && STEP_ARGS=(--steps "$STEPS")
P="A robot arm stacks three red cubes on a wooden table"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/gpu.txt"

# Runs one command, appending its wall time and JSON summary to $OUT/$1.jsonl.
timed() {
  local name=$1
  shift
  local t0 t1
  t0=$(date +%s.%N)
  "$@" > "$OUT/$name.json" 2> "$OUT/$name.err"
  local rc=$?
  t1=$(date +%s.%N)
  python3 - "$name" "$t0" "$t1" "$rc" "$OUT/$name.json" <<'PY' | tee -a "$OUT/startup.jsonl"
import json, sys
name, t0, t1, rc, path = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
try:
    summary = json.load(open(path))
except Exception:
    summary = None
print(json.dumps({"run": name, "rc": rc, "wall_seconds": round(t1 - t0, 3), "summary": summary}))
PY
}

# Drops the checkpoint's files from the page cache (root: the whole cache; else per file).
drop_cache() {
  sync
  if ! (echo 3 > /proc/sys/vm/drop_caches) 2>/dev/null; then
    python3 - "$CK" <<'PY'
import os, sys
for root, _, files in os.walk(sys.argv[1]):
    for f in files:
        fd = os.open(os.path.join(root, f), os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
PY
  fi
}

case "${1:-demo}" in
demo)
  rm -rf ~/.nv/ComputeCache
  G=(/tmp/phyai generate --device "$DEVICE" --sound --json --prompt "$P")
  CUDA_CACHE_DISABLE=1 PHYAI_LOG=warn,phyai::layers::cuda::cudnn_sdpa=info \
    timed demo_images_nocache "${G[@]}" --out "$OUT/demo1"
  timed demo_images_first "${G[@]}" --out "$OUT/demo2"
  timed demo_images_second "${G[@]}" --out "$OUT/demo3"
  # The first run also paid the cold disk (binary, libraries); this one isolates the cache.
  rm -rf ~/.nv/ComputeCache
  CUDA_CACHE_DISABLE=1 timed demo_images_nocache_warm_disk "${G[@]}" --out "$OUT/demo5"
  # cuDNN's engines that it ships compiled first (its attention plans are logged).
  CUDA_CACHE_DISABLE=1 PHYAI_CUDNN_PRECOMPILED=1 PHYAI_LOG=warn,phyai::layers::cuda::cudnn_sdpa=info \
    timed demo_images_nocache_precompiled "${G[@]}" --out "$OUT/demo6"
  if [ -n "${ALL_READS:-}" ]; then
    CUDA_CACHE_DISABLE=1 PHYAI_KERNEL_IMAGES=0 timed demo_ptx_nocache "${G[@]}" --out "$OUT/demo4"
    CUDA_CACHE_DISABLE=1 /tmp/phyai bench --part jit --json > "$OUT/jit.jsonl" 2>&1
  fi
  ;;
checkpoint)
  df -h "$(dirname "$CK")" | tee "$OUT/df.txt"
  rm -rf "$CK"
  timed make_checkpoint /tmp/phyai make-checkpoint --out "$CK" --size "$SIZE" --quiet
  du -sh "$CK" | tee -a "$OUT/df.txt"
  G=(/tmp/phyai generate --checkpoint "$CK" --device "$DEVICE" --width "$W" --height "$H"
     --num-frames "$F" "${STEP_ARGS[@]}" --json --quiet --prompt "$P")
  # Can this machine's page cache hold the checkpoint at all? (a memory cgroup charges the
  # cache to the container)
  { cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null
    grep -E 'MemTotal|MemAvailable|^Cached' /proc/meminfo; } | tee "$OUT/memory.txt"
  drop_cache
  timed w480_cold "${G[@]}" --out "$OUT/w480_cold"
  timed w480_warm "${G[@]}" --out "$OUT/w480_warm"
  if [ -n "${ALL_READS:-}" ]; then
    timed w480_warm_again "${G[@]}" --out "$OUT/w480_warm_again"
    PHYAI_LOAD_READ=mmap timed w480_warm_mmap "${G[@]}" --out "$OUT/w480_warm_mmap"
    PHYAI_LOAD_READ=direct timed w480_direct "${G[@]}" --out "$OUT/w480_direct"
  fi
  # The read alone, each way: cold first, then as the cache holds it.
  if [ -n "${ALL_READS:-}" ]; then
    drop_cache
    /tmp/phyai bench --part read --weights "$CK" --json > "$OUT/read_cold.jsonl" 2>&1
    /tmp/phyai bench --part read --weights "$CK" --json > "$OUT/read_warm.jsonl" 2>&1
    cat "$OUT"/read_*.jsonl
  fi
  ;;
read)
  # The read alone on an existing checkpoint ($CK).
  drop_cache
  /tmp/phyai bench --part read --weights "$CK" --json | tee "$OUT/read_cold.jsonl"
  /tmp/phyai bench --part read --weights "$CK" --json | tee "$OUT/read_warm.jsonl"
  drop_cache
  PHYAI_LOAD_READ=direct /tmp/phyai bench --part read --weights "$CK" --json | tee "$OUT/read_cold_direct_first.jsonl"
  ;;
serve)
  python3 "$(dirname "$0")/serve_overhead.py" /tmp/phyai --checkpoint "$CK" --jobs "${JOBS:-2}" \
    --device "$DEVICE" --width "$W" --height "$H" --frames "$F" --steps "${STEPS:-35}" \
    2>&1 | tee "$OUT/serve_overhead.txt"
  ;;
*)
  echo "usage: startup.sh demo|checkpoint|read|serve" >&2
  exit 2
  ;;
esac

#!/usr/bin/env bash
# Multi-process check on a 2-GPU machine of a carried CUDA binary (BIN, gzipped; built with
# `cargo build --release -p phyai-cli --features cuda`): the tiny fixture checkpoint with
# --tp 2 and --cfg 2 as two processes (one GPU each, NCCL ids from rank 0) against one
# process with a thread per GPU; then a rank killed mid-run and a rank failing, timing how
# long the other process takes to exit. Writes logs and dumps under $OUT (or ./gpu-out).
# DEVICE=cpu runs the same checks on CPU (TCP collectives) with a CPU build.
set -uo pipefail
DEVICE=${DEVICE:-cuda}
# shellcheck source=tools/gpu/env.sh
. "$(dirname "$0")/env.sh"
export PHYAI_LOG=off
B=/tmp/phyai
[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
ARGS=(generate --checkpoint tests/fixtures/tiny --device "$DEVICE" --dtype f32 --sound
      --prompt "A robot arm stacks three red cubes on a wooden table."
      --num-frames 9 --height 64 --width 96 --steps 3 --guidance-scale 6 --quiet)
PORT=29531
now() { date +%s.%N; }
elapsed() { python3 -c "import sys,time;print(round(time.time()-float(sys.argv[1]),2))" "$1"; }

# Starts rank 0 and rank 1 of a two-process job; rank r's extra flags in R0/R1 (arrays).
job() {
  WORLD_SIZE=2 RANK=0 LOCAL_RANK=0 MASTER_PORT=$PORT $B "${ARGS[@]}" "${R0[@]}" 2>"$OUT/$1.rank0.err" &
  P0=$!
  WORLD_SIZE=2 RANK=1 LOCAL_RANK=1 MASTER_PORT=$PORT ${ENV1:-} $B "${ARGS[@]}" "${R1[@]}" 2>"$OUT/$1.rank1.err" &
  P1=$!
  PORT=$((PORT + 1))
}

for topo in tp cfg; do
  echo "== --$topo 2: threads vs processes"
  t=$(now)
  $B "${ARGS[@]}" --$topo 2 --out "$OUT/thr_$topo" --dump-dir "$OUT/thr_$topo" 2>"$OUT/thr_$topo.err"
  echo "threads rc=$? in $(elapsed $t) s"
  R0=(--$topo 2 --out "$OUT/job_$topo" --dump-dir "$OUT/job_$topo")
  R1=(--$topo 2 --out "$OUT/job1_$topo" --dump-dir "$OUT/job1_$topo")
  t=$(now); job "job_$topo"; wait $P1; r1=$?; wait $P0; r0=$?
  echo "processes rc=$r0/$r1 in $(elapsed $t) s; rank 1 wrote: $(ls "$OUT"/job1_$topo* 2>/dev/null | wc -l) files"
  cat "$OUT/job_$topo".rank*.err
  for f in latents output; do
    if cmp -s "$OUT/thr_$topo/$f.safetensors" "$OUT/job_$topo/$f.safetensors"; then
      echo "$f: bit-identical"
    else
      echo "$f: DIFFERS"
    fi
  done
done

echo "== rank 1 killed -9 after denoising step 1 (--tp 2)"
R0=(--tp 2 --out "$OUT/kill"); R1=(--tp 2 --out "$OUT/kill")
ENV1="env PHYAI_TEST_STALL_AT_STEP=1" job kill
for _ in $(seq 600); do grep -q stalling "$OUT/kill.rank1.err" && break; sleep 0.1; done
t=$(now); kill -9 $P1; wait $P0; r0=$?
echo "rank 0 rc=$r0, $(elapsed $t) s after the kill: $(cat "$OUT/kill.rank0.err")"
ls "$OUT"/kill* 2>/dev/null | grep -v '\.err$' && echo "LEFT OUTPUT BEHIND"

echo "== rank 1 fails (initial noise of the wrong shape, --tp 2)"
python3 - "$OUT/bad_noise.safetensors" <<'EOF'
import json, struct, sys
data = b"\0" * (48 * 4)
head = json.dumps({"video": {"dtype": "F32", "shape": [1, 48, 1, 1, 1],
                             "data_offsets": [0, len(data)]}}).encode()
open(sys.argv[1], "wb").write(struct.pack("<Q", len(head)) + head + data)
EOF
R0=(--tp 2 --out "$OUT/fail"); R1=(--tp 2 --out "$OUT/fail" --init-noise "$OUT/bad_noise.safetensors")
t=$(now); job fail; wait $P1; r1=$?; wait $P0; r0=$?
echo "rc=$r0/$r1 in $(elapsed $t) s"
cat "$OUT"/fail.rank*.err
ls "$OUT"/fail* 2>/dev/null | grep -v '\.err$' && echo "LEFT OUTPUT BEHIND"
exit 0

#!/usr/bin/env bash
# Multi-GPU check of the carried CUDA binary on one node: the demo checkpoint with the same
# seed on 1 GPU, then tp=2, cfg=2 and sp=2 over two GPUs (ranks are threads, NCCL), f32 and
# bf16, dumping latents for comparison. Writes under $OUT (or ./gpu-out).
set -uo pipefail
# shellcheck source=tools/gpu/env.sh
. "$(dirname "$0")/env.sh"
B=/tmp/phyai
nvidia-smi --query-gpu=name --format=csv,noheader
$B demo-checkpoint /tmp/demo 2>&1 | tail -1
run() { # name dtype extra-flags...
  local name=$1 dt=$2; shift 2
  $B generate --checkpoint /tmp/demo --device cuda --dtype "$dt" --sound \
     --prompt "A robot arm stacks three red cubes on a wooden table" \
     --num-frames 33 --height 256 --width 448 --steps 8 --seed 7 \
     --dump-dir "/tmp/d_$name" --out "/tmp/o_$name" --quiet --json "$@" \
     | python3 -c "import json,sys; j=json.load(sys.stdin); print('$name', {k: round(v,3) for k,v in j['seconds'].items()})" \
     || echo "$name FAILED"
}
for dt in f32 bf16; do
  run "one_$dt" $dt
  run "tp2_$dt" $dt --tp 2
  run "cfg2_$dt" $dt --cfg 2
  run "sp2_$dt" $dt --sp 2
done
python3 - <<'PY'
import os, struct, json
import numpy as np
def load(path):
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]; h = json.loads(f.read(n)); data = f.read()
    out = {}
    for k, v in h.items():
        if k == '__metadata__': continue
        a, b = v['data_offsets']
        out[k] = np.frombuffer(data[a:b], dtype=np.float32).reshape(v['shape'])
    return out
def rel(a, b):
    a = a.astype(np.float64).ravel(); b = b.astype(np.float64).ravel()
    return np.linalg.norm(a - b) / np.linalg.norm(b)
for dt in ['f32', 'bf16']:
    one = load(f'/tmp/d_one_{dt}/latents.safetensors')
    for t in ['tp2', 'cfg2', 'sp2']:
        p = f'/tmp/d_{t}_{dt}/latents.safetensors'
        if not os.path.exists(p):
            print(dt, t, 'missing'); continue
        m = load(p)
        print(dt, t, 'video latents rel err %.2e' % rel(m['video'], one['video']),
              'sound %.2e' % rel(m['sound'], one['sound']))
PY

#!/usr/bin/env bash
# The warm server's per-request overhead against the engine's own time at W480, in one
# device run: `phyai bench --part e2e --preset w480` gives the full-size engine time, then
# serve_overhead.py runs the server at the same size and reports the time it adds per job.
# Uses the carried binary (.carry/phyai.gz); logs under $OUT.
set -uo pipefail
# shellcheck source=tools/gpu/env.sh
. "$(dirname "$0")/env.sh"
/tmp/phyai bench --part e2e --preset w480 --json 2>&1 | tee "$OUT/e2e_w480.txt"
ENGINE=$(python3 -c "import json,sys
for l in open('$OUT/e2e_w480.txt'):
    try: j=json.loads(l)
    except Exception: continue
    if j.get('part')=='e2e': print(j['total_ms']/1e3)")
# CK: a full-size checkpoint folder (phyai make-checkpoint); then the server's overhead is
# measured against its own full-size generations. Without it, the demo checkpoint.
python3 "$(dirname "$0")/serve_overhead.py" /tmp/phyai --jobs "${JOBS:-4}" \
    ${CK:+--checkpoint "$CK"} ${ENGINE:+--engine-seconds "$ENGINE"} 2>&1 | tee "$OUT/serve_overhead.txt"

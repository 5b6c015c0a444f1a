#!/usr/bin/env python3
"""The warm server's per-request overhead (development tool, run on the GPU machine).

Starts `phyai serve` (the carried CUDA binary) on the demo checkpoint, sends JOBS requests
of one size back to back and reads what the server measures per job: the engine's own time
(`generation_seconds`) and dequeue-to-mp4 (`total_seconds`). The overhead on the engine's
timeline is the wall time from the first job leaving the queue to the last engine run's end
minus the engine times: what the server adds between engine runs (the mp4 encode runs on a
writer thread beside the next job). The absolute overhead is then compared with the engine
time of the full-size model at the same size, measured by `phyai bench --part e2e` in the
same device run and passed as --engine-seconds.

usage: serve_overhead.py BIN --width W --height H --frames F --steps S [--jobs N]
                         [--engine-seconds T]
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request


def call(base, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bin")
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--frames", type=int, default=93)
    ap.add_argument("--steps", type=int, default=35)
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--engine-seconds", type=float, default=None)
    a = ap.parse_args()
    data = tempfile.mkdtemp(prefix="serve-overhead-")
    proc = subprocess.Popen([a.bin, "serve", "--device", "cuda", "--port", "0",
                             "--data-dir", data], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    base = None
    log = []
    while base is None:
        line = proc.stdout.readline()
        if not line:
            sys.exit("the server stopped:\n" + "".join(log))
        log.append(line)
        m = re.search(r"http://[0-9.]+:[0-9]+", line)
        if m:
            base = m.group(0)
    try:
        body = {"prompt": "A robot arm stacks three red cubes on a wooden table",
                "size": f"{a.width}x{a.height}", "num_frames": a.frames, "steps": a.steps}
        # One warm-up job (first use of every kernel), then the measured ones.
        warm = call(base, "POST", "/v1/videos", body)
        while call(base, "GET", f"/v1/videos/{warm['id']}")["status"] not in ("completed", "failed"):
            time.sleep(0.2)
        start = time.time()
        ids = [call(base, "POST", "/v1/videos", body)["id"] for _ in range(a.jobs)]
        done = {}
        while len(done) < len(ids):
            for i in ids:
                if i not in done:
                    v = call(base, "GET", f"/v1/videos/{i}")
                    if v["status"] in ("completed", "failed"):
                        done[i] = (v, time.time())
            time.sleep(0.05)
        wall = max(t for _, t in done.values()) - start
        jobs = [v for v, _ in done.values()]
        bad = [v for v in jobs if v["status"] != "completed"]
        if bad:
            sys.exit(f"failed jobs: {bad}")
        gen = [v["generation_seconds"] for v in jobs]
        tot = [v["total_seconds"] for v in jobs]
        # The last job's write is not hidden behind a next job: take it out of the wall.
        last_write = tot[-1] - gen[-1]
        between = (wall - last_write - sum(gen)) / len(gen)
        report = {
            "size": body["size"], "frames": a.frames, "steps": a.steps, "jobs": a.jobs,
            "generation_seconds": gen, "total_seconds": tot,
            "write_seconds_each": [t - g for t, g in zip(tot, gen)],
            "wall_seconds": wall,
            "overhead_per_job_seconds": between,
        }
        if a.engine_seconds:
            report["full_size_engine_seconds"] = a.engine_seconds
            report["overhead_fraction_of_full_size"] = between / a.engine_seconds
        print(json.dumps(report))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()

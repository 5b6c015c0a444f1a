#!/usr/bin/env python3
"""The warm server's per-request overhead (development tool).

Starts `phyai serve` (on the demo checkpoint unless --checkpoint), sends JOBS requests of
one size back to back and reads what the server measures per job: the engine's own time
(`generation_seconds`), dequeue-to-mp4 (`total_seconds`) and, from /metrics, the worker's
time outside the engine (`phyai_server_seconds`: claiming the job, recording its state,
handing the clip to the writer, waiting for the writer when it is behind). That last one is
what the server adds to the engine's timeline; the mp4 encode runs on the writer thread
beside the next job. It is reported as a fraction of the engine time of this run and, with
--engine-seconds, of a full-size engine time measured elsewhere (`phyai bench --part e2e`).
The wall-clock estimate (wall time minus engine times) is printed beside it.

usage: serve_overhead.py BIN [--device cpu|cuda] [--checkpoint DIR] [--width W]
                         [--height H] [--frames F] [--steps S] [--jobs N]
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


def metric(base, name):
    with urllib.request.urlopen(base + "/metrics", timeout=60) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    sys.exit(f"{name} missing from /metrics")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bin")
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--frames", type=int, default=93)
    ap.add_argument("--steps", type=int, default=35)
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--engine-seconds", type=float, default=None)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--checkpoint", default=None)
    a = ap.parse_args()
    data = tempfile.mkdtemp(prefix="serve-overhead-")
    cmd = [a.bin, "serve", "--device", a.device, "--port", "0", "--data-dir", data]
    if a.checkpoint:
        cmd += ["--checkpoint", a.checkpoint]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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
        server0 = metric(base, "phyai_server_seconds_sum")
        count0 = metric(base, "phyai_server_seconds_count")
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
        # Wait until the last job's hand-over is recorded.
        while metric(base, "phyai_server_seconds_count") < count0 + a.jobs:
            time.sleep(0.05)
        server = (metric(base, "phyai_server_seconds_sum") - server0) / a.jobs
        report = {
            "size": body["size"], "frames": a.frames, "steps": a.steps, "jobs": a.jobs,
            "generation_seconds": gen, "total_seconds": tot,
            "write_seconds_each": [t - g for t, g in zip(tot, gen)],
            "wall_seconds": wall,
            "wall_minus_engine_per_job_seconds": between,
            "server_seconds_per_job": server,
            "server_fraction_of_engine": server / (sum(gen) / len(gen)),
        }
        if a.engine_seconds:
            report["full_size_engine_seconds"] = a.engine_seconds
            report["server_fraction_of_full_size"] = server / a.engine_seconds
        print(json.dumps(report))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()

"""Regenerates every reference fixture under OUT (default tests/fixtures) from one seed.

    tools/reference/setup.sh                     # once: the pinned venv in .ref-venv
    .ref-venv/bin/python tools/reference/make_fixtures.py [--seed 0] [--out tests/fixtures]

Each area module exposes `make(out_dir, seed)`. The pipeline module runs first: it writes
the tiny checkpoint the others read. Everything runs on CPU in float32.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import torch

AREAS = [
    "ref_pipeline",
    "ref_seeded",
    "ref_vae",
    "ref_sampler",
    "ref_processor",
    "ref_fp8",
    "ref_v2v",
    "ref_distilled",
    "ref_t2i",
    "ref_action",
    "ref_super",
    "ref_transfer",
]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("tests/fixtures"))
    ap.add_argument("--only", nargs="*", help="areas to regenerate (default: all)")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).parent))
    for area in AREAS:
        if args.only and area not in args.only:
            continue
        if not (Path(__file__).parent / f"{area}.py").exists():
            print(f"skip {area} (no module)")
            continue
        print(f"== {area}", flush=True)
        importlib.import_module(area).make(args.out, args.seed)
    report_sizes(args.out)
    return 0


def report_sizes(out: Path) -> None:
    """Prints the total size and the largest files: the fixtures must stay small (~10 MB)."""
    files = sorted((p for p in Path(out).rglob("*") if p.is_file()), key=lambda p: -p.stat().st_size)
    total = sum(p.stat().st_size for p in files)
    print(f"fixtures: {len(files)} files, {total / 1e6:.2f} MB")
    for p in files[:8]:
        print(f"  {p.stat().st_size / 1e6:6.2f} MB  {p.relative_to(out)}")
    if total > 10e6:
        print("WARNING: fixtures exceed 10 MB")


if __name__ == "__main__":
    sys.exit(main())

"""Regenerates the fixtures into a temporary folder and compares them with the committed ones.

Tensors (any dtype, bf16 and fp8 included) must have the same names, shapes and dtypes and
agree within 1e-6 (max abs; NaNs at the same places); JSON and every other file must be byte-identical. Prints one line per
mismatch with the largest difference. Then runs verify_refs.py on the committed fixtures
(the references must follow from the stored checkpoint). Exits 1 on any mismatch.

    .ref-venv/bin/python tools/reference/check_fixtures.py [--only AREA ...] [--seed S]

Extra arguments are passed to make_fixtures.py.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "tests" / "fixtures"
TOLERANCE = 1e-6


def compare_tensors(rel: Path, fresh: Path, old: Path) -> int:
    """Number of mismatching tensors between two safetensors files (printed)."""
    a, b = load_file(str(fresh)), load_file(str(old))
    if a.keys() != b.keys():
        print(f"KEYS     {rel}: only new {sorted(a.keys() - b.keys())}, only old {sorted(b.keys() - a.keys())}")
        return 1
    bad = 0
    for k in sorted(a):
        x, y = a[k], b[k]
        if x.shape != y.shape or x.dtype != y.dtype:
            print(f"SHAPE    {rel}:{k} {tuple(x.shape)} {x.dtype} vs {tuple(y.shape)} {y.dtype}")
            bad += 1
            continue
        if x.numel() == 0:
            continue
        x, y = x.double(), y.double()
        if not torch.equal(x.isnan(), y.isnan()):
            print(f"NAN      {rel}:{k} NaNs at different places")
            bad += 1
            continue
        diff = (x - y).nan_to_num(0.0).abs().max().item()
        if not diff <= TOLERANCE:
            print(f"VALUES   {rel}:{k} max abs diff {diff:.3e}")
            bad += 1
    return bad


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, str(Path(__file__).parent / "make_fixtures.py"), "--out", tmp, *sys.argv[1:]],
            check=True,
        )
        bad = 0
        fresh_root = Path(tmp)
        for fresh in sorted(p for p in fresh_root.rglob("*") if p.is_file()):
            rel = fresh.relative_to(fresh_root)
            old = COMMITTED / rel
            if not old.exists():
                print(f"NEW      {rel}")
                bad += 1
            elif fresh.suffix == ".safetensors":
                bad += compare_tensors(rel, fresh, old)
            elif fresh.read_bytes() != old.read_bytes():
                print(f"DIFFERS  {rel}")
                bad += 1
        print("fixtures reproduce" if bad == 0 else f"{bad} mismatch(es)")
    # The references must also follow from the checkpoint files alone (see verify_refs.py).
    verified = subprocess.run([sys.executable, str(Path(__file__).parent / "verify_refs.py"), str(COMMITTED)])
    return 1 if bad or verified.returncode else 0


if __name__ == "__main__":
    sys.exit(main())

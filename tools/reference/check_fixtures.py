"""Regenerates the fixtures into a temporary folder and compares them with the committed
ones: tensors within 1e-6 (max abs), JSON and text files exactly. Exit 1 on a mismatch."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "tests" / "fixtures"


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
                continue
            if fresh.suffix == ".safetensors":
                a, b = load_file(str(fresh)), load_file(str(old))
                if a.keys() != b.keys():
                    print(f"KEYS     {rel}")
                    bad += 1
                    continue
                for k in a:
                    if a[k].shape != b[k].shape:
                        print(f"SHAPE    {rel}:{k}")
                        bad += 1
                    elif a[k].size and abs(a[k].astype("float64") - b[k].astype("float64")).max() > 1e-6:
                        print(f"VALUES   {rel}:{k}")
                        bad += 1
            elif fresh.read_bytes() != old.read_bytes():
                print(f"DIFFERS  {rel}")
                bad += 1
        print("fixtures reproduce" if bad == 0 else f"{bad} mismatch(es)")
        return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

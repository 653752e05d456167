"""Compare two `acdc run` folders: pareto.json and summary.json must agree apart from timings, dates, versions, the
command line and where the files were written. Prints every difference and exits 1 if there is one.

Usage: python scripts/compare_runs.py RUN_A RUN_B [--tol 0]
Used to show that a refactor changed no result (run the same task and seed before and after, then compare).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

IGNORED = {"timings", "created", "versions", "command"}


def differences(a: Any, b: Any, tol: float, path: str = "") -> list[str]:
    """Human-readable differences between two JSON values (numbers equal within ``tol`` relative)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k in IGNORED:
                continue
            if k not in a or k not in b:
                out.append(f"{path}/{k}: only in {'B' if k not in a else 'A'}")
            else:
                out += differences(a[k], b[k], tol, f"{path}/{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} vs {len(b)} items"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, tol, f"{path}[{i}]")]
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        if a == b or (math.isnan(a) and math.isnan(b)):
            return []
        if abs(a - b) <= tol * max(abs(a), abs(b)):
            return []
        return [f"{path}: {a!r} vs {b!r}"]
    return [] if a == b else [f"{path}: {a!r} vs {b!r}"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--tol", type=float, default=0.0, help="relative tolerance for numbers (default: exact)")
    args = ap.parse_args(argv)
    bad = 0
    for name in ("pareto.json", "summary.json"):
        da = json.loads((args.a / name).read_text())
        db = json.loads((args.b / name).read_text())
        diff = differences(da, db, args.tol)
        verdict = "identical" if not diff else f"{len(diff)} differences"
        print(f"{name}: {verdict} (ignoring {', '.join(sorted(IGNORED))})")
        for d in diff[:50]:
            print("  " + d)
        bad += len(diff)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

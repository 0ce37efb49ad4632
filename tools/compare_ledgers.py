#!/usr/bin/env python3
"""Compare the ledgers of two audits of the same studies, minus what changes from one run to the next.

    python tools/compare_ledgers.py BEFORE AFTER [--study demo ...]

BEFORE and AFTER are repository folders (or folders holding ``<study>.json`` ledgers). Every key of the
BEFORE ledger must hold the same value in AFTER (times, tool version and review state aside); keys that
only AFTER has are listed as additions, not differences. Exit 0 when no value differs, 1 otherwise.

Used to show that a restructuring changed no result: run ``make demo`` and the three other demos in a
clone before and after, then compare.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# lock_digest: a lock records its creation time and commit, so two freezes of the same plan differ
VOLATILE = {"generated_utc", "tool_version", "review_status", "lock_digest"}
DEMOS = ("demo", "demo-null", "demo-ablation", "demo-ablation-null")


def _ledger(folder: Path, study: str) -> dict:
    for path in (folder / "reports" / study / "ledger.json", folder / f"{study}.json"):
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
    raise FileNotFoundError(f"no ledger of {study} under {folder}")


def differences(before, after, where: str = "") -> tuple[list[str], list[str]]:
    """(values that differ, keys only ``after`` has), as JSON pointers."""
    differ, added = [], []
    if isinstance(before, dict) and isinstance(after, dict):
        for key in sorted(before):
            if key in VOLATILE:
                continue
            if key not in after:
                differ.append(f"{where}/{key}: missing after")
                continue
            d, a = differences(before[key], after[key], f"{where}/{key}")
            differ += d
            added += a
        added += [f"{where}/{key}" for key in sorted(set(after) - set(before)) if key not in VOLATILE]
    elif isinstance(before, list) and isinstance(after, list):
        if len(before) != len(after):
            differ.append(f"{where}: {len(before)} items before, {len(after)} after")
        for i, (b, a) in enumerate(zip(before, after)):
            d, x = differences(b, a, f"{where}/{i}")
            differ += d
            added += x
    elif before != after:
        differ.append(f"{where}: {before!r} -> {after!r}")
    return differ, added


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--study", action="append", help=f"study id (repeatable; default: {', '.join(DEMOS)})")
    args = parser.parse_args(argv)
    failed = False
    for study in args.study or DEMOS:
        differ, added = differences(_ledger(args.before, study), _ledger(args.after, study))
        new_keys = sorted({a.rsplit("/", 1)[-1] for a in added})
        print(f"{study}: {'identical' if not differ else f'{len(differ)} difference(s)'}"
              + (f"; added keys: {', '.join(new_keys)}" if new_keys else ""))
        for line in differ[:40]:
            print(f"  {line}")
        failed |= bool(differ)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

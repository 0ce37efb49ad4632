"""Lexical balance of e114-register's prompts, as quoted in study.yaml's description ("changes after review").
Run: `.venv/bin/python preregistrations/e114-register/balance.py` (standard library and PyYAML only).

Prints, per split and class: how many prompts carry person-marking words ("first person", "third person",
"you/your", "I"), the uniform hedge, and every one-sided anchor word inside a pair (a word that is a lexical
anchor of some pair and occurs in one member of this pair but not the other, without being declared among
this pair's anchors). Also lists rubric word-set words that occur in the prompt texts of one class only.
Exits 1 when a pair has a one-sided anchor word or a FIRE prompt lacks the hedge.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
HEDGE = "if anything; say so if nothing fits"
MARKERS = {"first person": r"\bfirst[- ]person\b", "third person": r"\bthird[- ]person\b",
           "you/your": r"\b(you|your|yours|yourself)\b", "I": r"(?<![\w'])I(?![\w'])"}


def has(word: str, text: str) -> bool:
    return re.search(r"(?<![\w-])" + re.escape(word.casefold()) + r"(?![\w-])", text.casefold()) is not None


def main() -> int:
    prompts = [json.loads(line) for line in (HERE / "prompts.jsonl").read_text().splitlines() if line.strip()]
    by_id = {p["id"]: p for p in prompts}
    problems = 0
    print("prompts carrying each marker (split / class / stratum: count of n)")
    for split in ("discovery", "heldout"):
        for cls in ("FIRE", "NOFIRE"):
            for stratum in ("paired", "crossover-risk"):
                group = [p for p in prompts if p["split"] == split and p["class"] == cls and ("pair" in p) == (stratum == "paired")]
                if not group:
                    continue
                counts = {m: sum(bool(re.search(rx, p["text"], re.IGNORECASE if m != "I" else 0)) for p in group) for m, rx in MARKERS.items()}
                hedged = sum(HEDGE in p["text"] for p in group)
                print(f"  {split:9s} {cls:6s} {stratum:14s} n={len(group):2d}: "
                      + ", ".join(f"{m} {c}" for m, c in counts.items()) + f", hedge {hedged}")
    for p in prompts:
        if p["class"] == "FIRE" and HEDGE not in p["text"]:
            print(f"  {p['id']}: no uniform hedge")
            problems += 1
    vocabulary = {a.casefold() for p in prompts for a in p["anchors"]}
    print("\none-sided anchor words inside pairs (undeclared):")
    seen = set()
    for p in prompts:
        q = by_id.get(p.get("pair", ""))
        if q is None or (q["id"], p["id"]) in seen:
            continue
        seen.add((p["id"], q["id"]))
        declared = {a.casefold() for a in p["anchors"]} | {a.casefold() for a in q["anchors"]}
        for word in sorted(vocabulary - declared):
            if has(word, p["text"]) != has(word, q["text"]):
                where = p["id"] if has(word, p["text"]) else q["id"]
                print(f"  {word!r} only in {where} (pair {p['id']} / {q['id']})")
                problems += 1
    rubric = yaml.safe_load((HERE / "rubric.yaml").read_text())
    sets = (rubric.get("lexicon") or {}).get("sets", {})
    print("\nrubric set words in the prompt texts of one class only (heldout and discovery):")
    for name, words in sets.items():
        for word in words:
            classes = Counter(p["class"] for p in prompts if has(word, p["text"]))
            if len(classes) == 1:
                print(f"  {name}: {word!r} only in {next(iter(classes))} prompts ({sum(classes.values())})")
    print(f"\n{problems} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

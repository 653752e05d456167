#!/usr/bin/env python
"""Check the curated refusal pairs (tasks/refusal_pairs.jsonl) against one or more local tokenizers.

Each line of the dataset is {"id", "clean", "counterfactual", "category"}: a harmful instruction and its harmless twin
that differ only in one contiguous span (the object). For every tokenizer directory given on the command line this
script reports how many pairs tokenize to the same number of tokens, both on the raw instruction and (when the
tokenizer has a chat template) on the chat-rendered prompt, and lists the mismatches. Works fully offline.

Usage:
    python scripts/check_refusal_pairs.py TOKENIZER_DIR [TOKENIZER_DIR ...] [--path FILE] [--report-only]

Exit status: 0 if the file is well formed and every pair matches for every tokenizer, 1 otherwise (with
--report-only, only a malformed file gives 1).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

CATEGORIES = ("weapons", "explosives", "drugs", "cybercrime", "fraud", "poison", "violence", "theft")
DEFAULT_PATH = Path(__file__).resolve().parents[1] / "tasks" / "refusal_pairs.jsonl"


def load_pairs(path: Path) -> tuple[list[dict], list[str]]:
    """Read the JSONL file; return the pairs and a list of problems found in it."""
    pairs: list[dict] = []
    problems: list[str] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"line {lineno}: invalid JSON ({exc})")
            continue
        missing = {"id", "clean", "counterfactual", "category"} - set(row)
        if missing:
            problems.append(f"line {lineno}: missing keys {sorted(missing)}")
            continue
        if row["category"] not in CATEGORIES:
            problems.append(f"line {lineno} ({row['id']}): unknown category {row['category']!r}")
        if row["clean"] == row["counterfactual"]:
            problems.append(f"line {lineno} ({row['id']}): clean and counterfactual are identical")
        pairs.append(row)
    for key in ("id", "clean", "counterfactual"):
        dup = [v for v, n in Counter(p[key] for p in pairs).items() if n > 1]
        if dup:
            problems.append(f"duplicate {key}: {dup}")
    overlap = {p["clean"] for p in pairs} & {p["counterfactual"] for p in pairs}
    if overlap:
        problems.append(f"texts used both as clean and counterfactual: {sorted(overlap)}")
    return pairs, problems


def swapped_span(a: str, b: str) -> tuple[str, str]:
    """The differing middle parts of two strings (after removing their common prefix and suffix)."""
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    j = 0
    while j < min(len(a), len(b)) - i and a[-1 - j] == b[-1 - j]:
        j += 1
    return a[i : len(a) - j], b[i : len(b) - j]


def check_tokenizer(tok_dir: str, pairs: list[dict]) -> int:
    """Print the per-tokenizer report; return the number of mismatching pairs."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
    has_chat = getattr(tok, "chat_template", None) is not None

    def n_raw(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    def n_chat(text: str) -> int:
        rendered = tok.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
        return len(tok(rendered, add_special_tokens=False)["input_ids"])

    raw_ok = chat_ok = 0
    mismatches: list[str] = []
    for p in pairs:
        a, b = n_raw(p["clean"]), n_raw(p["counterfactual"])
        ok = a == b
        raw_ok += ok
        detail = f"raw {a} vs {b}"
        if has_chat:
            ca, cb = n_chat(p["clean"]), n_chat(p["counterfactual"])
            chat_ok += ca == cb
            ok = ok and ca == cb
            detail += f", chat {ca} vs {cb}"
        if not ok:
            x, y = swapped_span(p["clean"], p["counterfactual"])
            mismatches.append(f"  {p['id']} [{p['category']}] {x!r} -> {y!r}: {detail}")

    name = getattr(tok, "name_or_path", tok_dir)
    print(f"== {name} ({type(tok).__name__})")
    print(f"  raw instruction: {raw_ok}/{len(pairs)} pairs with equal token counts")
    if has_chat:
        print(f"  chat-rendered prompt: {chat_ok}/{len(pairs)} pairs with equal token counts")
    else:
        print("  chat-rendered prompt: skipped (tokenizer has no chat template)")
    print(f"  all checks: {len(pairs) - len(mismatches)}/{len(pairs)} pairs match")
    if mismatches:
        print(f"  mismatches ({len(mismatches)}):")
        print("\n".join(mismatches))
    return len(mismatches)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tokenizers", nargs="+", help="local tokenizer directories (loaded with AutoTokenizer)")
    parser.add_argument("--path", type=Path, default=DEFAULT_PATH, help="pairs file (default: %(default)s)")
    parser.add_argument("--report-only", action="store_true", help="exit 0 even if some pairs mismatch")
    args = parser.parse_args(argv)

    pairs, problems = load_pairs(args.path)
    counts = Counter(p["category"] for p in pairs)
    print(f"{args.path}: {len(pairs)} pairs")
    print("  per category: " + ", ".join(f"{c}={counts.get(c, 0)}" for c in CATEGORIES))
    for p in pairs:
        x, y = swapped_span(p["clean"], p["counterfactual"])
        if not x.strip() or not y.strip():
            problems.append(f"{p['id']}: swapped span is empty or whitespace ({x!r} -> {y!r})")
    if problems:
        print(f"  problems ({len(problems)}):")
        print("\n".join(f"    {msg}" for msg in problems))

    n_bad = sum(check_tokenizer(d, pairs) for d in args.tokenizers)
    if problems:
        return 1
    return 0 if args.report_only or n_bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

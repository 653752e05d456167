"""Find a model's name-mover, S-inhibition-style, duplicate-token, induction and previous-token heads on IOI prompts
from their attention patterns alone, and hold circuits against them.

The IOI counterpart of bench/induction_heads.py (whose pattern reading, tables and circuit report it uses): the heads
are named by where they attend on the ioi task's own prompts ("When Mary and John went to the store, John gave a drink
to"), independently of any circuit-discovery method.

    python3 bench/ioi_heads.py [--model zoo:toy-ioi] [--n 200] [--seed 0] [--top 10] [--circuit circuit.json ...]
    python3 bench/ioi_heads.py --model zoo:smollm2-135m-instruct --n 64 --top 8 \\
        --find eap,eap-ig --sizes 200,1000 --save-dir /tmp/ioi-circuits

Positions come from the task's data: END is the position the metric reads; the IO and S tokens are the answer and
wrong ids there (``data.answers`` / ``data.wrong``), found among the prompt's tokens before END; S2 is the last S
position (the second mention), S1 the one before it. Prompts without exactly one IO and at least two S positions are
left out (their number is printed). Scores, each a mean over prompts of attention weights:

- name-mover: attention(END -> IO) - attention(END -> S), where attention to a name is summed over every position
  holding it (both S mentions); ``io`` and ``s`` are the two terms;
- s2 (S-inhibition-style): attention(END -> S2). Wang et al. (2022) name S-inhibition heads by patching; attending
  from END to S2 is the pattern they report for them, and the only part measured here;
- duplicate-token: attention(S2 -> S1); induction: attention(S2 -> S1 + 1); previous-token: attention(i -> i - 1)
  over every real position but the first (these three by bench/induction_heads.py's definitions).

A head plays a role when its score exceeds ``--threshold`` (0.4, as for induction); name-mover heads use
``--nm-threshold`` (0.2: a difference of two attention weights, which a head spreading its attention over both names
cannot reach).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import Any, NamedTuple

import torch

# bench/ is a folder of scripts, not a package: the sibling is loaded by its path.
_spec = importlib.util.spec_from_file_location("induction_heads", Path(__file__).with_name("induction_heads.py"))
assert _spec is not None and _spec.loader is not None
ih = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ih)

COLUMNS = {"name_mover": "name-mover", "io": "END->IO", "s": "END->S", "s2": "END->S2", "duplicate": "S2->S1",
           "induction": "S2->S1+1", "prev_token": "prev-token"}
ROLES = ("name_mover", "s2", "duplicate", "induction", "prev_token")
ROLE_NAMES = {"name_mover": "name-mover", "s2": "S-inhibition-style", "duplicate": "duplicate-token",
              "induction": "induction", "prev_token": "previous-token"}
NM_THRESHOLD = 0.2


class NamePositions(NamedTuple):
    """Where the names stand in each prompt ``[B, P]``: ``end``, ``s2`` ``[B]`` positions; ``io``, ``s`` ``[B, P]``
    bool masks of the positions before END holding the IO and the S token; ``keep`` ``[B]``: exactly one IO and at
    least two S positions."""

    end: torch.Tensor
    s2: torch.Tensor
    io: torch.Tensor
    s: torch.Tensor
    keep: torch.Tensor


def name_positions(tokens: torch.Tensor, positions: torch.Tensor, answers: torch.Tensor,
                   wrong: torch.Tensor) -> NamePositions:
    """The IO and S positions of IOI prompts ``tokens [B, P]`` whose metric reads one position each (``positions``
    bool ``[B, P]``), where ``answers`` / ``wrong`` ``[B, P]`` hold the IO and S token ids."""
    if answers.dim() != 2 or not bool((positions.sum(1) == 1).all()):
        raise ValueError("IOI data must read one position per prompt, with one answer and one wrong token")
    b, p = tokens.shape
    rows, pos = torch.arange(b), torch.arange(p)
    end = positions.long().argmax(1)
    before = pos[None, :] < end[:, None]
    io = (tokens == answers[rows, end][:, None]) & before
    s = (tokens == wrong[rows, end][:, None]) & before
    s2 = torch.where(s, pos[None, :], torch.full_like(tokens, -1)).max(1).values
    keep = (io.sum(1) == 1) & (s.sum(1) >= 2)
    return NamePositions(end=end, s2=s2, io=io, s=s, keep=keep)


def ioi_scores_from_patterns(patterns: torch.Tensor, tokens: torch.Tensor, names: NamePositions,
                             lengths: torch.Tensor | None = None) -> dict[str, dict[str, float]]:
    """Per-head scores (module docstring) from patterns ``[L, B, H, P, P]`` of ``tokens [B, P]``, over the prompts
    ``names.keep`` selects: ``{"a{L}.h{H}": {"name_mover": ., "io": ., "s": ., "s2": ., "duplicate": .,
    "induction": ., "prev_token": .}}``."""
    keep = names.keep
    if not bool(keep.any()):
        raise ValueError("no prompt has one IO and two S positions")
    patterns, tokens = patterns[:, keep].float(), tokens[keep]
    end, s2, io, s = names.end[keep], names.s2[keep], names.io[keep].float(), names.s[keep].float()
    n_layers, b, n_heads, p, _ = patterns.shape
    from_end = patterns.gather(3, end[None, :, None, None, None].expand(n_layers, b, n_heads, 1, p)).squeeze(3)
    to_io = (from_end * io[None, :, None, :]).sum(-1).mean(1)  # [L, H]
    to_s = (from_end * s[None, :, None, :]).sum(-1).mean(1)
    to_s2 = from_end.gather(-1, s2[None, :, None, None].expand(n_layers, b, n_heads, 1)).squeeze(-1).mean(1)
    at_s2 = torch.zeros_like(tokens, dtype=torch.bool)
    at_s2[torch.arange(b), s2] = True
    seq = ih.scores_from_patterns(patterns, tokens, at_s2, None if lengths is None else lengths[keep])
    return {
        head: {"name_mover": float(to_io[layer, h] - to_s[layer, h]), "io": float(to_io[layer, h]),
               "s": float(to_s[layer, h]), "s2": float(to_s2[layer, h]),
               **{k: seq[head][k] for k in ("duplicate", "induction", "prev_token")}}
        for layer in range(n_layers)
        for h in range(n_heads)
        for head in [f"a{layer}.h{h}"]
    }


def ioi_roles(scores: dict[str, dict[str, float]], threshold: float = ih.THRESHOLD,
              nm_threshold: float = NM_THRESHOLD) -> dict[str, list[str]]:
    """Role -> heads whose score exceeds its threshold (``nm_threshold`` for name movers, ``threshold`` otherwise)."""
    return {**ih.roles(scores, nm_threshold, ROLES[:1]), **ih.roles(scores, threshold, ROLES[1:])}


def ioi_head_scores(model: Any, data: Any) -> tuple[dict[str, dict[str, float]], NamePositions]:
    """The scores of every head of ``model`` on ioi task data ``data``, and the name positions they were read at."""
    names = name_positions(data.clean, data.positions, data.answers, data.wrong)
    patterns = ih.attention_patterns(model, data.clean)
    return ioi_scores_from_patterns(patterns, data.clean, names, data.lengths), names


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ih.add_arguments(ap, "zoo:toy-ioi")
    ap.add_argument("--nm-threshold", type=float, default=NM_THRESHOLD)
    args = ap.parse_args(argv)

    from acdc import get_task, load_model

    model = load_model(args.model)
    data = get_task("ioi").build(model, args.n, seed=args.seed, split=args.split)
    scores, names = ioi_head_scores(model, data)
    print(f"{args.model}: {int(names.keep.sum())} of {len(data)} ioi prompts (seed {args.seed}, split {args.split}) "
          "with one IO and two S positions")
    ih.print_scores(scores, COLUMNS, args.top)
    found = ioi_roles(scores, args.threshold, args.nm_threshold)
    print(ih.verdict(found, args.threshold, ROLE_NAMES) + f" (name-mover > {args.nm_threshold:g})")
    print("\n".join(ih.circuit_report(model, "ioi", data, found, ROLE_NAMES, args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

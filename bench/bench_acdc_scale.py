"""The fast ACDC against the plain sequential one on larger random GPT-2-shaped models (same result required):
how the saving grows with depth, width and vocabulary once Python overhead no longer dominates.

    python bench/bench_acdc_scale.py [--threads 2]

Random weights (init_std 0.1, so attention is not uniform) and random prompts; KL to the full model at the last
position; counterfactuals are other random prompts. Circuits found on random models mean nothing; the point is the
cost of finding the same one two ways.
"""

from __future__ import annotations

import argparse

import torch

from acdc import Graph
from acdc.methods import acdc_search
from acdc.models import random_gpt2
from acdc.types import TaskData

SHAPES = [  # (layers, heads, d_model, vocab, prompts, positions, threshold)
    (2, 4, 64, 1000, 32, 16, 0.002),
    (4, 8, 256, 8000, 32, 24, 0.002),
    (6, 8, 256, 4000, 16, 24, 0.002),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{'shape':<34}{'edges':>7}{'kept':>6}{'plain fwd':>10}{'fast fwd':>9}{'ratio':>7}"
          f"{'plain s':>9}{'fast s':>8}{'ratio':>7}")
    for layers, heads, d, vocab, b, p, tau in SHAPES:
        model = random_gpt2(n_layer=layers, n_head=heads, d_model=d, vocab=vocab, n_ctx=64, seed=0, init_std=0.1)
        g = Graph.from_model(model)
        gen = torch.Generator().manual_seed(0)
        clean = torch.randint(0, vocab, (b, p), generator=gen)
        corrupt = torch.randint(0, vocab, (b, p), generator=gen)
        pos = torch.zeros(b, p, dtype=torch.bool)
        pos[:, -1] = True
        data = TaskData(clean, corrupt, pos, clean, None, "kl")
        plain, cp = acdc_search(model, g, data, tau, fast=False, progress=False)
        fast, cf = acdc_search(model, g, data, tau, fast=True, progress=False)
        assert torch.equal(plain.mask, fast.mask), "fast ACDC must return the sequential result"
        shape = f"{layers}L x {heads}H d{d} V{vocab} {b}x{p}"
        print(f"{shape:<34}{g.n_edges:>7}{fast.n_edges:>6}{cp.forward_equivalents:>10.1f}"
              f"{cf.forward_equivalents:>9.1f}{cp.forward_equivalents / cf.forward_equivalents:>7.1f}"
              f"{cp.seconds:>9.1f}{cf.seconds:>8.2f}{cp.seconds / cf.seconds:>7.1f}", flush=True)


if __name__ == "__main__":
    main()

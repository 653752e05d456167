"""Masked-forward cost as a ratio to the bare model's forward (issue: foundation benchmark).

Model: randomly initialised GPT-2-small shape (12 layers, 12 heads, d_model 768, vocab 50257), built locally.
Batch: 32 prompts x 16 tokens. Threads: 2. Denominator: the Hugging Face model's own forward on the same batch
(the fastest "bare" forward; the bridge's hooked forward is also printed). For K masks the denominator is K bare
forwards. "steady" reuses the counterfactual cache, as every search does for all the masks it evaluates on a
batch; "cold" includes computing the counterfactual run.

    python bench/bench_masked_forward.py [--batch 32] [--pos 16] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from acdc import Graph, ablation_cache, masked_forward
from acdc.models import random_gpt2, random_gpt2_hf


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--pos", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    shape = dict(n_layer=12, n_head=12, d_model=768, vocab=50257, n_ctx=1024, seed=0)
    model = random_gpt2(**shape)
    hf = random_gpt2_hf(**shape)  # same seed, same weights, not wrapped by the bridge: the bare model
    graph = Graph.from_model(model)
    gen = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 50257, (args.batch, args.pos), generator=gen)
    corrupt = torch.randint(0, 50257, (args.batch, args.pos), generator=gen)

    with torch.no_grad():
        diff = (hf(clean).logits - model(clean)).abs().max().item()
        assert diff < 1e-3, f"bare model differs from the bridge ({diff})"
        bare = timed(lambda: hf(clean), args.repeats)
        bridge = timed(lambda: model(clean), args.repeats)
        cache = ablation_cache(model, graph, corrupt)
        print(f"model: GPT-2-small shape, random init; batch {args.batch} x {args.pos} tokens; {args.threads} threads")
        print(f"bare HF forward          {bare * 1e3:8.1f} ms   (bridge forward with hooks: {bridge * 1e3:.1f} ms)")
        for k in (1, 8):
            masks = (torch.rand(k, graph.n_src, graph.n_dst, generator=gen) > 0.5).float()
            steady = timed(lambda m=masks: masked_forward(model, graph, clean, cache, m), args.repeats)
            cold = timed(lambda m=masks: masked_forward(model, graph, clean, corrupt, m), max(1, args.repeats // 2))
            print(
                f"masked_forward K={k}:  steady {steady * 1e3:8.1f} ms  ratio {steady / (k * bare):5.2f}   |   "
                f"cold (incl. counterfactual run) {cold * 1e3:8.1f} ms  ratio {cold / (k * bare):5.2f}"
            )


if __name__ == "__main__":
    main()

"""Masked-forward cost as a ratio to the bare model's forward (issue: foundation benchmark).

Model: randomly initialised GPT-2-small shape (12 layers, 12 heads, d_model 768, vocab 50257), built locally.
Batch: 32 prompts x 16 tokens. Threads: 2. Denominator: the Hugging Face model's own forward on the same batch
(the fastest "bare" forward; the bridge's hooked forward is also printed). For K masks the denominator is K bare
forwards. "steady" reuses the counterfactual cache, as every search does for all the masks it evaluates on a
batch; "cold" includes computing the counterfactual run. Mask kinds: random 50% (the worst case: every reader
needs an input of its own), a sparse circuit (10% of edges at random, then dangling edges pruned: what pareto
sweeps evaluate)
and near-full (0.2% of edges removed: what ACDC evaluates).

    python bench/bench_masked_forward.py [--batch 32] [--pos 16] [--repeats 5]
"""

from __future__ import annotations

import argparse

import torch
from _timing import timed

from acdc import Graph, ablation_cache, masked_forward, prune_dangling
from acdc.models import random_gpt2, random_gpt2_hf


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
        print(f"bare HF forward {bare * 1e3:8.1f} ms   (the bridge's hooked forward: {bridge * 1e3:.1f} ms)")
        def kinds(k: int) -> dict[str, torch.Tensor]:
            dense = (torch.rand(k, graph.n_src, graph.n_dst, generator=gen) > 0.5).float()
            sparse = torch.stack([
                prune_dangling(graph, torch.rand(graph.n_src, graph.n_dst, generator=gen) < 0.1).float()
                for _ in range(k)
            ])
            near_full = (torch.rand(k, graph.n_src, graph.n_dst, generator=gen) > 0.002).float()
            return {"random 50%": dense, "sparse circuit": sparse, "near-full": near_full}

        for k in (1, 8):
            for kind, masks in kinds(k).items():
                steady = timed(lambda m=masks: masked_forward(model, graph, clean, cache, m), args.repeats)
                line = (
                    f"K={k} {kind:<15} ({int((masks[0].bool() & graph.valid).sum()):>5} edges): "
                    f"steady {steady * 1e3:8.1f} ms"
                    f"  ratio {steady / (k * bare):5.2f}"
                )
                if kind == "random 50%":
                    cold = timed(lambda m=masks: masked_forward(model, graph, clean, corrupt, m), 1)
                    line += f"   | cold (incl. counterfactual run) ratio {cold / (k * bare):5.2f}"
                print(line, flush=True)


if __name__ == "__main__":
    main()

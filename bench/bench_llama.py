"""EAP cost on a Llama-style model (RMSNorm, rotary q/k, gated SiLU MLP, grouped-query attention) as a ratio to the
bare model's floor, like bench/bench_attribution.py does for GPT-2.

Model: randomly initialised ``LlamaForCausalLM``, the shape of a ~0.5B model scaled down to fit 2 CPU cores:
8 layers, d_model 512, 8 query heads sharing 2 key/value heads (d_head 64), intermediate 1408, vocab 32000.
Batch: 32 prompts x 16 tokens, logit-difference metric at the last position. Threads: 2.

Floor, measured on the Hugging Face model itself (no bridge, no hooks): counterfactual forward + clean forward + one
backward, with weight gradients (an ordinary training backward) and with input-embedding gradients only.

    python bench/bench_llama.py [--batch 32] [--pos 16] [--repeats 3] [--family llama|qwen2]
"""

from __future__ import annotations

import argparse

import torch
from _timing import timed

SHAPE = dict(n_layer=8, n_head=8, n_kv_head=2, d_model=512, d_mlp=1408, vocab=32000, n_ctx=512, seed=0)


def make(batch: int, pos: int):
    from acdc.types import TaskData

    v = SHAPE["vocab"]
    gen = torch.Generator().manual_seed(0)
    clean = torch.randint(0, v, (batch, pos), generator=gen)
    corrupt = torch.randint(0, v, (batch, pos), generator=gen)
    positions = torch.zeros(batch, pos, dtype=torch.bool)
    positions[:, -1] = True
    ans = torch.randint(0, v, (batch, pos), generator=gen)
    wrong = torch.randint(0, v, (batch, pos), generator=gen)
    return TaskData(clean, corrupt, positions, ans, wrong, "logit_diff")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--pos", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--family", default="llama", choices=["llama", "qwen2"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from acdc import Graph
    from acdc.attribution import attribute
    from acdc.metrics import logit_diff
    from acdc.models import bridge_from_hf, random_llama_hf

    data = make(args.batch, args.pos)
    shape = {**SHAPE, "family": args.family}
    model = bridge_from_hf(random_llama_hf(**shape), name=f"bench-{args.family}")
    graph = Graph.from_model(model)
    ungrouped = Graph.from_config(graph.n_layers, graph.n_heads)
    print(f"model: {args.family} {SHAPE['n_layer']} layers, d_model {SHAPE['d_model']}, {SHAPE['n_head']} heads / "
          f"{SHAPE['n_kv_head']} kv heads, d_mlp {SHAPE['d_mlp']}, vocab {SHAPE['vocab']}, random init; "
          f"{graph.n_edges} edges ({ungrouped.n_edges} without grouping); batch {args.batch} x {args.pos} tokens; "
          f"{args.threads} threads; median of {args.repeats}")

    hf = random_llama_hf(**shape)  # a separate copy: the bridge's model has its weights frozen
    emb = hf.model.embed_tokens

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logit_diff(logits, data.positions, data.answers, data.wrong).mean()

    def fwd() -> None:
        with torch.no_grad():
            hf(data.corrupt)

    def fwd_bwd() -> None:
        hf.zero_grad(set_to_none=True)
        x = emb(data.clean).detach().requires_grad_(True)
        metric(hf(inputs_embeds=x).logits).backward()

    floors = {}
    for wg in (True, False):
        hf.requires_grad_(wg)
        t_f, t_fb = timed(fwd, args.repeats), timed(fwd_bwd, args.repeats)
        floors[wg] = t_f + t_fb
        label = "weight+input grads" if wg else "input grads only"
        print(f"bare HF forward {t_f:.3f} s; forward+backward ({label}) {t_fb:.3f} s")
    t = timed(lambda: attribute(model, graph, data, "eap", batch_size=args.batch, progress=False), args.repeats)
    print(f"eap {t:.3f} s = {t / floors[True]:.2f}x standard floor ({floors[True]:.3f} s), "
          f"{t / floors[False]:.2f}x input-grad floor ({floors[False]:.3f} s)")


if __name__ == "__main__":
    main()

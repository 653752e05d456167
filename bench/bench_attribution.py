"""Attribution-patching cost as a ratio to the bare model's floor (issue: attribution benchmark).

Model: randomly initialised GPT-2-small shape (12 layers, 12 heads, d_model 768, vocab 50257), built locally.
Batch: 32 prompts x 16 tokens, logit-difference metric at the last position. Threads: 2.

Floors, measured on the Hugging Face model itself (no bridge, no hooks):
- EAP: clean forward + counterfactual forward + one backward;
- EAP-IG-inputs with k steps: counterfactual forward + clean forward + k forward+backward.
The backward of the bare model is timed twice: with weight gradients (an ordinary training backward) and with
gradients for the input embeddings only (what attribution needs; a stricter floor). Both ratios are printed.

Peak memory: each measurement runs in a fresh subprocess; the number is the peak resident set size minus the
resident size right before the measured call (so the model's weights are excluded), for EAP and for the bare
forward+backward (weight gradients on).

    python bench/bench_attribution.py [--batch 32] [--pos 16] [--steps 5] [--repeats 3]
    python bench/bench_attribution.py --model zoo:smollm2-135m-instruct --task ioi --batch 64

``--model`` / ``--task``: a real (or zoo) model on the task's own train prompts (``--batch`` of them) instead of the
random GPT-2 shape; its Hugging Face module is the floor.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import torch
from _timing import timed

SHAPE = dict(n_layer=12, n_head=12, d_model=768, vocab=50257, n_ctx=1024, seed=0)


def make(batch: int, pos: int):
    from acdc.types import TaskData

    gen = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 50257, (batch, pos), generator=gen)
    corrupt = torch.randint(0, 50257, (batch, pos), generator=gen)
    positions = torch.zeros(batch, pos, dtype=torch.bool)
    positions[:, -1] = True
    ans = torch.randint(0, 50257, (batch, pos), generator=gen)
    wrong = torch.randint(0, 50257, (batch, pos), generator=gen)
    return TaskData(clean, corrupt, positions, ans, wrong, "logit_diff")


def setup(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """(bridge, graph, data, HF module): the random GPT-2-small shape, or ``--model`` on ``--task``'s prompts."""
    from acdc import Graph

    if args.model:
        from acdc import get_task, load_model

        model = load_model(args.model)
        data = get_task(args.task).build(model, args.batch, split="train")
    else:
        from acdc.models import random_gpt2

        model = random_gpt2(**SHAPE)
        data = make(args.batch, args.pos)
    return model, Graph.from_model(model), data, model.original_model


def bare_fns(hf, data, *, weight_grads: bool):  # type: ignore[no-untyped-def]
    from acdc.metrics import task_metric

    hf.requires_grad_(weight_grads)
    emb = hf.get_input_embeddings()

    def metric(logits):
        return task_metric(data, logits).mean()

    def fwd(tokens):
        with torch.no_grad():
            return hf(tokens).logits

    def fwd_bwd(tokens):
        hf.zero_grad(set_to_none=True)
        x = emb(tokens).detach().requires_grad_(True)
        metric(hf(inputs_embeds=x).logits).backward()

    return fwd, fwd_bwd


def child(kind: str, args: argparse.Namespace) -> None:
    """Peak-memory probe, run in a subprocess: prints the peak RSS growth (MiB) of one call."""
    torch.set_num_threads(2)
    model, graph, data, hf = setup(args)
    if kind == "bare":
        _, fwd_bwd = bare_fns(hf, data, weight_grads=True)
        run = lambda: fwd_bwd(data.clean)  # noqa: E731
    else:
        from acdc.attribution import attribute

        run = lambda: attribute(model, graph, data, kind, steps=args.steps, batch_size=args.batch,  # noqa: E731
                                progress=False)
    import gc

    gc.collect()
    with open("/proc/self/statm") as f:
        before = int(f.read().split()[1]) * resource.getpagesize() / 2**20
    try:  # reset the peak (VmHWM) so that loading the model does not count
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    run()
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024  # KiB
    print(json.dumps({"kind": kind, "growth_mib": peak - before}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--pos", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default=None, help="a model spec (default: the random GPT-2-small shape)")
    ap.add_argument("--task", default="ioi")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args)
        return
    torch.set_num_threads(args.threads)
    from acdc.attribution import attribute

    model, graph, data, hf = setup(args)
    what = args.model or "GPT-2-small shape, random init"
    print(f"model: {what}; {graph.n_edges} edges; batch {data.clean.shape[0]} x {data.clean.shape[1]} tokens; "
          f"{args.threads} threads; median of {args.repeats}")
    floors = {}
    for wg in (True, False):
        fwd, fwd_bwd = bare_fns(hf, data, weight_grads=wg)
        t_f = timed(lambda: fwd(data.clean), args.repeats)  # noqa: B023
        t_fb = timed(lambda: fwd_bwd(data.clean), args.repeats)  # noqa: B023
        floors[wg] = (t_f, t_fb)
        label = "weight+input grads" if wg else "input grads only"
        print(f"bare HF forward {t_f:.3f} s; forward+backward ({label}) {t_fb:.3f} s")
    k = args.steps
    for method, n_steps in (("eap", 1), ("eap-ig-inputs", k)):
        t = timed(lambda: attribute(model, graph, data, method, steps=n_steps, batch_size=args.batch,  # noqa: B023
                                    progress=False), args.repeats)
        parts = []
        for wg, label in ((True, "standard floor"), (False, "input-grad floor")):
            t_f, t_fb = floors[wg]
            floor = t_f + t_fb if method == "eap" else 2 * t_f + k * t_fb
            parts.append(f"{t / floor:.2f}x {label} ({floor:.3f} s)")
        print(f"{method:<14} {t:.3f} s  = " + ", ".join(parts))
    mem = {}
    for kind in ("bare", "eap"):
        extra = ["--model", args.model, "--task", args.task] if args.model else []
        out = subprocess.run([sys.executable, __file__, "--child", kind, "--batch", str(args.batch), "--pos",
                              str(args.pos), "--steps", str(k), *extra], capture_output=True, text=True, check=True)
        mem[kind] = json.loads(out.stdout.strip().splitlines()[-1])["growth_mib"]
    print(f"peak memory growth: bare forward+backward {mem['bare']:.0f} MiB, EAP {mem['eap']:.0f} MiB "
          f"= {mem['eap'] / mem['bare']:.2f}x")


if __name__ == "__main__":
    main()

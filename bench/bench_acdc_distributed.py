"""Exact ACDC shared among torchrun processes against one process: same circuit, and the wall time of each.

    python bench/bench_acdc_distributed.py [--ranks 2] [--threads 2] [--model zoo:toy-ioi | --random]

One process with ``--threads`` threads searches all the prompts; then ``--ranks`` gloo processes with
``threads / ranks`` threads each split the prompts (acdc.methods.acdc_search(distributed=True)): the same cores,
shared two ways. Each process times its own search; the slowest rank is the distributed time. ``--random``: a
random Llama (6 layers, d_model 256, 8 heads / 2 key-value heads, vocab 8,000, 64 prompts x 24 tokens) instead of
a zoo model. On more machines than one, ranks add cores rather than share them; this measures the overhead and
the scaling on one.
"""

from __future__ import annotations

import argparse
import os
import socket
import time
from pathlib import Path

import torch


def _setup(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from acdc import Graph, get_task, load_model
    from acdc.types import TaskData

    if args.random:
        from acdc.models import random_llama

        model = random_llama(n_layer=6, n_head=8, n_kv_head=2, d_model=256, d_mlp=704, vocab=8000, n_ctx=64, seed=0)
        gen = torch.Generator().manual_seed(0)
        b, p = 64, 24
        clean = torch.randint(0, 8000, (b, p), generator=gen)
        corrupt = torch.randint(0, 8000, (b, p), generator=gen)
        pos = torch.zeros(b, p, dtype=torch.bool)
        pos[:, -1] = True
        data = TaskData(clean, corrupt, pos, clean, None, "kl")
    else:
        model = load_model(args.model)
        data = get_task(args.task).build(model, args.n, split="train")
    return model, Graph.from_model(model), data


def _rank(rank: int, world: int, port: int, args: argparse.Namespace, folder: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(max(1, args.threads // world))
    from acdc.distributed import init_from_env, shutdown
    from acdc.methods.acdc import acdc_search

    init_from_env(device="cpu")
    model, graph, data = _setup(args)
    t = time.perf_counter()
    circuit, _ = acdc_search(model, graph, data, args.threshold, progress=False, distributed=True)
    seconds = time.perf_counter() - t
    torch.save({"mask": circuit.mask, "seconds": seconds}, Path(folder) / f"rank{rank}.pt")
    shutdown()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="zoo:toy-ioi")
    ap.add_argument("--task", default="ioi")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--threshold", type=float, default=0.01)
    ap.add_argument("--random", action="store_true")
    args = ap.parse_args()
    import tempfile

    import torch.multiprocessing as mp

    from acdc.methods.acdc import acdc_search

    torch.set_num_threads(args.threads)
    model, graph, data = _setup(args)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        one, _ = acdc_search(model, graph, data, args.threshold, progress=False)
        times.append(time.perf_counter() - t)
    single = sorted(times)[1]
    print(f"{graph.n_edges} edges, {len(data)} prompts, threshold {args.threshold}: one process x {args.threads} "
          f"threads {single:.2f} s (median of 3), {one.n_edges} edges kept", flush=True)
    runs = []
    for _ in range(3):
        with tempfile.TemporaryDirectory() as folder:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = int(s.getsockname()[1])
            mp.start_processes(_rank, args=(args.ranks, port, args, folder), nprocs=args.ranks, join=True,
                               start_method="fork")
            outs = [torch.load(Path(folder) / f"rank{r}.pt") for r in range(args.ranks)]
        for o in outs:
            assert torch.equal(o["mask"], one.mask), "the ranks must find the single-process circuit"
        runs.append(max(o["seconds"] for o in outs))
    multi = sorted(runs)[1]
    print(f"{args.ranks} processes x {max(1, args.threads // args.ranks)} threads: {multi:.2f} s (slowest rank, "
          f"median of 3), same circuit; speed-up {single / multi:.2f}x")


if __name__ == "__main__":
    main()

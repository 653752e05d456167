"""Exact ACDC on a real model, reader by reader: where the time goes, as ratios to the bare model's forward.

    python bench/bench_acdc_real.py [--model zoo:smollm2-135m-instruct] [--task ioi] [--n 64] [--minutes 10]
        [--threshold 0.01] [--threads 2] [--profile]

Measures, in one process on the same prompts: the bare Hugging Face forward of the clean batch (the unit), one masked
forward of the full circuit, the incremental engine's reset to the full circuit, then the search itself for at most
``--minutes`` (it is stopped there): seconds and candidates per reader, forward equivalents per candidate, split into
the readers of the last layers and the rest. ``--profile`` prints the top of a cProfile of the search part.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time

import torch
from _timing import timed


class Stop(Exception):
    pass


def _peak_gib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="zoo:smollm2-135m-instruct")
    ap.add_argument("--task", default="ioi")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--threshold", type=float, default=0.01)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--speculate", type=int, default=None)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--checkpoint", default=None, help="the search's checkpoint file (resumes from it if present)")
    ap.add_argument("--log", action="store_true", help="print a line per reader as the search goes")
    ap.add_argument("--skip-masked", action="store_true",
                    help="skip timing the masked forward and the reset (keeps the peak memory the search's own)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from acdc import Graph, get_task, load_model
    from acdc.arch import get_arch
    from acdc.incremental import Incremental
    from acdc.methods.acdc import acdc_search
    from acdc.patching import ablation_cache, masked_forward_unchecked

    model = load_model(args.model)
    graph = Graph.from_model(model)
    data = get_task(args.task).build(model, args.n, split="train")
    arch = get_arch(model)
    hf = model.original_model
    B, P = data.clean.shape
    print(f"{args.model}: {graph.n_edges} edges, {graph.n_dst} readers; {args.task} {B} prompts x {P} tokens; "
          f"{args.threads} threads; threshold {args.threshold}", flush=True)
    with torch.no_grad():
        bare = timed(lambda: hf(data.clean), 3)
        print(f"bare forward {bare:.2f} s", flush=True)
        if not args.skip_masked:
            cache = ablation_cache(model, graph, data.corrupt, "patch")
            masked = timed(lambda: masked_forward_unchecked(arch, graph, data.clean, cache,
                                                            graph.valid.to(arch.dtype).unsqueeze(0)), 2)
            engine = Incremental(arch, graph, data.clean, cache, data)
            t = time.perf_counter()
            engine.reset(graph.valid)
            reset = time.perf_counter() - t
            print(f"masked forward (full circuit) {masked:.2f} s = {masked / bare:.2f}x; engine reset (full "
                  f"circuit) {reset:.2f} s = {reset / bare:.2f}x", flush=True)
            del engine, cache
    print(f"peak RSS before the search {_peak_gib():.2f} GiB", flush=True)

    rows: list[tuple[int, int, int, float]] = []
    t_last = [0.0]
    deadline = [0.0]

    def on_reader(step: int, reader: int, cands: int, edges: int) -> None:
        now = time.perf_counter()
        rows.append((reader, cands, edges, now - t_last[0]))
        if args.log:
            print(f"    reader {reader} ({graph.dst_names[reader]}): "
                  f"{cands} candidates, {now - t_last[0]:.1f} s, {edges} edges left, {now - t0:.0f} s in",
                  flush=True)
        t_last[0] = now
        if now > deadline[0]:
            raise Stop

    prof = cProfile.Profile() if args.profile else None
    t0 = time.perf_counter()
    t_last[0] = t0
    deadline[0] = t0 + 60 * args.minutes
    finished = False
    try:
        if prof:
            prof.enable()
        circuit, cost = acdc_search(model, graph, data, args.threshold, progress=False, on_reader=on_reader,
                                    speculate=args.speculate, checkpoint=args.checkpoint)
        finished = True
    except Stop:
        pass
    finally:
        if prof:
            prof.disable()
    total = time.perf_counter() - t0
    first = rows[0][3] if rows else 0.0  # includes the search's own reset
    print(f"search: {len(rows)} of {graph.n_dst} readers in {total:.0f} s ({'finished' if finished else 'stopped'}); "
          f"the first reader's time includes the search's set-up and reset; peak RSS {_peak_gib():.2f} GiB",
          flush=True)
    if finished:
        print(f"  circuit: {circuit.n_edges} edges, final distance {circuit.meta['final_distance']:.5f}; "
              f"{cost.forward_equivalents:.0f} forward equivalents ({cost.forward_equivalents / cost.masks:.4f} "
              f"per candidate, {cost.masks} candidates); {total / bare:.0f} bare forwards of wall time")
    groups = {"logits + last 2 layers": [r for r in rows[1:] if r[0] >= graph.n_dst - 1 - 2 * (graph.n_dst - 1)
                                         // graph.n_layers],
              "earlier readers": [r for r in rows[1:] if r[0] < graph.n_dst - 1 - 2 * (graph.n_dst - 1)
                                  // graph.n_layers]}
    for name, rs in groups.items():
        ev = [r for r in rs if r[1]]
        if not ev:
            continue
        per = [r[3] / r[1] for r in ev]
        print(f"  {name}: {len(rs)} readers ({len(rs) - len(ev)} dead), {sum(r[1] for r in ev)} candidates, "
              f"{sum(r[3] for r in rs):.0f} s; per candidate median {statistics.median(per) * 1e3:.0f} ms = "
              f"{statistics.median(per) / bare:.3f} bare forwards; per reader median "
              f"{statistics.median([r[3] for r in ev]):.1f} s")
    if rows:
        print(f"  first reader (logits, with set-up): {first:.1f} s, {rows[0][1]} candidates; edges left "
              f"{rows[-1][2]}")
    if prof:
        pstats.Stats(prof).sort_stats("cumulative").print_stats(30)
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()

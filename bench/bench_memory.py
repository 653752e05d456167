"""Estimated against measured peak memory of attribution runs (acdc.memory, issue 7).

Each configuration runs in a fresh subprocess, which
1. imports torch, transformers, transformer_lens and acdc, and reads its resident set size (RSS) ``r0``;
2. loads the model (and acdc's weight copies), builds the prompts, reads RSS ``r1``;
3. resets the kernel's peak-RSS mark (``/proc/self/clear_refs``), so that loading does not count as the run's peak;
4. runs ``acdc.attribute`` and reads the peak RSS (``getrusage().ru_maxrss``).

It prints, per configuration, the estimate of ``acdc.memory.estimate`` (from the loaded model's shapes and parameter
bytes, before the run) against the measurement: weights (``r1 - r0``), run (``peak - r1``) and total
(``peak - r0``, the quantity ``--max-memory`` budgets), with the relative error of each.

    python bench/bench_memory.py                 # the three configurations below, EAP
    python bench/bench_memory.py --method eap-ig-inputs
    python bench/bench_memory.py --grid          # the 28 calibration configurations (about 10 minutes)
    python bench/bench_memory.py --method acdc   # the fast ACDC search (every prompt at once; GPT-2-small shape:
                                                 # cut short after the logits reader, see CONFIGS)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
from typing import Any

CONFIGS: list[dict[str, Any]] = [
    {"name": "GPT-2-small shape, 16 x 32 tokens", "L": 12, "H": 12, "d": 768, "V": 50257, "ctx": 1024, "n": 16,
     "P": 32, "batch": 16, "tau": 1e9},  # acdc: 32k edges take long; an infinite threshold stops after the logits
    {"name": "4 layers d256, 64 x 64 tokens", "L": 4, "H": 8, "d": 256, "V": 50257, "ctx": 128, "n": 64, "P": 64,
     "batch": 64},
    {"name": "zoo:toy-ioi, 200 prompts (ioi)", "zoo": "toy-ioi", "task": "ioi", "n": 200, "batch": 32},
]

# (L, H, d, V, P, prompts = batch) of the calibration runs, random GPT-2-shaped models, EAP, patch ablation
GRID = [(2, 4, 128, 512, 64, 64), (2, 4, 128, 512, 64, 128), (4, 4, 256, 512, 64, 64), (4, 16, 256, 512, 64, 64),
        (4, 8, 512, 512, 64, 64), (4, 8, 256, 32768, 64, 32), (4, 8, 256, 50257, 64, 16),
        (4, 8, 256, 512, 256, 16), (12, 12, 768, 50257, 32, 8), (12, 12, 768, 50257, 32, 32),
        (6, 8, 512, 8192, 64, 32), (2, 4, 64, 512, 32, 32), (1, 4, 128, 512, 64, 64), (2, 4, 64, 512, 512, 4),
        (4, 8, 128, 512, 512, 8), (4, 8, 128, 512, 1024, 2), (4, 8, 256, 512, 64, 16), (4, 8, 256, 512, 64, 32),
        (4, 8, 256, 512, 64, 64), (4, 8, 256, 512, 64, 128), (4, 8, 256, 8192, 64, 64), (4, 8, 256, 512, 32, 64),
        (4, 8, 256, 512, 128, 64), (8, 8, 256, 512, 64, 64)]
ACDC_TAU = 0.01  # the ACDC threshold of ``--method acdc`` (a config's "tau" overrides it: inf keeps only the start)
GRID_ZOO = [{"zoo": "toy-ioi", "task": "ioi", "n": 200, "batch": 32},
            {"zoo": "toy-induction", "task": "induction", "n": 200, "batch": 32}]


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(cfg: dict[str, Any], method: str, steps: int, threads: int) -> None:
    """One measurement (run in a subprocess): prints a JSON line with the estimate and the measured bytes."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import tqdm.auto  # noqa: F401 - imported before r0 like everything else the run needs
    import transformer_lens.model_bridge  # noqa: F401
    from transformers import GPT2LMHeadModel  # noqa: F401

    from acdc import Graph, attribute, load_model
    from acdc.arch import get_arch
    from acdc.memory import estimate
    from acdc.models import random_gpt2
    from acdc.task import get_task
    from acdc.types import TaskData

    torch.set_num_threads(threads)
    gc.collect()
    r0 = _rss()
    ablation = "patch"
    if cfg.get("zoo"):
        model = load_model(f"zoo:{cfg['zoo']}")
        task = get_task(cfg["task"])
        data = task.build(model, cfg["n"], split="train")
        ablation = task.spec.defaults.ablation
    else:
        model = random_gpt2(n_layer=cfg["L"], n_head=cfg["H"], d_model=cfg["d"], vocab=cfg["V"], n_ctx=cfg["ctx"],
                            seed=0)
        g = torch.Generator().manual_seed(0)
        n, p, v = cfg["n"], cfg["P"], cfg["V"]
        positions = torch.zeros(n, p, dtype=torch.bool)
        positions[:, -1] = True
        tokens = [torch.randint(0, v, (n, p), generator=g) for _ in range(4)]
        data = TaskData(tokens[0], tokens[1], positions, tokens[2], tokens[3], "logit_diff")
    graph = Graph.from_model(model)
    get_arch(model)
    batch = len(data) if method == "acdc" else min(cfg["batch"], len(data))  # the search takes every prompt at once
    est = estimate(model, method=method, batch=batch, seq_len=data.clean.shape[1],
                   n_writers=graph.n_src, ablation=ablation, metric=data.metric, n_prompts=len(data))
    gc.collect()
    r1 = _rss()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS mark: loading is not the run
        reset = True
    except OSError:
        reset = False
    if method == "acdc":
        from acdc.methods import acdc_search

        acdc_search(model, graph, data, cfg.get("tau", ACDC_TAU), ablation=ablation, progress=False)
    else:
        attribute(model, graph, data, method, ablation=ablation, steps=steps, batch_size=cfg["batch"],
                  progress=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(json.dumps({"est_weights": est.weights, "est_run": est.run, "est_total": est.total, "weights": r1 - r0,
                      "run": peak - r1, "total": peak - r0, "reset": reset, "prompts": len(data),
                      "tokens": int(data.clean.shape[1])}))


def measure(cfg: dict[str, Any], method: str, steps: int, threads: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(cfg), "--method", method, "--steps",
                          str(steps), "--threads", str(threads)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"measurement failed for {cfg}:\n{out.stderr[-2000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _err(est: float, meas: float) -> str:
    return f"{100 * (est - meas) / meas:+5.0f}%"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", default="eap")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--grid", action="store_true", help="run the calibration grid instead of the three configurations")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(json.loads(args.child), args.method, args.steps, args.threads)
        return
    if args.grid:
        configs = [{"name": f"L{L} H{H} d{d} V{V}, {n} x {p}", "L": L, "H": H, "d": d, "V": V, "ctx": max(p, 128),
                    "n": n, "P": p, "batch": n} for L, H, d, V, p, n in GRID]
        configs += [{**z, "name": f"zoo:{z['zoo']}, {z['n']} prompts"} for z in GRID_ZOO]
    else:
        configs = CONFIGS
    mib = 2**20
    print(f"method {args.method}; MiB; error = (estimate - measured) / measured")
    print(f"{'configuration':<36} {'weights est/meas':>17}  {'run est/meas':>13} {'err':>5}  "
          f"{'total est/meas':>13} {'err':>5}")
    worst = 0.0
    for cfg in configs:
        r = measure(cfg, args.method, args.steps, args.threads)
        worst = max(worst, abs(r["est_total"] - r["total"]) / r["total"], abs(r["est_run"] - r["run"]) / r["run"])
        cells = [f"{r['est_' + k] / mib:6.0f}/{r[k] / mib:<6.0f}" for k in ("weights", "run", "total")]
        note = "" if r["reset"] else "  (peak mark not reset: includes loading)"
        print(f"{cfg['name']:<36} {cells[0]:>17}  {cells[1]} {_err(r['est_run'], r['run'])}  {cells[2]} "
              f"{_err(r['est_total'], r['total'])}{note}")
    print(f"largest relative error (run or total): {100 * worst:.0f}%")


if __name__ == "__main__":
    main()

"""Response time of one exact re-evaluation in ``acdc explore``: the HTTP request the page sends when an edge is
toggled, against the evaluator called directly on the same circuit.

    python bench/bench_explore.py RUN_DIR [--method eap-ig] [--repeats 5] [--threads 2]

Opens RUN_DIR as ``acdc explore`` does (model, test prompts, memory plan; timed), serves it on a free loopback port,
and POSTs ``/api/evaluate`` with ``--method``'s chosen circuit less one edge (a different edge each time, so nothing
can be cached), ``--repeats`` times; the direct call is ``evaluate_masks`` on the same mask. Prints the medians and
their ratio, and checks that both give the same f.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
import urllib.request

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("run_dir")
    ap.add_argument("--method", default="eap-ig")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from acdc.evaluate import circuit_numbers, evaluate_masks
    from acdc.export.explore import Explorer, serve
    from acdc.graph import Circuit

    t0 = time.perf_counter()
    ex = Explorer.open(args.run_dir)
    print(f"open: {time.perf_counter() - t0:.1f} s ({ex.summary.get('model')}, {len(ex.data)} test prompts x "
          f"{ex.data.clean.shape[1]} tokens, {ex.graph.n_edges:,} edges; {ex.memory_note}; {args.threads} threads)")
    entry = next(c for c in ex.summary["circuits"] if c["method"] == args.method)
    names = Circuit.load(ex.folder / entry["json"], ex.graph).edge_names()
    server = serve(ex, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.port}/api/evaluate"
    http, direct = [], []
    try:
        for k in range(args.repeats + 1):  # the first round warms up
            edges = names[:k] + names[k + 1:]
            body = json.dumps({"edges": edges, "prompt": 0}).encode()
            req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
            t = time.perf_counter()
            with urllib.request.urlopen(req, timeout=600) as r:
                got = json.loads(r.read())
            t_http = time.perf_counter() - t
            mask = Circuit.from_edges(ex.graph, edges).mask
            t = time.perf_counter()
            ref = circuit_numbers(evaluate_masks(ex.model, ex.graph, ex.data, [mask], ablation=ex.ablation))[0]
            t_direct = time.perf_counter() - t
            assert got["faithfulness"] == ref["faithfulness"], (got["faithfulness"], ref["faithfulness"])
            if k:
                http.append(t_http)
                direct.append(t_direct)
            print(f"{'warm-up' if not k else f'round {k}'}: {len(edges):,} edges, f = {got['faithfulness']:.4f}; "
                  f"request {t_http:.2f} s (server's evaluation {got['seconds']:.2f} s), direct {t_direct:.2f} s")
    finally:
        server.shutdown()
        server.server_close()
    h, d = statistics.median(http), statistics.median(direct)
    print(f"median: request {h:.2f} s, evaluate_masks alone {d:.2f} s (ratio {h / d:.2f}; the request also computes "
          "the top predictions of one prompt)")


if __name__ == "__main__":
    main()

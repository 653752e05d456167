"""``acdc explore RUN_DIR``: the report's circuit view served with the run's model loaded, so that edits to a circuit
(edges removed or added, whole nodes ablated) are evaluated exactly, by the same evaluator as the sweep
(:func:`acdc.evaluate.evaluate_masks`), on the run's test prompts rebuilt from its summary.

A small Flask application, served by werkzeug's threaded server on 127.0.0.1 unless asked otherwise. Its JSON API
(every answer is JSON; every error is ``{"error": one line}`` with a 4xx status for bad input, never a traceback):

- ``GET /``: the report page with the view in live mode;
- ``GET /api/info``: task, model, prompts, ablation, the metric of the full and the empty circuit, the memory plan;
- ``POST /api/evaluate`` ``{"edges": [names], "ablate_nodes": [names], "prompt": i}``: f, KL and the metric of the
  circuit (its edges minus every edge into or out of an ablated node) on all test prompts, and the top predictions
  of the circuit and of the full model on prompt ``i``;
- ``POST /api/save`` with the same fields and ``"name"``: writes ``circuits/edited/<name>.json`` atomically (an
  existing name is refused: nothing on disk is ever overwritten);
- ``GET /api/circuits``: the circuit files of the run folder; ``GET /api/circuit?file=F``: one of them, to reload.

Memory: the evaluation's peak is estimated with acdc.memory's model of the exact masked forward (three masks per
pass: full, empty, the circuit); the prompts per pass are the most that fit the budget (``--max-memory``, default
80% of the memory available at start), and when not even one prompt fits, evaluations are refused with a message
(HTTP 507) while the page still works.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from acdc.errors import AcdcError, InputError
from acdc.graph import Circuit, Graph

#: Largest request body accepted (a 70,651-edge circuit by name is about 1.6 MB).
MAX_REQUEST_BYTES = 16 * 2**20
#: Top predictions shown per prompt.
TOP_K = 5
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_FIELDS = {"evaluate": {"edges", "ablate_nodes", "prompt"}, "save": {"edges", "ablate_nodes", "prompt", "name"}}


class OverBudget(AcdcError):
    """An evaluation whose estimated peak memory exceeds the server's budget."""


@dataclass
class Explorer:
    """A run folder with its model and test prompts loaded: what the server's routes call."""

    folder: Path
    summary: dict[str, Any]
    model: Any
    graph: Graph
    data: Any  # TaskData of the run's test split
    ablation: str
    budget_bytes: int
    chunk: int  # prompts per masked forward that fit the budget (0: not even one)
    memory_note: str
    view: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _page: str | None = None

    # ---- set-up ------------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, folder: str | Path, *, max_memory: str | int | None = None,
             device_map: str | dict[str, Any] | None = None) -> Explorer:
        """Load RUN_DIR's summary, its model and its test prompts (as the run built them), and plan memory."""
        from acdc.export.report import load_summary
        from acdc.export.view import view_data
        from acdc.job import prepare

        folder = Path(folder)
        if not folder.is_dir():
            raise InputError(f"{folder} is not a folder; give a run folder written by `acdc run`")
        summary = load_summary(folder)
        test = summary.get("data", {}).get("test") if isinstance(summary.get("data"), dict) else None
        if not isinstance(test, dict) or not isinstance(summary.get("model"), str):
            raise InputError(f"{folder / 'summary.json'} does not say which model and test prompts the run used")
        task = _task_source(folder, summary)
        prep = prepare(task, summary["model"], splits=("test",), n=_int(test.get("n")), seed=_int(summary.get("seed")),
                       counterfactual=test.get("counterfactual"), dataset=test.get("dataset"),
                       ablation=summary.get("ablation"), device_map=device_map)
        data = prep.data["test"]
        budget = _budget(max_memory)
        chunk, note = _plan_memory(prep.model, data, prep.graph, prep.ablation, budget)
        ex = cls(folder, summary, prep.model, prep.graph, data, prep.ablation, budget, chunk, note,
                 view=view_data(summary, folder))
        ex._check_against_run()
        return ex

    def _check_against_run(self) -> None:
        """Compare the rebuilt prompts' M(full) and M(empty) with the run's record; a mismatch becomes a note."""
        base = self.summary.get("pareto", {}).get("baseline") if isinstance(self.summary.get("pareto"), dict) else None
        if self.chunk == 0 or not isinstance(base, dict):
            return
        ev = self._evaluate_mask(torch.zeros_like(self.graph.valid))
        for key, now in (("full", ev["full"]), ("empty", ev["empty"])):
            then = base.get(key)
            if isinstance(then, (int, float)) and not math.isclose(now, then, rel_tol=1e-4, abs_tol=1e-5):
                self.notes.append(f"the test prompts rebuilt here give M({key}) = {now:.6g}, the run recorded "
                                  f"{then:.6g}: numbers here may differ from the report's")

    # ---- pages and API -----------------------------------------------------------------------------------------
    def page(self) -> str:
        if self._page is None:
            from acdc.export.report import render_report

            self._page = render_report(self.summary, self.folder, live=True, view=self.view)
        return self._page

    def info(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "task": self.summary.get("task"), "model": self.summary.get("model"),
                "n_prompts": len(self.data), "tokens": int(self.data.clean.shape[1]), "ablation": self.ablation,
                "metric": self.data.description, "edges_total": self.graph.n_edges, "memory": self.memory_note,
                "notes": list(self.notes)}

    def evaluate(self, payload: Any) -> dict[str, Any]:
        """The exact numbers of the circuit a request describes (see the module docstring)."""
        req = self._request(payload, "evaluate")
        t0 = time.perf_counter()
        out = self._evaluate_mask(req["mask"])
        out.update({"edges": int(req["mask"].sum()), "n_prompts": len(self.data),
                    "ablated_nodes": req["ablate_nodes"]})
        out["prompt"] = self._top_predictions(req["mask"], req["prompt"])
        out["seconds"] = time.perf_counter() - t0
        return out

    def save(self, payload: Any) -> dict[str, Any]:
        """Write the request's circuit as ``circuits/edited/<name>.json`` (atomically; never over a file)."""
        req = self._request(payload, "save")
        name = req["name"]
        path = self.folder / "circuits" / "edited" / f"{name}.json"
        if path.exists():
            raise InputError(f"circuits/edited/{name}.json exists already; choose another name")
        circuit = Circuit(self.graph, req["mask"], meta={
            "method": "edited", "task": self.summary.get("task"), "model": self.summary.get("model"),
            "ablated_nodes": req["ablate_nodes"], "saved_by": "acdc explore"})
        circuit.save(path)
        return {"file": f"circuits/edited/{name}.json", "edges": circuit.n_edges}

    def circuit_files(self) -> list[str]:
        root = self.folder / "circuits"
        files = sorted(root.glob("*.json")) + sorted((root / "edited").glob("*.json"))
        return [p.relative_to(self.folder).as_posix() for p in files if p.is_file()]

    def load_circuit(self, file: Any) -> dict[str, Any]:
        """One circuit file of the run folder, as edge names (for the page to reload)."""
        if not isinstance(file, str) or not file or file not in self.circuit_files():
            raise InputError(f"no circuit file {file!r} in this run folder; GET /api/circuits lists them")
        c = Circuit.load(self.folder / file, self.graph)
        return {"file": file, "edges": c.edge_names(), "n_edges": c.n_edges,
                "meta": {k: v for k, v in c.meta.items() if isinstance(v, (str, int, float, bool))}}

    # ---- internals -----------------------------------------------------------------------------------------------
    def _request(self, payload: Any, kind: str) -> dict[str, Any]:
        """A request's fields checked: a mask (edges minus ablated nodes' edges), node names, prompt index, name."""
        if not isinstance(payload, dict):
            raise InputError("the request body must be a JSON object")
        unknown = sorted(set(payload) - _FIELDS[kind])
        if unknown:
            raise InputError(f"unknown field(s) {', '.join(map(repr, unknown))}; expected "
                             f"{', '.join(sorted(_FIELDS[kind]))}")
        edges = payload.get("edges")
        if not isinstance(edges, list) or not all(isinstance(e, str) for e in edges):
            raise InputError("'edges' must be a list of edge names like 'a0.h1->m1'")
        g = self.graph
        mask = torch.zeros_like(g.valid)
        for e in edges:
            mask[g.edge_index(e)] = True
        nodes = payload.get("ablate_nodes", [])
        if not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes):
            raise InputError("'ablate_nodes' must be a list of node names like 'a0.h1' or 'm1'")
        owners = [Graph.reader_owner(r) for r in g.dst_names]
        known = set(g.src_names) | set(owners)
        bad = [n for n in nodes if n not in known]
        if bad:
            raise InputError(f"unknown node(s) {', '.join(map(repr, bad[:5]))}: nodes are 'input', 'a{{L}}.h{{H}}', "
                             "'m{L}', 'logits' (and 'a{L}.g{G}' with grouped key/value heads)")
        for n in nodes:
            if n in g.src_index:
                mask[g.src_index[n]] = False
            cols = [i for i, o in enumerate(owners) if o == n]
            mask[:, cols] = False
        prompt = payload.get("prompt", 0)
        if not isinstance(prompt, int) or isinstance(prompt, bool) or not 0 <= prompt < len(self.data):
            raise InputError(f"'prompt' must be a prompt number from 0 to {len(self.data) - 1}")
        out: dict[str, Any] = {"mask": mask & g.valid, "ablate_nodes": sorted(set(nodes)), "prompt": prompt}
        if kind == "save":
            name = payload.get("name")
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                raise InputError("'name' must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or "
                                 "digit")
            out["name"] = name.removesuffix(".json")
        return out

    def _evaluate_mask(self, mask: torch.Tensor) -> dict[str, Any]:
        from acdc.evaluate import circuit_numbers, evaluate_masks

        if self.chunk == 0:
            raise OverBudget(f"evaluation refused: {self.memory_note}")
        n, p = self.data.clean.shape
        per_prompt = 16 * p * int(getattr(self.model.cfg, "d_vocab", 50257))  # evaluate_masks' chunking rule
        max_elements = min(2**27, self.chunk * per_prompt) if self.chunk < n else 2**27
        with self.lock, torch.no_grad():
            ev = evaluate_masks(self.model, self.graph, self.data, [mask], ablation=self.ablation,
                                max_elements=max_elements)
        num = circuit_numbers(ev)[0]
        return {"faithfulness": _finite(num["faithfulness"]), "kl": _finite(num["kl"]),
                "metric": _finite(num["metric"]), "full": num["full"], "empty": num["empty"]}

    def _top_predictions(self, mask: torch.Tensor, i: int) -> dict[str, Any]:
        """The circuit's and the full model's most likely next tokens at prompt ``i``'s last metric position."""
        from acdc.patching import masked_forward

        d = self.data
        clean = d.clean[i : i + 1]
        corrupt: Any = d.corrupt[i : i + 1] if self.ablation == "patch" else (d.corrupt if self.ablation == "mean"
                                                                                else None)
        pos = int(d.positions[i].nonzero().flatten()[-1])
        with self.lock, torch.no_grad():
            logits = masked_forward(self.model, self.graph, clean, corrupt, mask.float(),
                                    ablation=self.ablation)  # type: ignore[arg-type]
            full = self.model(clean)
        tok = getattr(self.model, "tokenizer", None)

        def top(x: torch.Tensor) -> list[dict[str, Any]]:
            probs = torch.softmax(x.double(), -1)
            p, ids = probs.topk(TOP_K)
            return [{"token": _decode(tok, int(t)), "id": int(t), "p": float(q)} for q, t in zip(p, ids, strict=True)]

        length = int(d.lengths[i]) if d.lengths is not None else clean.shape[1]
        text = d.texts[i][0] if d.texts else " ".join(_decode(tok, int(t)) for t in clean[0, :length])
        return {"index": i, "text": text, "position": pos, "circuit": top(logits[0, pos]), "full": top(full[0, pos])}


# ---- the web application ------------------------------------------------------------------------------------------
def make_app(ex: Explorer, *, loopback: bool = True) -> Any:
    """The Flask application serving ``ex``. ``loopback``: refuse requests whose Host header is not a loopback name
    (a page elsewhere cannot reach the server by DNS rebinding)."""
    from flask import Flask, Response, request
    from werkzeug.exceptions import HTTPException

    app = Flask("acdc.explore")
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES

    def reply(obj: Any, status: int = 200) -> Response:
        return Response(json.dumps(obj, allow_nan=False), status=status, mimetype="application/json",
                        headers={"Cache-Control": "no-store"})

    def error(message: str, status: int) -> Response:
        return reply({"error": " ".join(str(message).split())}, status)

    def body() -> Any:
        if not request.is_json:
            raise InputError("send the request body as JSON (Content-Type: application/json)")
        try:
            return json.loads(request.get_data(cache=False) or b"")
        except (ValueError, UnicodeDecodeError) as e:
            raise InputError(f"the request body is not valid JSON: {e}") from e

    @app.before_request
    def host_check() -> Response | None:
        host = (request.host or "").rsplit(":", 1)[0].strip("[]")
        if loopback and host not in ("127.0.0.1", "localhost", "::1"):
            return error(f"host {request.host!r} refused: this server answers only to its loopback address", 403)
        return None

    @app.get("/")
    def index() -> Response:
        return Response(ex.page(), mimetype="text/html", headers={"Cache-Control": "no-store"})

    @app.get("/api/info")
    def info() -> Response:
        return reply(ex.info())

    @app.post("/api/evaluate")
    def evaluate() -> Response:
        return reply(ex.evaluate(body()))

    @app.post("/api/save")
    def save() -> Response:
        return reply(ex.save(body()))

    @app.get("/api/circuits")
    def circuits() -> Response:
        return reply({"files": ex.circuit_files()})

    @app.get("/api/circuit")
    def circuit() -> Response:
        return reply(ex.load_circuit(request.args.get("file")))

    @app.errorhandler(InputError)
    def bad_input(e: InputError) -> Response:
        return error(str(e), 409 if "exists already" in str(e) else 400)

    @app.errorhandler(OverBudget)
    def over_budget(e: OverBudget) -> Response:
        return error(str(e), 507)

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException) -> Response:
        what = {404: f"no such page: {request.path}", 405: f"{request.method} is not allowed on {request.path}",
                413: f"request body over {MAX_REQUEST_BYTES // 2**20} MiB"}.get(e.code or 0, e.description or e.name)
        return error(what, e.code or 400)

    @app.errorhandler(Exception)
    def failure(e: Exception) -> Response:
        return error(f"internal error: {type(e).__name__}: {e}", 500)

    return app


def serve(ex: Explorer, host: str = "127.0.0.1", port: int = 0) -> Any:
    """A started werkzeug server for ``ex`` (``port`` 0: a free port); call ``serve_forever()`` or ``shutdown()``.
    Its address is ``server.host``/``server.port``."""
    from werkzeug.serving import make_server

    try:
        server = make_server(host, port, make_app(ex, loopback=is_loopback(host)), threaded=True)
    except OSError as e:
        raise InputError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    return server


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---- helpers --------------------------------------------------------------------------------------------------------
def _task_source(folder: Path, summary: dict[str, Any]) -> str:
    """The task as the run named it: its YAML file (from ``run.yaml``) when it still exists, else its name."""
    import yaml

    run = folder / "run.yaml"
    if run.is_file():
        try:
            info = yaml.safe_load(run.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            info = None
        path = info.get("task_file") if isinstance(info, dict) else None
        if isinstance(path, str) and Path(path).is_file():
            return path
    task = summary.get("task")
    if not isinstance(task, str) or not task:
        raise InputError(f"{folder / 'summary.json'} names no task")
    return task


def _budget(max_memory: str | int | None) -> int:
    from acdc.memory import parse_size

    if max_memory is not None:
        return parse_size(max_memory) if isinstance(max_memory, str) else int(max_memory)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(0.8 * int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    return 8 * 2**30


def _plan_memory(model: Any, data: Any, graph: Graph, ablation: str, budget: int) -> tuple[int, str]:
    """Prompts per pass of one evaluation (three masks: full, empty, the circuit) that fit ``budget``, and a line
    saying so; 0 when not even one prompt fits."""
    from acdc.memory import estimate, format_size, pick_batch_size

    n, p = data.clean.shape
    kw: dict[str, Any] = {"method": "exact", "seq_len": int(p), "exact_batch": 3, "n_writers": graph.n_src,
                          "ablation": ablation, "metric": data.metric, "n_prompts": int(n)}
    try:
        chunk = pick_batch_size(budget, model, max_batch=int(n), budget_name="the memory budget", **kw)
    except InputError as e:
        return 0, str(e)
    est = estimate(model, batch=chunk, **kw)
    return chunk, (f"{chunk} of {n} prompts per pass: estimated peak {format_size(est.total)} of a budget of "
                   f"{format_size(budget)}")


def _decode(tok: Any, i: int) -> str:
    if tok is None:
        return f"#{i}"
    try:
        return str(tok.decode([i]))
    except Exception:  # a tokenizer that cannot decode one id alone
        return f"#{i}"


def _int(x: Any) -> int | None:
    return int(x) if isinstance(x, int) and not isinstance(x, bool) else None


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None

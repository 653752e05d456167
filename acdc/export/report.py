"""The self-contained ``report.html`` of a run folder, built from its ``summary.json`` and images.

The page needs nothing but itself: styles are inlined, images are ``data:`` URIs, and the interactive circuit view
(acdc/export/view.py builds its data, ``assets/viewer.js`` draws it) is one inlined script reading one inlined JSON
block, so it opens from disk, from a mail attachment or from an archive years later, and asks the network for
nothing. Every string taken from the JSON is escaped: as HTML in the static sections, and inside the JSON block
(``<``, ``>`` and ``&`` as ``\\u`` escapes, so no string can close the script element); the script puts strings into the
page as text only. ``acdc explore`` serves the same page with ``live=True``.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

from acdc.errors import InputError
from acdc.export.view import view_data
from acdc.io import atomic_write_text, file_inside
from acdc.summary import RUN_FORMAT as SUMMARY_FORMAT

_ASSETS = Path(__file__).parent / "assets"

NA = "not available"
DEFAULT_THRESHOLDS = ("0.8", "0.9", "0.99")

_ABLATION_TEXT = {
    "patch": "edges outside the circuit carry the value they have on the counterfactual prompt",
    "mean": "edges outside the circuit carry their mean value over the reference prompts",
    "zero": "edges outside the circuit carry zero",
}


def write_report(folder: str | Path) -> Path:
    """Write ``folder/report.html`` from ``folder/summary.json`` and the images it names; returns its path.

    Raises `InputError` if ``summary.json`` is missing, not JSON, or not an ``acdc-run/1`` summary. Missing images,
    circuits or notes are shown as "not available".
    """
    folder = Path(folder)
    summary = load_summary(folder)
    return atomic_write_text(folder / "report.html", render_report(summary, folder))


def load_summary(folder: Path) -> dict[str, Any]:
    """The parsed ``summary.json`` of a run folder, checked to be an ``acdc-run/1`` object."""
    path = folder / "summary.json"
    if not path.is_file():
        raise InputError(f"no summary.json in {folder}: run `acdc run TASK` to make a run folder first")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} is not readable JSON ({exc}); re-run `acdc run` to rewrite it") from exc
    if not isinstance(summary, dict):
        raise InputError(f"{path} holds a JSON {type(summary).__name__}, expected an object")
    if summary.get("format") != SUMMARY_FORMAT:
        raise InputError(
            f"{path} has format {summary.get('format')!r}, expected {SUMMARY_FORMAT!r}; is this a run folder?"
        )
    return summary


def render_report(summary: dict[str, Any], folder: Path, *, live: bool = False,
                  view: dict[str, Any] | None = None) -> str:
    """The report page as a string; ``folder`` is where the image paths and circuit files named in ``summary`` are
    resolved. ``live``: the page of ``acdc explore``, whose view edits circuits and asks its server to evaluate
    them. ``view``: the view's data when the caller has built it already (:func:`acdc.export.view.view_data`)."""
    pareto = _dict(summary.get("pareto"))
    circuits = [c for c in _list(summary.get("circuits")) if isinstance(c, dict)]
    headline = summary.get("headline")
    circuits.sort(key=lambda c: c.get("method") != headline)  # stable: headline first, others in given order
    task = summary.get("task", "?")
    if view is None:
        view = view_data(summary, folder)
    sections = [
        ("pareto", "Pareto plot", _pareto_section(summary, pareto, folder)),
        ("explore", "Explore the circuits", _explore_section(view, live)),
        ("methods", "Methods", _methods_section(summary, pareto)),
        ("frontier", "Frontier", _frontier_section(pareto)),
        ("circuits", "Circuits", _circuits_section(circuits, headline, summary, folder)),
        ("curves", "All curve points", _curves_section(pareto)),
        ("run", "Run", _run_section(summary)),
    ]
    nav = "".join(f'<a href="#{sid}">{_e(title)}</a>' for sid, title, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{_e(title)}</h2>{content}</section>' for sid, title, content in sections)
    version = _dict(summary.get("versions")).get("acdc", "")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'  # stops the browser asking the disk for favicon.ico
        f"<title>acdc report: {_e(task)} on {_e(summary.get('model', '?'))}</title>"
        f"<style>{_CSS}{_asset('viewer.css')}</style></head><body><main>"
        f"{_header(summary, pareto, circuits)}<nav>{nav}</nav>{body}"
        f"<footer>Written by acdc{' ' + _e(version) if version else ''} from <code>summary.json</code>. "
        "This page is self-contained: it loads nothing from the network or from disk.</footer>"
        f"</main>{_viewer_script() if view is not None else ''}</body></html>\n"
    )


# ---------------------------------------------------------------------------------------------------- sections


def _header(summary: dict[str, Any], pareto: dict[str, Any], circuits: list[dict[str, Any]]) -> str:
    task, model = summary.get("task", "?"), summary.get("model", "?")
    graph = _dict(summary.get("graph"))
    split = pareto.get("split", "test")
    n_prompts = pareto.get("n_prompts", _dict(_dict(summary.get("data")).get(split)).get("n"))
    ablation = summary.get("ablation", pareto.get("ablation", "?"))
    abl_text = _ABLATION_TEXT.get(str(ablation), "edges outside the circuit are ablated")
    desc = summary.get("task_description")
    parts = [
        f"<p>Automated circuit discovery on task <b>{_e(task)}</b>"
        + (f" ({_e(desc)})" if desc else "")
        + f" in model <b>{_e(model)}</b>. Each method ranks or selects the "
        + (
            f"{_num(graph.get('edges'))} edges of the model's computational graph ({_num(graph.get('writers'))} "
            f"writers, {_num(graph.get('readers'))} readers); "
            if graph
            else "edges of the model's computational graph; "
        )
        + f"circuits of growing size are then evaluated with <b>{_e(ablation)}</b> ablation: {_e(abl_text)}.</p>",
        f"<p>The metric M is <i>{_e(summary.get('metric', pareto.get('metric', '?')))}</i>. A circuit C is scored by "
        'its faithfulness <span class="formula">f(C) = (M(C) − M(empty)) / (M(full) − M(empty))</span> '
        f"on the held-out <b>{_e(split)}</b> split ({_num(n_prompts)} prompts): f = 1 means the circuit recovers "
        "the full model's behaviour, f = 0 means it does no better than the empty circuit. Intervals in brackets "
        f"are 95% bootstrap intervals over prompts ({_num(summary.get('bootstrap'))} resamples).</p>",
    ]
    notes = [n for n in _list(summary.get("notes")) if n not in (None, "")]
    if notes:
        items = "".join(f"<li>{_e(n)}</li>" for n in notes)
        parts.append(f'<div class="notes"><b>Notes</b><ul>{items}</ul></div>')
    head = next((c for c in circuits if c.get("method") == summary.get("headline")), None)
    base = _dict(summary.get("baseline"))
    cards = [
        ("Headline method", _e(summary.get("headline")) if summary.get("headline") else NA),
        ("Circuit edges", _num(head.get("edges")) + f" / {_num(graph.get('edges'))}" if head else NA),
        ("Faithfulness f", _num(head.get("f")) + _ci(head.get("f_ci")) if head else NA),
        ("M(full) · M(empty)", f"{_num(base.get('full'))} · {_num(base.get('empty'))}"),
    ]
    card_html = "".join(f'<div class="card"><div class="k">{k}</div><div class="v">{v}</div></div>' for k, v in cards)
    return (
        f'<header><div class="eyebrow">acdc run report</div><h1>{_e(task)} <span class="on">on</span> '
        f"{_e(model)}</h1>"
        f'<div class="sub">{_e(summary.get("created", ""))}</div></header>'
        f'<div class="cards">{card_html}</div><div class="about">{"".join(parts)}</div>'
    )


def _pareto_section(summary: dict[str, Any], pareto: dict[str, Any], folder: Path) -> str:
    images = _dict(summary.get("images"))
    img = _image(folder, images.get("pareto_svg"), images.get("pareto_png"), "Pareto plot: circuit size against f")
    return (
        f"<figure>{img}<figcaption>Faithfulness f against circuit size (edges kept, of "
        f"{_num(pareto.get('n_edges_total'))}) for each method on the "
        f"{_e(pareto.get('split', 'test'))} split.</figcaption></figure>"
    )


def _explore_section(view: dict[str, Any] | None, live: bool) -> str:
    if view is None:
        return _na("Interactive view", "summary.json does not describe the model's graph")
    intro = (
        '<p class="caption">The circuit at any point of a method\'s curve: move its slider (each point shows its exact '
        "f and 95% interval from the sweep). Layers are rows from the input (bottom) to the logits (top); a layer's "
        "heads sit side by side with its MLP to the right. Hover or click a node for its incoming and outgoing edges "
        "with their scores; click an edge for its score under every method and which chosen circuits contain it. "
        "Drag to pan, scroll to zoom, click a layer's label to collapse its heads into one node."
        + (" <b>Live</b>: “Edit (live)” edits the circuit and evaluates it exactly on the run's test prompts."
           if live else " <code>acdc explore RUN_DIR</code> serves this view with the model loaded, to edit circuits "
           "and evaluate them exactly.")
        + "</p>"
    )
    parts = [
        intro,
        f'<div id="acdc-view" class="view" data-live="{1 if live else 0}"><p class="na">This view needs '
        "JavaScript; the sections below show the same run without it.</p>"
        '<svg class="v-svg" id="acdc-svg" role="img" aria-label="circuit graph"></svg></div>',
        f'<script type="application/json" id="acdc-view-data">{_script_json(view)}</script>',
    ]
    rows = [[_e(o["a"]), _e(o["b"]), _num(o["edges_a"]), _num(o["edges_b"]), _num(o["shared"]), _num(o["jaccard"])]
            for o in _list(view.get("overlaps"))]
    parts.append("<h3>Agreement of the chosen circuits</h3>")
    if rows:
        parts.append(_table(["Method A", "Method B", "Edges A", "Edges B", "Shared", "Jaccard"], rows,
                            numeric={2, 3, 4, 5}, cls="narrow overlaps"))
        parts.append('<p class="caption">Shared: edges in both chosen circuits; Jaccard: shared over the edges in '
                     "either. The view's “Agreement” button draws the union, coloured by how many methods include "
                     "each edge.</p>")
    else:
        parts.append(_na("Pairwise overlaps", "fewer than two chosen circuits could be read"))
    omitted = [str(o) for o in _list(view.get("omitted"))]
    n_table = len(_list(_dict(view.get("edges")).get("src")))
    limits = _dict(view.get("limits"))
    parts.append(
        f'<div class="notes left-out"><b>What this page holds</b>: {_count(n_table)} of the graph\'s '
        f"{_count(view.get('n_edges_total'))} edges (those of the embedded circuits); each ranking up to its chosen "
        f"circuit or {_count(limits.get('order_edges'))} edges, whichever is larger; no circuit of more than "
        f"{_count(limits.get('max_circuit_edges'))} edges."
        + (f"<ul>{''.join(f'<li>{_e(o)}</li>' for o in omitted)}</ul>" if omitted else " Nothing else was left out.")
        + "</div>"
    )
    return "".join(parts)


def _count(x: Any) -> str:
    """An integer with thousands separators (``70,651``), anything else as :func:`_num` shows it."""
    return f"{x:,}" if isinstance(x, int) and not isinstance(x, bool) else _num(x)


def _script_json(obj: Any) -> str:
    """JSON for a ``<script type="application/json">`` block: ``<``, ``>`` and ``&`` escaped so that no string in it
    can end the element or open a comment."""
    text = json.dumps(obj, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _asset(name: str) -> str:
    return (_ASSETS / name).read_text(encoding="utf-8")


def _viewer_script() -> str:
    return f"<script>{_asset('viewer.js')}</script>"


def _methods_section(summary: dict[str, Any], pareto: dict[str, Any]) -> str:
    rows_in = [r for r in _list(pareto.get("summary")) if isinstance(r, dict)]
    if not rows_in:
        return _na("Method summary", "the run has no per-method summary")
    keys: list[str] = []
    for r in rows_in:
        for k in _dict(r.get("edges_for")):
            if k not in keys:
                keys.append(k)
    keys = sorted(keys or list(DEFAULT_THRESHOLDS), key=_threshold_order)
    times = _dict(_dict(summary.get("timings")).get("methods"))
    total = pareto.get("n_edges_total")
    headers = ["Method", "CPR ↑", "CMD ↓"] + [f"Edges for f ≥ {_e(k)}" for k in keys] + ["Time"]
    rows = []
    for r in rows_in:
        edges_for = _dict(r.get("edges_for"))
        cells = [_method_cell(r.get("method"), summary.get("headline")), _num(r.get("cpr")), _num(r.get("cmd"))]
        for k in keys:
            if k not in edges_for:
                cells.append(_dash())
            elif edges_for[k] is None:
                cells.append('<span class="muted">not reached</span>')
            else:
                cells.append(_num(edges_for[k]) + _share(edges_for[k], total))
        cells.append(_seconds(times.get(str(r.get("method")))))
        rows.append(cells)
    return (
        _table(headers, rows, numeric=set(range(1, len(headers))))
        + '<p class="caption">CPR: area under the curve of f against the fraction of edges kept (higher is '
        "better). CMD: area between that curve and f = 1 (lower is better). Edges for f ≥ t: the smallest "
        "circuit on the curve whose f reaches t, with its share of all edges. "
        "Time: the method's own wall-clock time.</p>"
    )


def _frontier_section(pareto: dict[str, Any]) -> str:
    points = [p for p in _list(pareto.get("frontier")) if isinstance(p, dict)]
    if not points:
        return _na("Frontier", "the run has no frontier points")
    rows = [[_e(p.get("method", "?")), _num(p.get("edges")), _num(p.get("f"))] for p in points]
    return (
        '<p class="caption">Points that no other point dominates: no method has a circuit at most this size '
        "with a higher f.</p>" + _table(["Method", "Edges", "f"], rows, numeric={1, 2}, cls="narrow")
    )


def _circuits_section(circuits: list[dict[str, Any]], headline: Any, summary: dict[str, Any], folder: Path) -> str:
    if not circuits:
        return _na("Circuits", "no method chose a circuit in this run")
    images = _dict(summary.get("images"))
    out = []
    for i, c in enumerate(circuits):
        method = c.get("method", "?")
        svg, png = c.get("svg"), c.get("png")
        if method == headline and not _exists(folder, svg) and not _exists(folder, png):
            svg, png = images.get("circuit_svg"), images.get("circuit_png")
        body = _circuit_body(c, _image(folder, svg, png, f"Circuit chosen for {method}"))
        anchor = f"circuit-{i}-{_slug(method)}"
        if method == headline:
            out.append(
                f'<article class="circuit headline" id="{anchor}"><h3>{_e(method)} '
                f'<span class="badge">headline</span></h3>{body}</article>'
            )
        else:
            out.append(
                f'<details class="circuit" id="{anchor}"><summary><b>{_e(method)}</b> · '
                f"{_num(c.get('edges'))} edges · f = {_num(c.get('f'))}</summary>{body}</details>"
            )
    return "".join(out)


def _circuit_body(c: dict[str, Any], image: str) -> str:
    facts = [
        ("Edges", _num(c.get("edges"))),
        ("Nodes", _num(c.get("nodes"))),
        ("f", _num(c.get("f")) + _ci(c.get("f_ci"))),
        ("KL", _num(c.get("kl")) + _ci(c.get("kl_ci"))),
        ("How chosen", _e(c["how"]) if c.get("how") else NA),
        ("Circuit file", f"<code>{_e(c['json'])}</code>" if c.get("json") else NA),
    ]
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    top = [e for e in _list(c.get("top_edges")) if isinstance(e, (list, tuple)) and len(e) >= 2]
    if top:
        rows = [[str(i + 1), f"<code>{_e(e[0])}</code>", _num(e[1], signed=True)] for i, e in enumerate(top)]
        edges = _table(["#", "Edge", "Score"], rows, numeric={0, 2}, cls="narrow")
    else:
        edges = _na("Top edges")
    return f'<div class="circuit-grid"><div><dl>{dl}</dl><h4>Top edges</h4>{edges}</div><figure>{image}</figure></div>'


def _curves_section(pareto: dict[str, Any]) -> str:
    curves = [c for c in _list(pareto.get("curves")) if isinstance(c, dict)]
    if not curves:
        return _na("Curves", "the run has no curves")
    headers = ["Edges", "Fraction", "f", "f 95% CI", "KL", "KL 95% CI", "Label"]
    parts = []
    for c in curves:
        pts = [p for p in _list(c.get("points")) if isinstance(p, dict)]
        rows = [
            [
                _num(p.get("edges")),
                _num(p.get("fraction")),
                _num(p.get("f")),
                _ci(p.get("f_ci"), bare=True),
                _num(p.get("kl")),
                _ci(p.get("kl_ci"), bare=True),
                _e(p.get("label", "")),
            ]
            for p in pts
        ]
        table = _table(headers, rows, numeric={0, 1, 2, 3, 4, 5}, cls="narrow") if rows else _na("Points")
        parts.append(
            f'<h4>{_e(c.get("method", "?"))} <span class="muted">({_e(c.get("kind", "?"))}, '
            f"{len(pts)} points)</span></h4>{table}"
        )
    return (
        f"<details><summary>Show the {len(curves)} curves point by point "
        f"({_e(pareto.get('split', 'test'))} split)</summary>{''.join(parts)}</details>"
    )


def _run_section(summary: dict[str, Any]) -> str:
    graph = _dict(summary.get("graph"))
    graph_text = (
        f"{_num(graph.get('edges'))} edges between {_num(graph.get('writers'))} writers and "
        f"{_num(graph.get('readers'))} readers; {_num(graph.get('n_layers'))} layers × {_num(graph.get('n_heads'))} "
        "heads"
        if graph
        else NA
    )
    facts = [
        ("Task", _e(summary.get("task", NA))),
        ("Description", _e(summary.get("task_description") or NA)),
        ("Model", f"<code>{_e(summary.get('model', NA))}</code>"),
        ("Graph", graph_text),
        ("Metric", _e(summary.get("metric", NA))),
        ("Ablation", _e(summary.get("ablation", NA))),
        ("Seed", _num(summary.get("seed"))),
        ("Bootstrap resamples", _num(summary.get("bootstrap"))),
        ("Command", f"<code>{_e(summary['command'])}</code>" if summary.get("command") else NA),
        ("Created", _e(summary.get("created", NA))),
    ]
    base = _dict(summary.get("baseline"))
    if base:
        facts.append(("Metric baselines", " · ".join(f"M({_e(k)}) = {_num(v)}" for k, v in base.items())))
    out = [f'<dl class="facts">{"".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)}</dl>']

    out.append("<h3>Data</h3>" + _data_table(_dict(summary.get("data"))))

    timings = _dict(summary.get("timings"))
    rows = [[_e(k.removesuffix("_s")), _seconds(v)] for k, v in timings.items() if k != "methods"]
    rows += [[f"method {_e(k)}", _seconds(v)] for k, v in _dict(timings.get("methods")).items()]
    times = _table(["Stage", "Time"], rows, numeric={1}, cls="narrow") if rows else _na("Timings")
    versions = _dict(summary.get("versions"))
    vrows = [[_e(k), f"<code>{_e(v)}</code>"] for k, v in versions.items()]
    vers = _table(["Package", "Version"], vrows, cls="narrow") if vrows else _na("Versions")
    out.append(f'<div class="two"><div><h3>Timings</h3>{times}</div><div><h3>Versions</h3>{vers}</div></div>')
    return "".join(out)


def _data_table(data: dict[str, Any]) -> str:
    splits = [(name, d) for name, d in data.items() if isinstance(d, dict)]
    if not splits:
        return _na("Data description")
    order = ["split", "n", "seed", "counterfactual", "dataset", "tokens"]
    keys = [k for k in order if any(k in d for _, d in splits)]
    keys += sorted({k for _, d in splits for k in d} - set(order))
    rows = [[_e(name)] + [_num(d[k]) if k in d else _dash() for k in keys] for name, d in splits]
    numeric = {i + 1 for i, k in enumerate(keys) if all(_is_num(d.get(k)) for _, d in splits if k in d)}
    return _table(["Role"] + [_e(k) for k in keys], rows, numeric=numeric)


# ---------------------------------------------------------------------------------------------------- pieces


def _image(folder: Path, svg: Any, png: Any, alt: str) -> str:
    """An ``<img>`` with the image inlined as a data URI (SVG preferred, PNG as fallback), or a "not available"."""
    for name in (svg, png):
        path = file_inside(folder, name)
        if path is None:
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        mime = "image/png" if data.startswith(b"\x89PNG") else "image/svg+xml"
        uri = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
        return f'<img src="{uri}" alt="{_e(alt)}">'
    wanted = ", ".join(str(n) for n in (svg, png) if n)
    return _na("Image", f"missing {wanted}" if wanted else "summary.json names no image file")


def _exists(folder: Path, name: Any) -> bool:
    return file_inside(folder, name) is not None


def _table(headers: list[str], rows: list[list[str]], numeric: Collection[int] = (), cls: str = "") -> str:
    """A table from header texts and cells that are already HTML; ``numeric`` columns are right-aligned."""

    def cell(tag: str, i: int, content: str) -> str:
        return f'<{tag} class="num">{content}</{tag}>' if i in numeric else f"<{tag}>{content}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(cell("td", i, c) for i, c in enumerate(r)) + "</tr>" for r in rows)
    table = f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
    return f'<div class="table-wrap">{table}</div>'


def _method_cell(method: Any, headline: Any) -> str:
    badge = ' <span class="badge">headline</span>' if method is not None and method == headline else ""
    return f"<b>{_e(method if method is not None else '?')}</b>{badge}"


def _na(what: str, why: str = "") -> str:
    """A muted "<what> not available[: why]." paragraph."""
    return f'<p class="na">{_e(what)} {NA}{": " + _e(why) if why else ""}.</p>'


def _dash() -> str:
    return '<span class="muted" title="not available">—</span>'


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _num(x: Any, digits: int = 3, signed: bool = False) -> str:
    """Integers as they are, floats to ``digits`` decimals; None as a dash; anything else escaped."""
    if x is None:
        return _dash()
    if not _is_num(x):
        return _e(x)
    if isinstance(x, int):
        return f"{x:+d}" if signed else str(x)
    if not math.isfinite(x):
        return "NaN" if math.isnan(x) else ("∞" if x > 0 else "−∞")
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _ci(ci: Any, bare: bool = False) -> str:
    """`` [lo, hi]`` of a two-number interval, muted; empty (or a dash when ``bare``) if there is none."""
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_is_num(v) for v in ci):
        text = f"[{_num(ci[0])}, {_num(ci[1])}]"
        return text if bare else f' <span class="ci">{text}</span>'
    return _dash() if bare else ""


def _share(edges: Any, total: Any) -> str:
    if _is_num(edges) and _is_num(total) and total > 0:
        return f' <span class="ci">({100 * edges / total:.1f}%)</span>'
    return ""


def _seconds(x: Any) -> str:
    if not _is_num(x) or not math.isfinite(x):
        return _dash()
    if x >= 120:
        return f"{int(x // 60)} min {x % 60:.0f} s"
    return f"{x:.1f} s" if x >= 10 else f"{x:.2f} s"


def _threshold_order(key: str) -> tuple[float, str]:
    try:
        return (float(key), key)
    except ValueError:
        return (math.inf, key)


def _slug(x: Any) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(x).lower()).strip("-") or "method"


def _dict(x: Any) -> dict[str, Any]:
    return x if isinstance(x, dict) else {}


def _list(x: Any) -> list[Any]:
    return x if isinstance(x, list) else []


_CSS = """
:root{--fg:#1d2330;--muted:#6b7385;--line:#e3e6ec;--soft:#f6f7f9;--accent:#2f5fd0;--accent-soft:#e9effc;
--warn:#fff6e0;--warn-line:#f0d48a}
*{box-sizing:border-box}
html{background:#fff;color:var(--fg);font:15px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",
"DejaVu Sans",Arial,sans-serif;-webkit-text-size-adjust:100%}
body{margin:0}
main{max-width:1120px;margin:0 auto;padding:32px 28px 48px}
header{border-bottom:1px solid var(--line);padding-bottom:14px;margin-bottom:18px}
.eyebrow{text-transform:uppercase;letter-spacing:.08em;font-size:12px;color:var(--accent);font-weight:600}
h1{font-size:30px;line-height:1.2;margin:4px 0 2px;font-weight:650}
h1 .on{color:var(--muted);font-weight:400}
.sub{color:var(--muted);font-size:13px}
h2{font-size:20px;margin:0 0 12px;padding-bottom:6px;border-bottom:2px solid var(--fg);display:inline-block}
h3{font-size:16px;margin:22px 0 8px}
h4{font-size:14px;margin:18px 0 6px}
section{margin-top:40px}
p{margin:0 0 10px}
code{font:13px/1.4 ui-monospace,"SFMono-Regular",Menlo,Consolas,"DejaVu Sans Mono",monospace;
background:var(--soft);border:1px solid var(--line);border-radius:4px;padding:0 4px;word-break:break-word}
.cards{display:grid;grid-template-columns:repeat(4,1fr);gap:12px;margin:0 0 18px}
.card{border:1px solid var(--line);border-radius:8px;padding:10px 14px;background:var(--soft)}
.card .k{font-size:13px;color:var(--muted)}
.card .v{font-size:20px;font-weight:600;font-variant-numeric:tabular-nums;margin-top:2px}
.card .v .ci{font-size:13px;font-weight:400}
.about{max-width:900px}
.formula{white-space:nowrap;background:var(--soft);border:1px solid var(--line);padding:0 6px;border-radius:4px}
.notes{background:var(--warn);border:1px solid var(--warn-line);border-radius:8px;padding:10px 14px;margin:12px 0}
.notes ul{margin:4px 0 0;padding-left:20px}
nav{position:sticky;top:0;z-index:1;background:rgba(255,255,255,.96);border-bottom:1px solid var(--line);
padding:8px 0;margin-top:18px;display:flex;gap:18px;flex-wrap:wrap;font-size:14px}
nav a{color:var(--accent);text-decoration:none}
nav a:hover{text-decoration:underline}
figure{margin:0}
figure img{display:block;max-width:100%;height:auto;border:1px solid var(--line);border-radius:8px;background:#fff;
padding:8px}
figcaption,.caption{color:var(--muted);font-size:13px;margin-top:8px;max-width:900px}
.table-wrap{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:14px;font-variant-numeric:tabular-nums}
table.narrow{width:auto;min-width:320px}
th,td{padding:6px 12px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{background:var(--soft);font-weight:600;font-size:13px;color:#3b4354;white-space:nowrap}
tbody tr:nth-child(even){background:#fbfbfc}
tbody tr:hover{background:var(--accent-soft)}
.num{text-align:right;white-space:nowrap}
.muted,.ci{color:var(--muted)}
h3 .muted,h4 .muted{font-weight:400}
.na{color:var(--muted);font-style:italic}
.badge{display:inline-block;font-size:11px;font-weight:600;letter-spacing:.04em;text-transform:uppercase;
color:var(--accent);background:var(--accent-soft);border-radius:10px;padding:1px 8px;vertical-align:middle}
.circuit{border:1px solid var(--line);border-radius:10px;padding:14px 18px;margin:0 0 14px}
.circuit.headline{border-color:var(--accent);box-shadow:0 0 0 3px var(--accent-soft)}
.circuit h3{margin:0 0 10px}
.circuit-grid{display:grid;grid-template-columns:minmax(280px,2fr) 3fr;gap:24px;align-items:start;margin-top:10px}
.circuit-grid figure img{margin:0 auto}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;margin:0}
dt{color:var(--muted);font-size:13px;padding-top:1px}
dd{margin:0;font-variant-numeric:tabular-nums}
dl.facts{max-width:900px}
details>summary{cursor:pointer;font-size:15px;padding:2px 0}
details[open]>summary{margin-bottom:6px}
section>details{border:1px solid var(--line);border-radius:10px;padding:12px 18px}
.two{display:grid;grid-template-columns:1fr 1fr;gap:24px}
footer{margin-top:48px;padding-top:12px;border-top:1px solid var(--line);color:var(--muted);font-size:12px}
@media (max-width:800px){.cards,.two,.circuit-grid{grid-template-columns:1fr}main{padding:18px}}
@media print{nav{display:none}details{display:block}section{break-inside:avoid-page}}
"""

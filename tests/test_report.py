"""report.html: self-contained (only data: URIs and #anchors), images inlined byte for byte, numbers and names from
summary.json in the tables, everything escaped, missing pieces shown as "not available", bad input refused."""

from __future__ import annotations

import base64
import copy
import json
import struct
import zlib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from acdc.errors import InputError
from acdc.export.report import write_report

EVIL = "<script>alert('x')</script>"

SVG = (
    b'<svg xmlns="http://www.w3.org/2000/svg" width="120" height="60" viewBox="0 0 120 60">'
    b'<rect x="4" y="4" width="112" height="52" fill="#dde6f7" stroke="#2f5fd0"/>'
    b'<circle cx="60" cy="30" r="14" fill="#2f5fd0"/></svg>\n'
)


def tiny_png(width: int = 3, height: int = 2, rgb: tuple[int, int, int] = (40, 90, 200)) -> bytes:
    """A valid RGB PNG of one colour, written with zlib and struct."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def fake_summary() -> dict[str, Any]:
    """A small acdc-run/1 summary: two scored methods and one circuit method, one threshold never reached."""
    curves = [
        {
            "method": "eap-ig",
            "kind": "scores",
            "points": [
                {"edges": 3, "fraction": 0.0273, "f": 0.41, "f_ci": [0.35, 0.47], "kl": 2.1, "kl_ci": [1.9, 2.3],
                 "label": "n=3"},
                {"edges": 12, "fraction": 0.1091, "f": 0.93, "f_ci": [0.9, 0.95], "kl": 0.12, "kl_ci": [0.1, 0.14],
                 "label": "n=12"},
                {"edges": 110, "fraction": 1.0, "f": 1.0, "f_ci": None, "kl": 0.0, "kl_ci": None, "label": "all"},
            ],
        },
        {
            "method": "eap",
            "kind": "scores",
            "points": [
                {"edges": 5, "fraction": 0.0455, "f": 0.52, "f_ci": [0.47, 0.58], "kl": 1.4, "kl_ci": [1.2, 1.6],
                 "label": "n=5"},
                {"edges": 20, "fraction": 0.1818, "f": 0.86, "f_ci": [0.82, 0.9], "kl": 0.3, "kl_ci": [0.25, 0.36],
                 "label": "n=20"},
            ],
        },
        {
            "method": "edge-pruning",
            "kind": "circuits",
            "points": [{"edges": 17, "fraction": 0.1546, "f": 0.9123, "f_ci": [0.88, 0.94], "kl": 0.2,
                        "kl_ci": [0.17, 0.23], "label": "lambda=0.01"}],
        },
    ]  # fmt: skip
    pareto = {
        "format": "acdc-pareto/1", "task": "ioi", "model": "zoo:toy-ioi", "split": "test", "n_prompts": 200,
        "n_edges_total": 110, "metric": "logit(IO) - logit(S) at the last position", "ablation": "patch",
        "curves": curves,
        "frontier": [{"method": "eap-ig", "edges": 3, "f": 0.41}, {"method": "eap-ig", "edges": 12, "f": 0.93},
                     {"method": "eap-ig", "edges": 110, "f": 1.0}],
        "summary": [
            {"method": "eap-ig", "cpr": 0.8123, "cmd": 0.2211, "edges_for": {"0.8": 10, "0.9": 12, "0.99": None}},
            {"method": "eap", "cpr": 0.7341, "cmd": 0.3012, "edges_for": {"0.8": 18, "0.9": None, "0.99": None}},
            {"method": "edge-pruning", "cpr": None, "cmd": None, "edges_for": {"0.8": 17, "0.9": 17, "0.99": None}},
        ],
    }  # fmt: skip

    def circuit(method: str, edges: int, f: float, top: list[list[Any]]) -> dict[str, Any]:
        return {
            "method": method, "edges": edges, "nodes": edges // 2 + 1, "f": f, "f_ci": [f - 0.03, f + 0.02],
            "kl": 0.1234, "kl_ci": [0.1, 0.15], "how": "smallest circuit on the curve with f >= 0.9 on the train split",
            "json": f"circuits/{method}.json", "svg": f"circuits/{method}.svg", "png": f"circuits/{method}.png",
            "top_edges": top,
        }  # fmt: skip

    return {
        "format": "acdc-run/1",
        "task": "ioi",
        "task_description": "indirect object identification",
        "model": "zoo:toy-ioi",
        "graph": {"writers": 11, "readers": 27, "edges": 110, "n_layers": 2, "n_heads": 4},
        "data": {
            role: {"n": 200, "split": role, "seed": seed, "counterfactual": "abc", "dataset": "default", "tokens": 18}
            for role, seed in (("train", 0), ("test", 1))
        },
        "metric": "logit(IO) - logit(S) at the last position",
        "ablation": "patch",
        "seed": 0,
        "bootstrap": 1000,
        "created": "2026-11-21T05:00:00+00:00",
        "versions": {"acdc": "0.1.0", "torch": "2.13.0+cpu", "python": "3.11.9"},
        "command": "acdc run ioi --methods eap,eap-ig,edge-pruning",
        "timings": {
            "total_s": 95.2,
            "model_s": 60.1,
            "data_s": 0.4,
            "sweep_s": 3.2,
            "methods": {"eap": 0.6, "eap-ig": 1.1, "edge-pruning": 30.2},
        },
        "baseline": {"clean": 10.48, "counterfactual": -0.52, "full": 10.48, "empty": -0.52},
        "pareto": pareto,
        "circuits": [
            circuit("eap", 20, 0.86, [["a0.h1->a1.h2<q>", 1.5], ["input->a0.h1", 0.75]]),
            circuit("eap-ig", 12, 0.93, [["a1.h0->logits", -3.2], ["a0.h3->a1.h0<v>", 2.25]]),
            circuit("edge-pruning", 17, 0.9123, [["m0->logits", 0.5]]),
        ],
        "headline": "eap-ig",
        "images": {
            "pareto_svg": "pareto.svg",
            "pareto_png": "pareto.png",
            "circuit_svg": "circuit.svg",
            "circuit_png": "circuit.png",
        },
        "notes": ["acdc skipped: graph too large for the time budget"],
    }


def make_run_folder(folder: Path, summary: dict[str, Any] | None = None) -> Path:
    """A run folder with ``summary.json`` and real (tiny) images: every SVG distinct, every PNG distinct."""
    summary = fake_summary() if summary is None else summary
    (folder / "circuits").mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(summary, indent=1))
    (folder / "pareto.json").write_text(json.dumps(summary.get("pareto", {})))
    (folder / "pareto.svg").write_bytes(SVG.replace(b"#dde6f7", b"#f7e6dd"))
    (folder / "pareto.png").write_bytes(tiny_png(rgb=(200, 90, 40)))
    (folder / "circuit.svg").write_bytes(SVG)
    (folder / "circuit.png").write_bytes(tiny_png())
    for i, c in enumerate(summary.get("circuits") or []):
        (folder / c["json"]).write_text("{}")
        (folder / c["svg"]).write_bytes(SVG.replace(b'r="14"', f'r="{5 + i}"'.encode()))
        (folder / c["png"]).write_bytes(tiny_png(rgb=(i, 2 * i, 3 * i)))
    return folder


class _Page(HTMLParser):
    """Tags with their attributes, the text, and each table as rows of cell texts."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.tables: list[list[list[str]]] = []
        self.scripts: list[tuple[dict[str, str | None], str]] = []  # (attributes, content) of each <script>
        self._cell: list[str] | None = None
        self._script: dict[str, str | None] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._script = dict(attrs)
            self.scripts.append((self._script, ""))
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._script = None
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._script is not None:  # a script's source is not text a reader sees
            attrs, content = self.scripts[-1]
            self.scripts[-1] = (attrs, content + data)
            return
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)

    @property
    def all_text(self) -> str:
        return " ".join(" ".join(self.text).split())

    def view_data(self) -> dict[str, Any]:
        """The parsed JSON of the interactive view's data block."""
        blocks = [c for a, c in self.scripts if a.get("id") == "acdc-view-data"]
        assert len(blocks) == 1, f"expected one view data block, found {len(blocks)}"
        return json.loads(blocks[0])

    def imgs(self) -> list[str]:
        return [a.get("src") or "" for t, a in self.tags if t == "img"]

    def row(self, first_cell: str) -> list[str]:
        """The first table row whose first cell is ``first_cell`` (ignoring a trailing badge)."""
        for table in self.tables:
            for r in table:
                if r and r[0].removesuffix(" headline") == first_cell:
                    return [first_cell, *r[1:]]
        raise AssertionError(f"no table row starts with {first_cell!r}")


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def _decode(uri: str) -> tuple[str, bytes]:
    assert uri.startswith("data:") and ";base64," in uri, uri[:60]
    mime, payload = uri[5:].split(";base64,", 1)
    return mime, base64.b64decode(payload, validate=True)


@pytest.fixture
def run_folder(tmp_path: Path) -> Path:
    return make_run_folder(tmp_path / "run")


def test_report_references_nothing_outside_itself(run_folder: Path) -> None:
    out = write_report(run_folder)
    assert out == run_folder / "report.html"
    page = _parse(out)
    refs = [(t, k, v or "") for t, a in page.tags for k, v in a.items() if k in ("src", "href", "srcset", "poster")]
    assert refs, "expected at least the images and the navigation links"
    for tag, key, value in refs:
        assert value.startswith(("data:", "#")), f"<{tag} {key}={value[:60]!r}> points outside the page"
    assert not [t for t, _ in page.tags if t in ("iframe", "object", "embed", "base")]
    # Two scripts, both inline: the view's data (not executable) and the viewer; nothing in them loads anything.
    assert [a for a, _ in page.scripts] == [{"type": "application/json", "id": "acdc-view-data"}, {}]
    viewer = page.scripts[1][1]
    for word in ("fetch(", "XMLHttpRequest", "import(", "WebSocket", "http://", "https://"):
        assert word not in viewer or (word == "fetch(" and "LIVE" in viewer), word
    assert not [a for t, a in page.tags if t == "link" and a.get("rel") != "icon"]
    html_text = out.read_text()
    assert "@import" not in html_text and "url(" not in html_text
    # Every in-page link goes to an element that exists.
    ids = {a.get("id") for _, a in page.tags}
    assert all(v[1:] in ids for _, k, v in refs if k == "href" and v.startswith("#") and len(v) > 1)


def test_images_are_the_files_bytes_svg_first_png_as_fallback(run_folder: Path) -> None:
    (run_folder / "circuits" / "eap.svg").unlink()  # eap falls back to its PNG
    page = _parse(write_report(run_folder))
    decoded = [_decode(src) for src in page.imgs()]
    expected = [
        ("image/svg+xml", run_folder / "pareto.svg"),
        ("image/svg+xml", run_folder / "circuits" / "eap-ig.svg"),  # headline first
        ("image/png", run_folder / "circuits" / "eap.png"),
        ("image/svg+xml", run_folder / "circuits" / "edge-pruning.svg"),
    ]
    assert [m for m, _ in decoded] == [m for m, _ in expected]
    for (_, data), (_, path) in zip(decoded, expected, strict=True):
        assert data == path.read_bytes(), path


def test_headline_without_its_own_image_uses_the_run_circuit_image(run_folder: Path) -> None:
    for suffix in ("svg", "png"):
        (run_folder / "circuits" / f"eap-ig.{suffix}").unlink()
    srcs = _parse(write_report(run_folder)).imgs()
    assert _decode(srcs[1]) == ("image/svg+xml", (run_folder / "circuit.svg").read_bytes())


def test_tables_carry_the_numbers_of_the_summary(run_folder: Path) -> None:
    page = _parse(write_report(run_folder))
    # Methods: CPR, CMD, edges for f >= 0.8 / 0.9 / 0.99 (with share of 110 edges), time.
    assert page.row("eap-ig") == ["eap-ig", "0.812", "0.221", "10 (9.1%)", "12 (10.9%)", "not reached", "1.10 s"]
    assert page.row("eap") == ["eap", "0.734", "0.301", "18 (16.4%)", "not reached", "not reached", "0.60 s"]
    assert page.row("edge-pruning")[3:] == ["17 (15.5%)", "17 (15.5%)", "not reached", "30.2 s"]
    text = page.all_text
    # Headline circuit facts with intervals, the way it was chosen, its top edges.
    assert "0.930 [0.900, 0.950]" in text
    assert "0.123 [0.100, 0.150]" in text
    assert "smallest circuit on the curve with f >= 0.9 on the train split" in text
    assert page.row("1")[1:] == ["a1.h0->logits", "-3.200"]  # first top edge of the headline, signed
    assert "a0.h1->a1.h2<q>" in text
    # Frontier and the full curves (a null interval shows as a dash, not as 'None').
    assert any(r == ["eap-ig", "12", "0.930"] for t in page.tables for r in t)
    assert any(r == ["17", "0.155", "0.912", "[0.880, 0.940]", "0.200", "[0.170, 0.230]", "lambda=0.01"]
               for t in page.tables for r in t)  # fmt: skip
    assert any(r[:4] == ["110", "1.000", "1.000", "—"] for t in page.tables for r in t)
    assert "None" not in text and "null" not in text
    # Definition, metadata and notes.
    assert "f(C) = (M(C) − M(empty)) / (M(full) − M(empty))" in text
    assert "95% bootstrap intervals over prompts (1000 resamples)" in text
    for s in ("zoo:toy-ioi", "acdc run ioi --methods eap,eap-ig,edge-pruning", "2.13.0+cpu", "2026-11-21T05:00:00",
              "acdc skipped: graph too large for the time budget", "indirect object identification"):  # fmt: skip
        assert s in text, s
    assert page.row("test")[:5] == ["test", "test", "200", "1", "abc"]
    assert page.row("total") == ["total", "95.2 s"]


def test_strings_from_the_json_are_escaped(tmp_path: Path) -> None:
    summary = fake_summary()
    summary["circuits"][0]["method"] = EVIL
    summary["pareto"]["summary"][1]["method"] = EVIL
    summary["notes"] = [f"note {EVIL} & more"]
    summary["task"] = '"><img src=x>'
    summary["command"] = "acdc run 'a&b'"
    out = write_report(make_run_folder(tmp_path / "run", summary))
    raw = out.read_text()
    assert EVIL not in raw and "<img src=x" not in raw
    assert "&lt;script&gt;" in raw and "&amp; more" in raw
    page = _parse(out)
    assert len([t for t, _ in page.tags if t == "script"]) == 2  # the view's data and the viewer, nothing injected
    data_block = page.scripts[0][1]
    assert "<" not in data_block and ">" not in data_block and "&" not in data_block
    assert page.view_data()["task"] == '"><img src=x>'  # the JSON carries the string intact, escaped
    assert all(src.startswith("data:") for src in page.imgs())
    assert EVIL in page.all_text and f"note {EVIL} & more" in page.all_text and "acdc run 'a&b'" in page.all_text
    assert page.row(EVIL)[1] == "0.734"


def test_missing_images_circuits_and_notes_show_not_available(tmp_path: Path) -> None:
    summary = fake_summary()
    summary["circuits"] = []
    summary["notes"] = []
    summary["images"] = {"pareto_svg": "pareto.svg"}  # named, but deleted below; no PNG named
    folder = make_run_folder(tmp_path / "run", summary)
    (folder / "pareto.svg").unlink()
    page = _parse(write_report(folder))
    assert page.imgs() == []
    text = page.all_text
    assert "Image not available: missing pareto.svg." in text
    assert "Circuits not available" in text
    assert "Notes" not in text


def test_a_bare_summary_still_renders(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps({"format": "acdc-run/1", "circuits": None, "pareto": [1]}))
    text = _parse(write_report(folder)).all_text
    for what in ("Image", "Interactive view", "Method summary", "Frontier", "Circuits", "Curves", "Timings",
                 "Versions"):
        assert f"{what} not available" in text, what


def test_image_paths_outside_the_folder_are_not_inlined(tmp_path: Path) -> None:
    (tmp_path / "secret.svg").write_bytes(SVG)
    summary = copy.deepcopy(fake_summary())
    summary["images"] = {"pareto_svg": "../secret.svg", "pareto_png": str(tmp_path / "secret.svg")}
    page = _parse(write_report(make_run_folder(tmp_path / "run", summary)))
    assert len(page.imgs()) == 3  # the three circuits, no pareto plot
    assert "Image not available: missing ../secret.svg" in page.all_text


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no summary.json"),
        ("{not json", "not readable JSON"),
        ("[1, 2]", "JSON list, expected an object"),
        ('{"format": "acdc-pareto/1"}', "expected 'acdc-run/1'"),
        ("{}", "has format None"),
    ],
)
def test_bad_summary_raises_input_error(tmp_path: Path, content: str | None, message: str) -> None:
    if content is not None:
        (tmp_path / "summary.json").write_text(content)
    with pytest.raises(InputError, match=message) as info:
        write_report(tmp_path)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "report.html").exists()


def test_write_is_atomic_and_leaves_no_temp_files(run_folder: Path) -> None:
    before = {p.relative_to(run_folder) for p in run_folder.rglob("*")}
    (run_folder / "report.html").write_text("old")
    write_report(run_folder)
    first = (run_folder / "report.html").read_text()
    assert first.startswith("<!DOCTYPE html>") and first.rstrip().endswith("</html>")
    write_report(str(run_folder))  # str accepted; rewriting is deterministic
    assert (run_folder / "report.html").read_text() == first
    after = {p.relative_to(run_folder) for p in run_folder.rglob("*")}
    assert after == before | {Path("report.html")}


# ---- the interactive view's data -------------------------------------------------------------------------------------
def make_view_run(folder: Path, *, n_kv_heads: int | None = None, rankings: tuple[str, ...] = ("eap", "eap-ig"),
                  n_test: int = 16, seed: int = 0) -> Path:
    """A run folder as `acdc run ioi --model zoo:toy-ioi` writes it, with real circuits: each ranking's curve is the
    sweep's greedy circuits of random scores (chosen: the first of at least 20 edges, saved with every score), and
    ``acdc`` has three found circuits of which the run saved one. f values are made up (f = fraction of edges)."""
    import torch

    from acdc.graph import Circuit, Graph
    from acdc.pareto import size_grid
    from acdc.selection import ordered_circuits, top_n

    graph = Graph.from_config(2, 4, n_kv_heads)
    gen = torch.Generator().manual_seed(seed)
    sizes = size_grid(graph.n_edges)
    summary = fake_summary()
    summary["graph"] = {"writers": graph.n_src, "readers": graph.n_dst, "edges": graph.n_edges, "n_layers": 2,
                        "n_heads": 4}
    summary["data"]["test"].update({"n": n_test, "seed": seed, "task": "ioi"})
    summary["pareto"]["n_edges_total"] = graph.n_edges

    def point(c: Circuit, requested: int | None, label: str) -> dict[str, Any]:
        f = c.n_edges / graph.n_edges
        return {"edges": c.n_edges, "requested": requested, "fraction": f, "f": f, "f_ci": [f - 0.01, f + 0.01],
                "kl": 1 - f, "kl_ci": [0.9 * (1 - f), 1.1 * (1 - f)], "label": label}

    curves, entries, saved = [], [], {}
    for name in rankings:
        scores = torch.randn(graph.n_src, graph.n_dst, generator=gen) * graph.valid
        circuits = ordered_circuits(graph, scores, sizes)
        pts = [point(c, n, f"n={n}") for c, n in zip(circuits, sizes, strict=True)]
        i = next(k for k, c in enumerate(circuits) if c.n_edges >= 20)
        curves.append({"method": name, "kind": "scores", "points": pts})
        saved[name] = circuits[i]
        entries.append((name, circuits[i], pts[i]))
    found = [top_n(graph, torch.randn(graph.n_src, graph.n_dst, generator=gen), n) for n in (8, 15, 30)]
    pts = [point(c, None, f"tau={t}") for c, t in zip(found, (0.1, 0.03, 0.01), strict=True)]
    curves.append({"method": "acdc", "kind": "circuits", "points": pts})
    saved["acdc"] = Circuit(graph, found[1].mask)
    entries.append(("acdc", saved["acdc"], pts[1]))
    summary["pareto"]["curves"] = curves
    summary["pareto"]["summary"] = [{"method": c["method"], "kind": c["kind"], "cpr": None, "cmd": None,
                                     "edges_for": {}} for c in curves]
    summary["circuits"] = [
        {"method": name, "edges": c.n_edges, "nodes": len(c.nodes()), "f": p["f"], "f_ci": p["f_ci"], "kl": p["kl"],
         "kl_ci": p["kl_ci"], "how": "smallest circuit on the curve with f >= 0.9 on the train split",
         "label": p["label"], "json": f"circuits/{name}.json", "svg": f"circuits/{name}.svg",
         "png": f"circuits/{name}.png", "top_edges": []}
        for name, c, p in entries]
    summary["headline"] = rankings[0]
    make_run_folder(folder, summary)
    for name, c in saved.items():
        c.meta.update({"method": name, "label": next(p["label"] for n, _, p in entries if n == name)})
        c.save(folder / "circuits" / f"{name}.json")
    return folder


def _decode_point(method: dict[str, Any], p: dict[str, Any], table: list[tuple[int, int]]) -> set[tuple[int, int]]:
    """A point's circuit as the viewer decodes it (prefix of the order minus the dropped positions, or a list)."""
    c = p["circuit"]
    if "edges" in c:
        return {table[i] for i in c["edges"]}
    drop = set(c["drop"])
    return {table[method["order"][j]] for j in range(c["n"]) if j not in drop}


@pytest.mark.parametrize("n_kv_heads", [None, 2])
def test_view_replays_every_curve_point_exactly(tmp_path: Path, n_kv_heads: int | None) -> None:
    """Every ranking point decodes to the sweep's own circuit (same edges, same size); scores and chosen-circuit
    membership are those of the circuit files; ACDC's saved circuit is drawn, its other points are not."""
    from acdc.graph import Circuit, Graph
    from acdc.pareto import size_grid
    from acdc.selection import ordered_circuits

    folder = make_view_run(tmp_path / "run", n_kv_heads=n_kv_heads)
    view = _parse(write_report(folder)).view_data()
    graph = Graph.from_config(2, 4, n_kv_heads)
    table = list(zip(view["edges"]["src"], view["edges"]["dst"], strict=True))
    assert table == sorted(set(table)) and all(graph.valid[s, d] for s, d in table)
    assert view["graph"]["src"] == list(graph.src_names) and view["graph"]["dst"] == list(graph.dst_names)
    summary = json.loads((folder / "summary.json").read_text())
    for bit, m in enumerate(view["methods"]):
        saved = Circuit.load(folder / "circuits" / f"{m['name']}.json", graph)
        assert m["points"][m["chosen"]]["label"] == summary["circuits"][bit]["label"]
        assert _decode_point(m, m["points"][m["chosen"]], table) == {tuple(e) for e in saved.mask.nonzero().tolist()}
        member = {table[i] for i, bits in enumerate(view["edges"]["member"]) if bits >> bit & 1}
        assert member == {tuple(e) for e in saved.mask.nonzero().tolist()}
        if m["kind"] == "scores":
            assert saved.scores is not None
            sizes = size_grid(graph.n_edges)
            for p, c in zip(m["points"], ordered_circuits(graph, saved.scores, sizes), strict=True):
                assert p["circuit"] is not None, p["label"]
                assert _decode_point(m, p, table) == {tuple(e) for e in c.mask.nonzero().tolist()}, p["label"]
                assert len(_decode_point(m, p, table)) == p["edges"]
            for i, (s, d) in enumerate(table):
                assert m["scores"][i] == pytest.approx(float(saved.scores[s, d]), rel=1e-3, abs=1e-12)
        else:
            assert "scores" not in m and m["sense"] is None
            assert [p["circuit"] is not None for p in m["points"]] == [False, True, False]
    assert any("acdc: the run saved only its chosen circuit" in o for o in view["omitted"])
    masks = {m["name"]: Circuit.load(folder / "circuits" / f"{m['name']}.json", graph).mask for m in view["methods"]}
    for o in view["overlaps"]:
        a, b = masks[o["a"]], masks[o["b"]]
        shared, union = int((a & b).sum()), int((a | b).sum())
        assert o["shared"] == shared and o["jaccard"] == pytest.approx(shared / union)
    assert len(view["overlaps"]) == 3


def test_view_layout_is_layers_as_rows(tmp_path: Path) -> None:
    view = _parse(write_report(make_view_run(tmp_path / "run", n_kv_heads=2))).view_data()
    nodes = {n["id"]: n for n in view["nodes"]}
    for layer in range(2):
        heads = [nodes[f"a{layer}.h{h}"] for h in range(4)]
        assert len({h["y"] for h in heads}) == 1 and [h["x"] for h in heads] == sorted(h["x"] for h in heads)
        mlp, kv = nodes[f"m{layer}"], [nodes[f"a{layer}.g{g}"] for g in range(2)]
        assert mlp["x"] > max(h["x"] for h in heads)  # beside the heads
        assert all(k["y"] > heads[0]["y"] for k in kv)  # shared k/v heads under their group (y grows downwards)
        assert nodes[f"a{layer}"]["kind"] == "layer"  # the collapsed node
    assert nodes["logits"]["y"] < nodes["a1.h0"]["y"] < nodes["a0.h0"]["y"] < nodes["input"]["y"]


def test_view_limits_leave_out_big_circuits_and_say_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from acdc.export import view as view_module

    monkeypatch.setattr(view_module, "ORDER_EDGES", 5)
    monkeypatch.setattr(view_module, "MAX_CIRCUIT_EDGES", 25)
    from acdc.graph import Circuit, Graph

    graph = Graph.from_config(2, 4)
    folder = make_view_run(tmp_path / "run")
    page = _parse(write_report(folder))
    view = page.view_data()
    summary = json.loads((folder / "summary.json").read_text())
    for m, entry in zip(view["methods"], summary["circuits"], strict=True):
        drawn = [p for p in m["points"] if p["circuit"] is not None]
        assert all(p["edges"] <= 25 for p in drawn)
        if m["kind"] == "scores" and entry["edges"] <= 25:  # embedded up to its chosen circuit
            assert max(p["edges"] for p in drawn) == entry["edges"]
        # membership bits are exact whether or not the chosen circuit is embedded
        chosen = Circuit.load(folder / entry["json"], graph)
        bit = view["methods"].index(m)
        table = list(zip(view["edges"]["src"], view["edges"]["dst"], strict=True))
        assert [bool(b >> bit & 1) for b in view["edges"]["member"]] == [bool(chosen.mask[s, d]) for s, d in table]
    assert any("not embedded" in o for o in view["omitted"])
    assert "What this page holds" in page.all_text and "no circuit of more than 25 edges" in page.all_text


def test_view_survives_unreadable_circuit_files(tmp_path: Path) -> None:
    folder = make_view_run(tmp_path / "run")
    (folder / "circuits" / "eap.json").write_text("{broken")
    page = _parse(write_report(folder))
    view = page.view_data()
    assert view["methods"][0]["name"] == "eap" and all(p["circuit"] is None for p in view["methods"][0]["points"])
    assert any("eap: its chosen circuit's file (circuits/eap.json) is missing or unreadable" in o
               for o in view["omitted"])
    assert view["methods"][1]["points"][view["methods"][1]["chosen"]]["circuit"] is not None

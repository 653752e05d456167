"""Pareto plots: circuit size against loss recovered, one curve per method, written as SVG and PNG.

Drawn with matplotlib's object API (``Figure`` + the Agg canvas), so nothing touches pyplot's global state and no
display is needed.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Sequence
from itertools import cycle
from pathlib import Path
from typing import Any

from acdc.errors import InputError
from acdc.io import atomic_write_bytes

#: Fixed colours for the methods this package ships (Okabe-Ito, colour-blind safe); other names take the rest in turn.
METHOD_COLORS: dict[str, str] = {
    "eap": "#0072b2",
    "eap-ig": "#d55e00",
    "edge-pruning": "#009e73",
    "hybrid": "#cc79a7",
    "acdc": "#6a3d9a",
}
_SPARE_COLORS = ("#e69f00", "#56b4e9", "#7f7f7f", "#8c564b", "#17becf", "#bcbd22", "#1f3f7f", "#7f1f3f")
_CIRCUIT_MARKERS = ("s", "D", "^", "v", "P", "X")

#: Loss-recovered levels marked with reference lines.
REFERENCE_LEVELS = (0.8, 0.9, 0.99)
#: f values (and interval ends) beyond this range are drawn at its edge with a triangle marker.
CLIP = (-0.5, 1.5)


def method_colors(methods: Iterable[str]) -> dict[str, str]:
    """A colour per method: fixed for known names, then the spare colours in order of first appearance."""
    spare = cycle(_SPARE_COLORS)
    out: dict[str, str] = {}
    for m in methods:
        if m not in out:
            out[m] = METHOD_COLORS.get(m) or next(spare)
    return out


def _num(x: Any) -> float:
    """A finite float, or NaN for None / non-numbers / infinities."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v if math.isfinite(v) else math.nan


def _clip(v: float) -> float:
    return min(max(v, CLIP[0]), CLIP[1]) if not math.isnan(v) else v


def _points(curve: dict[str, Any]) -> list[tuple[float, float, float, float]]:
    """(edges, f, f_lo, f_hi) of the curve's plottable points, sorted by edges; CI ends are NaN when missing."""
    out = []
    for p in curve.get("points") or []:
        e, f = _num(p.get("edges")), _num(p.get("f"))
        if not e > 0 or math.isnan(f):
            continue  # a log axis has no place for 0 edges; a point without f has nothing to show
        ci = p.get("f_ci") or (None, None)
        lo, hi = (_num(ci[0]), _num(ci[1])) if len(ci) == 2 else (math.nan, math.nan)
        out.append((e, f, lo, hi))
    return sorted(out)


def _default_title(pareto: dict[str, Any]) -> str:
    task, model = pareto.get("task", "?"), pareto.get("model", "?")
    split, n = pareto.get("split", "?"), pareto.get("n_prompts", "?")
    return f"{task} on {model}: circuit size vs loss recovered ({split} split, n={n})"


def _summary_label(method: str, summary: dict[str, dict[str, Any]]) -> str:
    s = summary.get(method) or {}
    cpr, cmd = _num(s.get("cpr")), _num(s.get("cmd"))
    extra = [f"CPR {cpr:.2f}" if not math.isnan(cpr) else "", f"CMD {cmd:.2f}" if not math.isnan(cmd) else ""]
    extra = [e for e in extra if e]
    return f"{method} ({', '.join(extra)})" if extra else method


def pareto_figure(pareto: dict[str, Any], *, title: str | None = None) -> Any:
    """The pareto plot as a matplotlib ``Figure`` (see :func:`plot_pareto`)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator

    fig = Figure(figsize=(8.0, 5.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    curves = [c for c in pareto.get("curves") or [] if isinstance(c, dict)]
    colors = method_colors(str(c.get("method", "?")) for c in curves)
    summary = {str(s.get("method")): s for s in pareto.get("summary") or [] if isinstance(s, dict)}

    xs: list[float] = []
    ys: list[float] = []
    clipped: list[tuple[float, float, str]] = []
    markers = cycle(_CIRCUIT_MARKERS)
    for c in curves:
        method = str(c.get("method", "?"))
        pts = _points(c)
        if not pts:
            continue
        color, label = colors[method], _summary_label(method, summary)
        e, f, lo, hi = (np.array(v, dtype=float) for v in zip(*pts, strict=True))
        fc, loc, hic = np.clip(f, *CLIP), np.clip(lo, *CLIP), np.clip(hi, *CLIP)
        clipped += [(ei, _clip(fi), color) for ei, fi in zip(e, f, strict=True) if fi != _clip(fi)]
        xs += e.tolist()
        ys += [v for v in np.concatenate([fc, loc, hic]).tolist() if not math.isnan(v)]
        if c.get("kind") == "circuits":
            # separately found circuits: markers with error bars, joined by a thin line to show the order
            has_ci = ~(np.isnan(loc) | np.isnan(hic))
            ax.plot(e, fc, color=color, lw=0.9, alpha=0.7, marker=next(markers), ms=6, mec="white", mew=0.6,
                    label=label, zorder=3)
            if has_ci.any():
                err = np.vstack([np.maximum(fc - loc, 0), np.maximum(hic - fc, 0)])[:, has_ci]
                ax.errorbar(e[has_ci], fc[has_ci], yerr=err, fmt="none", ecolor=color, elinewidth=1.0, capsize=2.5,
                            zorder=2)
        else:
            # one score vector cut at every grid size: a line with its 95% interval band
            ax.plot(e, fc, color=color, lw=1.8, marker="o", ms=3, label=label, zorder=3)
            band = ~(np.isnan(loc) | np.isnan(hic))
            if band.any():
                ax.fill_between(e, np.where(band, loc, np.nan), np.where(band, hic, np.nan), color=color,
                                alpha=0.18, lw=0, zorder=1)

    front = sorted((_num(p.get("edges")), _num(p.get("f"))) for p in pareto.get("frontier") or []
                   if isinstance(p, dict))
    front = [(e, _clip(f)) for e, f in front if e > 0 and not math.isnan(f)]
    if front:
        fe, ff = zip(*front, strict=True)
        ax.step(fe, ff, where="post", color="black", lw=1.3, ls=(0, (5, 2.5)), alpha=0.85, zorder=4,
                label="pareto frontier")
        xs += list(fe)
    for e0, f0, color in clipped:
        ax.plot([e0], [f0], ls="none", marker="^" if f0 > 0 else "v", ms=9, mfc="none", mec=color, mew=1.5,
                zorder=5)

    ax.set_xscale("log")
    total = _num(pareto.get("n_edges_total"))
    if xs:
        hi_x = max(max(xs), total if not math.isnan(total) else 0.0)
        ax.set_xlim(min(xs) / 1.4, hi_x * 1.4)
        plain = FuncFormatter(lambda v, _: f"{v:g}")  # 1, 10, 100 reads faster than 10^0, 10^1, 10^2
        ax.xaxis.set_major_formatter(plain)
        if hi_x / min(xs) < 100:  # under two decades the powers of ten alone are too few ticks
            ax.xaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
            ax.xaxis.set_minor_formatter(plain)
    if not math.isnan(total) and total > 0:
        ax.axvline(total, color="#999999", lw=0.8, ls=":", zorder=0)
        ax.text(total, 0.02, f"full model: {int(total)} edges ", transform=ax.get_xaxis_transform(),
                rotation=90, ha="right", va="bottom", fontsize=8, color="#666666")
    y0 = min([-0.05] + [y - 0.03 for y in ys])
    y1 = max([1.05] + [y + 0.03 for y in ys])
    ax.set_ylim(y0, y1)
    for level in REFERENCE_LEVELS:
        ax.axhline(level, color="#a0a0a0", lw=0.7, ls=(0, (4, 3)), zorder=1.6)  # above the grid
        ax.text(1.005, level, f"{level:g}", transform=ax.get_yaxis_transform(), ha="left", va="center",
                fontsize=8, color="#808080")
    ax.axhline(0.0, color="#cccccc", lw=0.6, zorder=0)

    ax.set_xlabel("edges in the circuit (log scale)")
    ax.set_ylabel("loss recovered (normalised faithfulness f)")
    fig.suptitle(title or _default_title(pareto), fontsize=12)
    sub = [f"metric: {pareto['metric']}" if pareto.get("metric") else "",
           f"ablation: {pareto['ablation']}" if pareto.get("ablation") else ""]
    if any(sub):
        ax.set_title("; ".join(s for s in sub if s), fontsize=8.5, color="#666666")
    ax.grid(True, which="major", color="#eeeeee", lw=0.6)
    ax.spines[["top", "right"]].set_visible(False)
    handles, labels = ax.get_legend_handles_labels()
    if clipped:
        handles.append(Line2D([], [], ls="none", marker="^", mfc="none", mec="#555555", ms=8))
        labels.append(f"off-scale f, drawn at {CLIP[0]:g} / {CLIP[1]:g}")
    if handles:
        ax.legend(handles, labels, loc="best", fontsize=8.5, frameon=True, framealpha=0.92, edgecolor="#cccccc")
    else:
        ax.text(0.5, 0.5, "no points to plot", transform=ax.transAxes, ha="center", va="center", color="#b00000")
    return fig


def plot_pareto(pareto: dict[str, Any], stem: str | Path, *, title: str | None = None,
                formats: Sequence[str] = ("svg", "png")) -> list[Path]:
    """Plot a pareto dict (format ``acdc-pareto/1``) to ``stem.<fmt>`` for each format, atomically.

    x: edges in the circuit (log scale); y: loss recovered f. ``"scores"`` curves are lines with a 95% band,
    ``"circuits"`` curves are markers with error bars; the frontier is a black dashed step line; grey lines mark
    f = 0.8, 0.9, 0.99. Points with 0 edges cannot sit on a log axis and are left out; f beyond [-0.5, 1.5] is drawn
    at that edge with a triangle. SVG text stays text (``svg.fonttype = "none"``), so it is searchable and editable.
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    bad = [f for f in formats if f not in FigureCanvasAgg.get_supported_filetypes()]
    if bad:
        raise InputError(f"matplotlib cannot write format(s) {', '.join(bad)}; try svg, png or pdf")
    fig = pareto_figure(pareto, title=title)
    stem = Path(stem)
    out = []
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "acdc"}):
        for fmt in formats:
            buf = io.BytesIO()
            fig.savefig(buf, format=fmt, dpi=200, metadata=_metadata(fmt))
            out.append(atomic_write_bytes(stem.with_name(f"{stem.name}.{fmt}"), buf.getvalue()))
    return out


def _metadata(fmt: str) -> dict[str, Any] | None:
    """No creation date in the files, so the same input gives the same bytes."""
    if fmt == "svg":
        return {"Date": None}
    if fmt == "png":
        return {"Software": None}
    return None

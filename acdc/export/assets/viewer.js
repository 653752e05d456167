/* The interactive circuit view of an acdc report (acdc/export/view.py writes its data; report.py inlines this file).
 *
 * Reads the JSON in <script id="acdc-view-data">, draws the circuit of the selected curve point as SVG (layers as
 * rows), and offers: pan and zoom, one slider per method over its curve, node hover/click (incoming and outgoing
 * edges with scores), edge click (score under every method, which chosen circuits contain it), the agreement view,
 * search by node name and collapsing a layer's heads. With data-live="1" (acdc explore) it also edits a working
 * circuit and asks the local server to evaluate it exactly.
 *
 * Every string from the data goes into the page through textContent or setAttribute, never as markup.
 */
(function () {
  "use strict";
  var root = document.getElementById("acdc-view");
  var dataEl = document.getElementById("acdc-view-data");
  if (!root || !dataEl) return;
  var D = JSON.parse(dataEl.textContent);
  var LIVE = root.getAttribute("data-live") === "1";
  var svg = root.querySelector("svg.v-svg"); // in the page's markup, so the HTML parser gave it SVG's namespace
  if (!svg) return;
  var SVGNS = svg.namespaceURI;
  var ROLE_COLOUR = { q: "#0072b2", k: "#d55e00", v: "#009e73", mlp: "#4d4d4d", logits: "#7b3f8c" };
  var ROLE_SHIFT = { q: -9, k: 0, v: 9, mlp: 0, logits: 0 };
  var AGREE = ["#f4a259", "#bc4b51", "#5b8e7d", "#2f5fd0", "#3d2c8d", "#1b1b1b"];
  var AUTO_COLLAPSE = 4000; // a first view with more edges starts with every layer's heads collapsed
  var LIST_ROWS = 25; // edges listed per table in the side panel

  // ---- small DOM helpers ----------------------------------------------------------------------------------------
  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    if (attrs) for (var k in attrs) if (attrs[k] !== null && attrs[k] !== undefined) e.setAttribute(k, attrs[k]);
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function sv(tag, attrs, text) {
    var e = document.createElementNS(SVGNS, tag);
    if (attrs) for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = String(text);
    return e;
  }
  function clear(e) { while (e.firstChild) e.removeChild(e.firstChild); }
  function num(x, d) {
    if (x === null || x === undefined || typeof x !== "number" || !isFinite(x)) return "—";
    return x.toFixed(d === undefined ? 3 : d);
  }
  function sci(x) {
    if (x === null || x === undefined || !isFinite(x)) return "—";
    var a = Math.abs(x);
    return (a !== 0 && (a < 1e-3 || a >= 1e4)) ? x.toExponential(2) : x.toFixed(4);
  }
  function interval(c) { return c && c.length === 2 ? " [" + num(c[0]) + ", " + num(c[1]) + "]" : ""; }
  function plural(n, w) { return n.toLocaleString("en") + " " + w + (n === 1 ? "" : "s"); }

  // ---- the graph --------------------------------------------------------------------------------------------------
  var G = D.graph, E = D.edges, M = D.methods;
  var nodeById = {};
  D.nodes.forEach(function (n) { nodeById[n.id] = n; });
  function readerInfo(name) {
    var m = /^(a\d+\.[hg]\d+)<([qkv])>$/.exec(name);
    if (m) return { owner: m[1], role: m[2] };
    if (name === "logits") return { owner: "logits", role: "logits" };
    return { owner: name, role: "mlp" };
  }
  var dstInfo = G.dst.map(readerInfo);
  var edgeKey = {};
  for (var i0 = 0; i0 < E.src.length; i0++) edgeKey[E.src[i0] * G.dst.length + E.dst[i0]] = i0;
  function edgeName(i) { return G.src[E.src[i]] + "->" + G.dst[E.dst[i]]; }
  function addEdge(name) {
    /* The table index of edge NAME, added to the table (with no scores) if it is a valid name not yet there. */
    var parts = name.split("->");
    var s = G.src.indexOf(parts[0]), d = G.dst.indexOf(parts[1]);
    if (parts.length !== 2 || s < 0 || d < 0) return -1;
    var key = s * G.dst.length + d;
    if (edgeKey[key] !== undefined) return edgeKey[key];
    E.src.push(s); E.dst.push(d); E.member.push(0);
    M.forEach(function (m) { if (m.scores) m.scores.push(null); });
    edgeKey[key] = E.src.length - 1;
    return E.src.length - 1;
  }
  function layerOf(id) { var n = nodeById[id]; return n ? n.layer : -1; }
  function isHeadish(id) { var n = nodeById[id]; return n && (n.kind === "head" || n.kind === "kv"); }
  function popcount(x) { var c = 0; while (x) { c += x & 1; x >>>= 1; } return c; }
  function pointEdges(m, p) {
    var c = p.circuit;
    if (!c) return null;
    if (c.edges) return c.edges;
    var drop = {}, out = [];
    c.drop.forEach(function (j) { drop[j] = true; });
    for (var j = 0; j < c.n; j++) if (!drop[j]) out.push(m.order[j]);
    return out;
  }

  // ---- state ------------------------------------------------------------------------------------------------------
  var S = {
    mode: "method", // "method" | "agreement" | "edit"
    method: Math.max(0, M.findIndex(function (m) { return m.name === D.headline; })),
    point: M.map(function (m) { return m.chosen !== null && m.chosen !== undefined ? m.chosen : m.points.length - 1; }),
    collapsed: {},
    selected: null, // {type: "node"|"edge"|"link", id}
    hover: null,
    work: null, // edit mode: {base: {i: true}, on: {i: true}, off: {nodeId: true}}
  };

  // ---- page skeleton ----------------------------------------------------------------------------------------------
  clear(root);
  var bar = el("div", { "class": "v-bar" });
  var modeBtns = {};
  [["method", "Method circuits"], ["agreement", "Agreement"]].concat(LIVE ? [["edit", "Edit (live)"]] : [])
    .forEach(function (p) {
      var b = el("button", { type: "button", "class": "v-mode", "data-mode": p[0] }, p[1]);
      b.addEventListener("click", function () { setMode(p[0]); });
      modeBtns[p[0]] = b;
      bar.appendChild(b);
    });
  var search = el("input", { type: "search", id: "acdc-search", list: "acdc-node-names", placeholder: "find a node: a3.h2, m5",
                             "aria-label": "find a node by name" });
  var names = el("datalist", { id: "acdc-node-names" });
  D.nodes.forEach(function (n) { if (n.kind !== "layer") names.appendChild(el("option", { value: n.id })); });
  var searchMsg = el("span", { "class": "v-msg", id: "acdc-search-msg" });
  search.addEventListener("keydown", function (e) { if (e.key === "Enter") find(search.value); });
  search.addEventListener("change", function () { find(search.value); });
  bar.appendChild(search); bar.appendChild(names); bar.appendChild(searchMsg);
  var spacer = el("span", { "class": "v-spacer" }); bar.appendChild(spacer);
  [["collapse all", function () { setAllCollapsed(true); }], ["expand all", function () { setAllCollapsed(false); }],
   ["+", function () { zoomBy(1.4); }], ["−", function () { zoomBy(1 / 1.4); }], ["fit", function () { fit(); }]]
    .forEach(function (p) {
      var b = el("button", { type: "button", "class": "v-tool" }, p[0]);
      b.addEventListener("click", p[1]);
      bar.appendChild(b);
    });
  root.appendChild(bar);

  var sliders = el("div", { "class": "v-sliders", id: "acdc-sliders" });
  root.appendChild(sliders);
  var readout = el("div", { "class": "v-readout", id: "acdc-readout", "aria-live": "polite" });
  root.appendChild(readout);

  var body = el("div", { "class": "v-body" });
  var vp = sv("g", { "class": "vp" });
  var gRows = sv("g", { "class": "rows" }), gEdges = sv("g", { "class": "edges" }), gNodes = sv("g", { "class": "nodes" });
  vp.appendChild(gRows); vp.appendChild(gEdges); vp.appendChild(gNodes);
  svg.appendChild(vp);
  var panel = el("aside", { "class": "v-panel", id: "acdc-panel" });
  body.appendChild(svg); body.appendChild(panel);
  root.appendChild(body);
  var legend = el("div", { "class": "v-legend", id: "acdc-legend" });
  root.appendChild(legend);
  var live = LIVE ? el("div", { "class": "v-live", id: "acdc-live" }) : null;
  if (live) root.appendChild(live);

  // ---- method rows with their sliders ----------------------------------------------------------------------------
  var rowEls = M.map(function (m, mi) {
    var row = el("div", { "class": "v-mrow", "data-method": m.name });
    var label = el("label", { "class": "v-mname" });
    var radio = el("input", { type: "radio", name: "acdc-method", value: String(mi) });
    radio.addEventListener("change", function () { S.method = mi; if (S.mode !== "method") setMode("method"); else draw(); });
    label.appendChild(radio); label.appendChild(document.createTextNode(" " + m.name));
    var slider = el("input", { type: "range", min: "0", max: String(Math.max(0, m.points.length - 1)), step: "1",
                               value: String(S.point[mi]), "class": "v-slider", "data-method": m.name,
                               "aria-label": "circuit size along " + m.name + "'s curve" });
    slider.addEventListener("input", function () {
      S.point[mi] = Number(slider.value);
      S.method = mi;
      if (S.mode !== "method") setMode("method"); else draw();
    });
    var text = el("span", { "class": "v-point" });
    row.appendChild(label); row.appendChild(slider); row.appendChild(text);
    sliders.appendChild(row);
    return { row: row, radio: radio, slider: slider, text: text };
  });
  function pointText(m, p, isChosen) {
    var t = plural(p.edges, "edge") + " · f = " + num(p.f) + interval(p.f_ci) + " · KL = " + num(p.kl) +
      interval(p.kl_ci) + " · " + p.label;
    if (isChosen) t += " · chosen";
    if (!p.circuit) t += " · not drawn (not embedded)";
    return t;
  }

  // ---- what to draw --------------------------------------------------------------------------------------------------
  function currentEdges() {
    /* {edges: [table index], why: text or null} for the current mode. */
    if (S.mode === "agreement") {
      var out = [];
      for (var i = 0; i < E.member.length; i++) if (E.member[i]) out.push(i);
      return { edges: out, why: null };
    }
    if (S.mode === "edit" && S.work) {
      var set = {};
      Object.keys(S.work.base).forEach(function (k) { set[k] = true; });
      Object.keys(S.work.on).forEach(function (k) { set[k] = true; });
      return { edges: Object.keys(set).map(Number), why: null };
    }
    var m = M[S.method];
    if (!m || !m.points.length) return { edges: [], why: "this method has no curve" };
    var p = m.points[S.point[S.method]];
    var es = pointEdges(m, p);
    if (es === null) {
      return { edges: [], why: p.edges > D.limits.max_circuit_edges
        ? "this circuit has " + plural(p.edges, "edge") + ", more than the " +
          D.limits.max_circuit_edges.toLocaleString("en") + " a report embeds"
        : "this point's circuit is not in the report (see what was left out below)" };
    }
    return { edges: es, why: null };
  }
  function scoreOf(mi, i) { var s = M[mi].scores; return s ? s[i] : null; }
  function activeScores() { return S.mode === "method" && M[S.method] && M[S.method].scores ? S.method : -1; }
  function drawnId(id) {
    if (isHeadish(id) && S.collapsed[layerOf(id)]) return "a" + layerOf(id);
    return id;
  }
  function edgeOff(i) {
    if (S.mode !== "edit" || !S.work) return false;
    if (!S.work.on[i]) return true;
    return !!(S.work.off[G.src[E.src[i]]] || S.work.off[dstInfo[E.dst[i]].owner]);
  }

  var drawn = [], nodeEls = {}, byNode = {};
  function draw() {
    var cur = currentEdges();
    var links = {}, list = [];
    cur.edges.forEach(function (i) {
      var u = drawnId(G.src[E.src[i]]), info = dstInfo[E.dst[i]], v = drawnId(info.owner);
      var key = u + "|" + v + "|" + info.role;
      var l = links[key];
      if (!l) { l = links[key] = { u: u, v: v, role: info.role, edges: [] }; list.push(l); }
      l.edges.push(i);
    });
    var ms = activeScores(), maxAbs = 0;
    if (ms >= 0) cur.edges.forEach(function (i) { var s = scoreOf(ms, i); if (s !== null) maxAbs = Math.max(maxAbs, Math.abs(s)); });
    var nM = M.length;
    clear(gEdges);
    drawn = list; byNode = {};
    var frag = document.createDocumentFragment();
    var used = {};
    list.forEach(function (l, li) {
      var a = nodeById[l.u], b = nodeById[l.v];
      if (!a || !b) return;
      used[l.u] = used[l.v] = true;
      var x1 = a.x, y1 = a.y - 12, x2 = b.x + ROLE_SHIFT[l.role], y2 = b.y + 12, my = (y1 + y2) / 2;
      var p = sv("path", { d: "M" + x1 + " " + y1 + "C" + x1 + " " + my + " " + x2 + " " + my + " " + x2 + " " + y2,
                           "class": "edge r-" + l.role, "data-link": String(li) });
      var width = 1.2, colour = ROLE_COLOUR[l.role];
      if (l.edges.length === 1) {
        var i = l.edges[0];
        p.setAttribute("data-edge", edgeName(i));
        if (ms >= 0 && maxAbs > 0) { var s = scoreOf(ms, i); width = 0.5 + 3.5 * Math.abs(s || 0) / maxAbs; }
        if (S.mode === "agreement") {
          var c = popcount(E.member[i]);
          colour = AGREE[Math.min(AGREE.length - 1, Math.round((c - 1) * (AGREE.length - 1) / Math.max(1, nM - 1)))];
          p.setAttribute("data-count", String(c));
        }
        if (edgeOff(i)) p.setAttribute("class", "edge off r-" + l.role);
      } else {
        width = Math.min(6, 1 + Math.log2(l.edges.length));
        p.setAttribute("class", "edge link r-" + l.role);
      }
      p.setAttribute("stroke", colour);
      p.setAttribute("stroke-width", width.toFixed(2));
      (byNode[l.u] = byNode[l.u] || []).push(li);
      if (l.v !== l.u) (byNode[l.v] = byNode[l.v] || []).push(li);
      l.el = p;
      frag.appendChild(p);
    });
    gEdges.appendChild(frag);
    drawNodes(used);
    root.setAttribute("data-drawn-edges", String(cur.edges.length));
    root.setAttribute("data-drawn-lines", String(list.length));
    updateTexts(cur);
    applyFocus();
    if (S.selected) showSelected(); else panelHint();
  }

  function drawNodes(used) {
    clear(gNodes); clear(gRows);
    nodeEls = {};
    var frag = document.createDocumentFragment();
    var maxX = 0;
    D.nodes.forEach(function (n) { maxX = Math.max(maxX, n.x); });
    for (var L = 0; L < G.n_layers; L++) {
      var y = nodeById["a" + L + ".h0"].y;
      var lab = sv("text", { x: -70, y: y + 4, "class": "v-rowlabel", "data-layer": String(L) },
                   (S.collapsed[L] ? "▸ " : "▾ ") + "L" + L);
      lab.addEventListener("click", (function (layer) { return function () { toggleLayer(layer); }; })(L));
      gRows.appendChild(lab);
      gRows.appendChild(sv("line", { x1: -40, x2: maxX + 40, y1: y + 60, y2: y + 60, "class": "v-rowline" }));
    }
    D.nodes.forEach(function (n) {
      if (n.kind === "layer" && !S.collapsed[n.layer]) return;
      if ((n.kind === "head" || n.kind === "kv") && S.collapsed[n.layer]) return;
      var g = sv("g", { "class": "node k-" + n.kind + (used[n.id] ? " in" : " out") +
                        (S.work && S.work.off[n.id] ? " ablated" : ""), "data-id": n.id,
                        transform: "translate(" + n.x + "," + n.y + ")" });
      var w = n.kind === "kv" ? 18 : n.kind === "layer" ? 120 : n.kind === "input" || n.kind === "logits" ? 34 : 24;
      var h = n.kind === "kv" ? 9 : 12;
      if (n.kind === "head" || n.kind === "kv") g.appendChild(sv("ellipse", { rx: w, ry: h }));
      else g.appendChild(sv("rect", { x: -w, y: -h, width: 2 * w, height: 2 * h, rx: n.kind === "mlp" ? 2 : 8 }));
      var label = n.kind === "layer" ? "a" + n.layer + " (heads)" : n.id;
      g.appendChild(sv("text", { y: 3.5 }, label));
      g.appendChild(sv("title", {}, n.id));
      g.addEventListener("mouseenter", function () { S.hover = n.id; applyFocus(); if (!S.selected) showNode(n.id); });
      g.addEventListener("mouseleave", function () { S.hover = null; applyFocus(); if (!S.selected) panelHint(); });
      g.addEventListener("click", function (e) {
        e.stopPropagation();
        if (n.kind === "layer") { toggleLayer(n.layer); return; }
        S.selected = (S.selected && S.selected.id === n.id) ? null : { type: "node", id: n.id };
        applyFocus();
        if (S.selected) showSelected(); else panelHint();
      });
      nodeEls[n.id] = g;
      frag.appendChild(g);
    });
    gNodes.appendChild(frag);
  }

  function applyFocus() {
    var focus = S.hover || (S.selected && S.selected.type === "node" ? S.selected.id : null);
    var old = gEdges.querySelectorAll(".hl");
    for (var i = 0; i < old.length; i++) old[i].classList.remove("hl");
    var oldN = gNodes.querySelectorAll(".hl");
    for (var j = 0; j < oldN.length; j++) oldN[j].classList.remove("hl");
    if (S.selected && S.selected.type !== "node") {
      var l = drawn[S.selected.link];
      if (l && l.el) { l.el.classList.add("hl"); svg.classList.add("focus"); return; }
    }
    if (!focus) { svg.classList.remove("focus"); root.removeAttribute("data-highlighted"); return; }
    svg.classList.add("focus");
    var ids = byNode[focus] || [];
    ids.forEach(function (li) {
      var lk = drawn[li];
      lk.el.classList.add("hl");
      [lk.u, lk.v].forEach(function (id) { if (nodeEls[id]) nodeEls[id].classList.add("hl"); });
    });
    if (nodeEls[focus]) nodeEls[focus].classList.add("hl");
    root.setAttribute("data-highlighted", String(ids.length));
  }

  // ---- edge clicks (delegated: one listener for thousands of paths) ---------------------------------------------
  gEdges.addEventListener("click", function (e) {
    var t = e.target;
    if (!t || !t.getAttribute || t.getAttribute("data-link") === null) return;
    e.stopPropagation();
    var li = Number(t.getAttribute("data-link"));
    S.selected = { type: drawn[li].edges.length === 1 ? "edge" : "link", link: li, id: li };
    applyFocus();
    showSelected();
  });
  svg.addEventListener("click", function () {
    if (moved) return;
    if (S.selected) { S.selected = null; applyFocus(); panelHint(); }
  });

  // ---- side panel ----------------------------------------------------------------------------------------------------
  function panelHint() {
    clear(panel);
    panel.appendChild(el("p", { "class": "v-hint" },
      "Hover or click a node to see its incoming and outgoing edges; click an edge for its score under every method. " +
      "Drag to pan, scroll to zoom; click a layer's label to collapse its heads."));
  }
  function showSelected() {
    var s = S.selected;
    if (!s) return panelHint();
    if (s.type === "node") return showNode(s.id);
    var l = drawn[s.link];
    if (!l) { S.selected = null; return panelHint(); }
    if (s.type === "edge") return showEdge(l.edges[0]);
    return showLink(l);
  }
  function edgeTable(edges, ms, title) {
    var box = el("div");
    box.appendChild(el("h4", {}, title + " (" + edges.length.toLocaleString("en") + ")"));
    if (!edges.length) return box;
    var sorted = edges.slice();
    if (ms >= 0) sorted.sort(function (a, b) { return Math.abs(scoreOf(ms, b) || 0) - Math.abs(scoreOf(ms, a) || 0); });
    var t = el("table", { "class": "v-table" });
    var hr = el("tr");
    hr.appendChild(el("th", {}, "edge"));
    hr.appendChild(el("th", { "class": "num" }, ms >= 0 ? "score (" + M[ms].name + ")" : "score"));
    t.appendChild(hr);
    sorted.slice(0, LIST_ROWS).forEach(function (i) {
      var tr = el("tr", { "data-edge": edgeName(i) });
      tr.appendChild(el("td", {}, edgeName(i)));
      tr.appendChild(el("td", { "class": "num" }, ms >= 0 ? sci(scoreOf(ms, i)) : "—"));
      t.appendChild(tr);
    });
    box.appendChild(t);
    if (sorted.length > LIST_ROWS) box.appendChild(el("p", { "class": "v-hint" }, "… and " + (sorted.length - LIST_ROWS).toLocaleString("en") + " more"));
    return box;
  }
  function showNode(id) {
    clear(panel);
    var n = nodeById[id];
    var ins = [], outs = [];
    (byNode[id] || []).forEach(function (li) {
      var l = drawn[li];
      if (l.v === id) ins = ins.concat(l.edges);
      if (l.u === id) outs = outs.concat(l.edges);
    });
    panel.appendChild(el("h3", { id: "acdc-panel-title" }, n.kind === "layer" ? "a" + n.layer + " (all heads)" : id));
    panel.appendChild(el("p", { "class": "v-hint" }, ({ input: "the embeddings", logits: "the unembedding",
      head: "attention head, layer " + n.layer, kv: "shared key/value head, layer " + n.layer,
      mlp: "MLP, layer " + n.layer, layer: "layer " + n.layer + "'s heads, collapsed" })[n.kind] || n.kind));
    if (LIVE && S.mode === "edit" && n.kind !== "layer" && n.kind !== "logits") {
      var off = !!S.work.off[id];
      var b = el("button", { type: "button", id: "acdc-toggle-node" }, off ? "restore this node" : "ablate this node");
      b.addEventListener("click", function () { toggleNode(id); });
      panel.appendChild(b);
    }
    var ms = activeScores();
    panel.appendChild(edgeTable(ins, ms, "incoming"));
    panel.appendChild(edgeTable(outs, ms, "outgoing"));
  }
  function showEdge(i) {
    clear(panel);
    var info = dstInfo[E.dst[i]];
    panel.appendChild(el("h3", { id: "acdc-panel-title" }, edgeName(i)));
    panel.appendChild(el("p", { "class": "v-hint" }, "into " + ({ q: "a query", k: "a key", v: "a value", mlp: "an MLP", logits: "the logits" })[info.role]));
    var t = el("table", { "class": "v-table", id: "acdc-edge-table" });
    var hr = el("tr");
    ["method", "score", "in its chosen circuit"].forEach(function (h, k) { hr.appendChild(el("th", { "class": k === 1 ? "num" : null }, h)); });
    t.appendChild(hr);
    M.forEach(function (m, mi) {
      var tr = el("tr", { "data-method": m.name });
      tr.appendChild(el("td", {}, m.name));
      tr.appendChild(el("td", { "class": "num" }, m.scores ? sci(m.scores[i]) : "no scores"));
      var has = m.chosen_edges !== null && m.chosen_edges !== undefined;
      tr.appendChild(el("td", {}, has ? ((E.member[i] >> mi) & 1 ? "yes" : "no") : "no chosen circuit"));
      t.appendChild(tr);
    });
    panel.appendChild(t);
    if (LIVE && S.mode === "edit") {
      var on = !!S.work.on[i];
      var b = el("button", { type: "button", id: "acdc-toggle-edge" }, on ? "remove from the working circuit" : "add to the working circuit");
      b.addEventListener("click", function () { toggleEdge(i); });
      panel.appendChild(b);
    }
  }
  function showLink(l) {
    clear(panel);
    panel.appendChild(el("h3", { id: "acdc-panel-title" }, l.u + " → " + l.v + " (" + l.role + ")"));
    panel.appendChild(el("p", { "class": "v-hint" }, plural(l.edges.length, "edge") + " merged into one line (a collapsed layer)"));
    panel.appendChild(edgeTable(l.edges, activeScores(), "edges"));
  }

  // ---- readout, legend ------------------------------------------------------------------------------------------------
  function updateTexts(cur) {
    M.forEach(function (m, mi) {
      var r = rowEls[mi], p = m.points[S.point[mi]];
      r.radio.checked = S.mode === "method" && mi === S.method;
      r.row.classList.toggle("active", S.mode === "method" && mi === S.method);
      r.text.textContent = p ? pointText(m, p, S.point[mi] === m.chosen) : "no points";
    });
    Object.keys(modeBtns).forEach(function (k) { modeBtns[k].classList.toggle("on", k === S.mode); });
    clear(readout);
    var lines = Object.keys(S.collapsed).filter(function (k) { return S.collapsed[k]; }).length;
    var drawnText = "drawn: " + plural(cur.edges.length, "edge") + " as " + plural(drawn.length, "line") +
      (lines ? " (" + lines + " layer" + (lines === 1 ? "" : "s") + " collapsed)" : "");
    if (S.mode === "method") {
      var m = M[S.method], p = m && m.points[S.point[S.method]];
      if (p) {
        var head = el("span", { "class": "v-f", id: "acdc-f", "data-f": p.f === null ? "" : String(p.f),
                                 "data-edges": String(p.edges) }, m.name + ": " + pointText(m, p, S.point[S.method] === m.chosen));
        readout.appendChild(head);
      }
    } else if (S.mode === "agreement") {
      var withChosen = M.filter(function (m) { return m.chosen_edges !== null && m.chosen_edges !== undefined; });
      readout.appendChild(el("span", { "class": "v-f" }, "Agreement: the union of the chosen circuits drawn here, each edge coloured by how many of the " +
        withChosen.length + " chosen circuits contain it"));
    } else {
      readout.appendChild(el("span", { "class": "v-f" }, "Working circuit: " + plural(effectiveEdges().length, "edge") + " (removed edges dashed)"));
    }
    readout.appendChild(el("span", { "class": "v-drawn", id: "acdc-drawn" }, " · " + drawnText));
    if (cur.why) readout.appendChild(el("div", { "class": "v-why" }, cur.why));
    drawLegend();
  }
  function drawLegend() {
    clear(legend);
    if (S.mode === "agreement") {
      legend.appendChild(el("span", {}, "methods containing the edge: "));
      for (var c = 1; c <= M.length; c++) {
        var col = AGREE[Math.min(AGREE.length - 1, Math.round((c - 1) * (AGREE.length - 1) / Math.max(1, M.length - 1)))];
        var sw = el("span", { "class": "v-swatch" }); sw.style.background = col;
        legend.appendChild(sw); legend.appendChild(el("span", {}, String(c) + " "));
      }
      return;
    }
    [["q", "into a query"], ["k", "into a key"], ["v", "into a value"], ["mlp", "into an MLP"], ["logits", "into the logits"]]
      .forEach(function (r) {
        var sw = el("span", { "class": "v-swatch" }); sw.style.background = ROLE_COLOUR[r[0]];
        legend.appendChild(sw); legend.appendChild(el("span", {}, r[1] + " "));
      });
    legend.appendChild(el("span", { "class": "v-hint" }, activeScores() >= 0 ? " · line width: |score| under " + M[S.method].name : ""));
  }

  // ---- modes, collapse, search ----------------------------------------------------------------------------------------
  function setMode(mode) {
    if (mode === "edit" && !S.work) startEdit();
    S.mode = mode;
    S.selected = null;
    draw();
    if (LIVE) renderLive();
    if (mode === "edit") evaluate();
  }
  function toggleLayer(L) { S.collapsed[L] = !S.collapsed[L]; S.selected = null; draw(); }
  function setAllCollapsed(v) { for (var L = 0; L < G.n_layers; L++) S.collapsed[L] = v; S.selected = null; draw(); }
  function find(q) {
    q = (q || "").trim();
    searchMsg.textContent = "";
    if (!q) return;
    var id = nodeById[q] ? q : null;
    if (!id) {
      var low = q.toLowerCase();
      var hit = D.nodes.filter(function (n) { return n.kind !== "layer" && n.id.toLowerCase().indexOf(low) === 0; });
      if (hit.length) id = hit[0].id;
    }
    if (!id) { searchMsg.textContent = "no node named " + q; return; }
    if (isHeadish(id) && S.collapsed[layerOf(id)]) { S.collapsed[layerOf(id)] = false; draw(); }
    S.selected = { type: "node", id: id };
    applyFocus(); showSelected();
    center(nodeById[id]);
    searchMsg.textContent = (byNode[id] || []).length ? "" : id + " has no edge in this circuit";
  }

  // ---- pan and zoom ------------------------------------------------------------------------------------------------------
  var T = { x: 0, y: 0, k: 1 }, moved = false;
  function applyT() { vp.setAttribute("transform", "translate(" + T.x.toFixed(1) + "," + T.y.toFixed(1) + ") scale(" + T.k.toFixed(4) + ")"); }
  function box() { var r = svg.getBoundingClientRect(); return { w: r.width || 800, h: r.height || 600, left: r.left, top: r.top }; }
  function zoomAt(px, py, f) {
    var k = Math.min(8, Math.max(0.05, T.k * f));
    T.x = px - (px - T.x) * k / T.k; T.y = py - (py - T.y) * k / T.k; T.k = k; applyT();
  }
  function zoomBy(f) { var b = box(); zoomAt(b.w / 2, b.h / 2, f); }
  function fit() {
    var x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    D.nodes.forEach(function (n) { x0 = Math.min(x0, n.x); x1 = Math.max(x1, n.x); y0 = Math.min(y0, n.y); y1 = Math.max(y1, n.y); });
    x0 -= 90; x1 += 60; y0 -= 40; y1 += 40;
    var b = box();
    T.k = Math.min(b.w / (x1 - x0), b.h / (y1 - y0), 2.5);
    T.x = (b.w - (x1 - x0) * T.k) / 2 - x0 * T.k;
    T.y = (b.h - (y1 - y0) * T.k) / 2 - y0 * T.k;
    applyT();
  }
  function center(n) { var b = box(); T.k = Math.max(T.k, 1); T.x = b.w / 2 - n.x * T.k; T.y = b.h / 2 - n.y * T.k; applyT(); }
  svg.addEventListener("wheel", function (e) {
    e.preventDefault();
    var b = box();
    zoomAt(e.clientX - b.left, e.clientY - b.top, Math.exp(-e.deltaY * 0.0015));
  }, { passive: false });
  var drag = null;
  svg.addEventListener("pointerdown", function (e) { drag = { x: e.clientX, y: e.clientY, tx: T.x, ty: T.y }; moved = false; });
  window.addEventListener("pointermove", function (e) {
    if (!drag) return;
    var dx = e.clientX - drag.x, dy = e.clientY - drag.y;
    if (Math.abs(dx) + Math.abs(dy) > 3) moved = true;
    if (moved) { T.x = drag.tx + dx; T.y = drag.ty + dy; applyT(); }
  });
  window.addEventListener("pointerup", function () { drag = null; setTimeout(function () { moved = false; }, 0); });

  // ---- live editing (acdc explore) -------------------------------------------------------------------------------------
  function startEdit() {
    var cur = currentEdges();
    var base = {}, on = {};
    cur.edges.forEach(function (i) { base[i] = true; on[i] = true; });
    S.work = { base: base, on: on, off: {}, from: S.mode === "method" ? M[S.method].name + " " + M[S.method].points[S.point[S.method]].label : S.mode };
  }
  function effectiveEdges() {
    if (!S.work) return [];
    return Object.keys(S.work.on).map(Number).filter(function (i) { return !edgeOff(i); });
  }
  function toggleEdge(i) {
    if (S.work.on[i]) delete S.work.on[i]; else { S.work.on[i] = true; S.work.base[i] = true; }
    draw(); evaluate();
  }
  function toggleNode(id) {
    if (S.work.off[id]) delete S.work.off[id]; else S.work.off[id] = true;
    draw(); evaluate();
  }
  var liveParts = {};
  function renderLive() {
    if (!live) return;
    clear(live);
    live.appendChild(el("h3", {}, "Live evaluation (acdc explore)"));
    if (!S.work) {
      live.appendChild(el("p", { "class": "v-hint" }, "Choose a circuit with the sliders, then press “Edit (live)” to edit it: " +
        "remove or add edges, ablate nodes; every change is evaluated exactly on the run's test prompts."));
    }
    var row = el("div", { "class": "v-liverow" });
    row.appendChild(el("label", { "for": "acdc-prompt" }, "prompt "));
    var prompt = el("input", { type: "number", id: "acdc-prompt", min: "0", value: "0", step: "1" });
    prompt.addEventListener("change", evaluate);
    row.appendChild(prompt);
    var add = el("input", { type: "text", id: "acdc-add-edge", placeholder: "add an edge: a0.h1->m1" });
    add.addEventListener("keydown", function (e) {
      if (e.key !== "Enter" || !S.work) return;
      var i = addEdge(add.value.trim());
      if (i < 0) { liveParts.error.textContent = "not an edge of this graph: " + add.value; return; }
      S.work.on[i] = true; S.work.base[i] = true; add.value = ""; draw(); evaluate();
    });
    row.appendChild(add);
    var ev = el("button", { type: "button", id: "acdc-evaluate" }, "evaluate");
    ev.addEventListener("click", evaluate);
    row.appendChild(ev);
    live.appendChild(row);
    var row2 = el("div", { "class": "v-liverow" });
    var name = el("input", { type: "text", id: "acdc-save-name", placeholder: "name for the saved circuit" });
    var save = el("button", { type: "button", id: "acdc-save" }, "save as circuits/edited/NAME.json");
    save.addEventListener("click", function () { saveCircuit(name.value.trim()); });
    var pick = el("select", { id: "acdc-load-file" });
    var load = el("button", { type: "button", id: "acdc-load" }, "load");
    load.addEventListener("click", function () { loadCircuit(pick.value); });
    [name, save, pick, load].forEach(function (x) { row2.appendChild(x); });
    live.appendChild(row2);
    liveParts = { result: el("div", { id: "acdc-live-result", "class": "v-liveresult" }),
                  error: el("div", { id: "acdc-live-error", "class": "v-error", role: "alert" }), pick: pick, prompt: prompt };
    live.appendChild(liveParts.result); live.appendChild(liveParts.error);
    listCircuits();
  }
  function api(path, payload) {
    var opts = payload === undefined ? {} : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(payload) };
    return fetch(path, opts).then(function (r) {
      return r.json().catch(function () { return { error: "the server answered " + r.status + " without JSON" }; })
        .then(function (j) { if (!r.ok && !j.error) j.error = "the server answered " + r.status; return j; });
    });
  }
  function workPayload() {
    return { edges: Object.keys(S.work.on).map(Number).map(edgeName), ablate_nodes: Object.keys(S.work.off),
             prompt: Number(liveParts.prompt.value || 0) };
  }
  var pending = 0;
  function evaluate() {
    if (!S.work) return;
    var ticket = ++pending;
    liveParts.error.textContent = "";
    liveParts.result.setAttribute("data-state", "busy");
    api("api/evaluate", workPayload()).then(function (j) {
      if (ticket !== pending) return;
      liveParts.result.setAttribute("data-state", "done");
      if (j.error) { liveParts.error.textContent = j.error; return; }
      showResult(j);
    }).catch(function (err) { liveParts.error.textContent = "request failed: " + err; });
  }
  function showResult(j) {
    var r = liveParts.result;
    clear(r);
    var f = el("div", { id: "acdc-live-f", "data-f": String(j.faithfulness), "data-edges": String(j.edges) },
      "exact: " + plural(j.edges, "edge") + " · f = " + num(j.faithfulness, 4) + " · KL = " + num(j.kl, 4) +
      " · M(C) = " + num(j.metric, 4) + " (full " + num(j.full, 4) + ", empty " + num(j.empty, 4) + ") on " +
      plural(j.n_prompts, "test prompt") + " · " + num(j.seconds, 2) + " s");
    r.appendChild(f);
    if (j.prompt) {
      r.appendChild(el("div", { "class": "v-hint" }, "prompt " + j.prompt.index + ": " + j.prompt.text));
      var t = el("table", { "class": "v-table", id: "acdc-top" });
      var hr = el("tr");
      ["#", "circuit", "p", "full model", "p"].forEach(function (h) { hr.appendChild(el("th", {}, h)); });
      t.appendChild(hr);
      for (var k = 0; k < j.prompt.circuit.length; k++) {
        var tr = el("tr"), a = j.prompt.circuit[k], b = j.prompt.full[k] || {};
        [String(k + 1), JSON.stringify(a.token), num(a.p), JSON.stringify(b.token), num(b.p)].forEach(function (c) { tr.appendChild(el("td", {}, c)); });
        t.appendChild(tr);
      }
      r.appendChild(t);
    }
  }
  function saveCircuit(name) {
    if (!S.work) return;
    var p = workPayload(); p.name = name;
    api("api/save", p).then(function (j) {
      if (j.error) { liveParts.error.textContent = j.error; return; }
      liveParts.error.textContent = "";
      liveParts.result.appendChild(el("div", { id: "acdc-saved" }, "saved " + j.file + " (" + plural(j.edges, "edge") + ")"));
      listCircuits();
    });
  }
  function listCircuits() {
    api("api/circuits").then(function (j) {
      if (j.error || !liveParts.pick) return;
      clear(liveParts.pick);
      (j.files || []).forEach(function (f) { liveParts.pick.appendChild(el("option", { value: f }, f)); });
    });
  }
  function loadCircuit(file) {
    if (!file) return;
    api("api/circuit?file=" + encodeURIComponent(file)).then(function (j) {
      if (j.error) { liveParts.error.textContent = j.error; return; }
      var on = {};
      j.edges.forEach(function (n) { var i = addEdge(n); if (i >= 0) on[i] = true; });
      S.work = { base: Object.assign({}, on), on: on, off: {}, from: file };
      S.mode = "edit"; S.selected = null;
      draw(); renderLive(); evaluate();
    });
  }

  // ---- start -----------------------------------------------------------------------------------------------------------
  function drawable(mi) { var m = M[mi], p = m && m.points[S.point[mi]]; return !!(p && p.circuit); }
  if (!drawable(S.method)) { // the headline's chosen circuit is not embedded: start at the smallest one that is
    var best = -1;
    M.forEach(function (m, mi) { if (drawable(mi) && (best < 0 || m.points[S.point[mi]].edges < M[best].points[S.point[best]].edges)) best = mi; });
    if (best >= 0) S.method = best;
  }
  var first = currentEdges();
  if (first.edges.length > AUTO_COLLAPSE) for (var L0 = 0; L0 < G.n_layers; L0++) S.collapsed[L0] = true;
  draw();
  fit();
  if (LIVE) renderLive();
  root.setAttribute("data-ready-ms", String(Math.round(performance.now())));
  root.setAttribute("data-ready", "1");
})();

// The node's status page: reads GET /status, /peers and /blocks/{height} of the node that
// serves it (nothing from anywhere else), and draws with plain DOM and SVG.
// Bounded: one refresh at a time, every REFRESH_MS; at most MAX_BLOCKS blocks kept, and a
// refresh fetches only those it does not hold yet, PARALLEL at a time.
// Text from the node or its peers only ever goes in through textContent.
"use strict";

(() => {
  const REFRESH_MS = 3000;
  const MAX_BLOCKS = 30;
  const PARALLEL = 4;
  const SVG_NS = "http://www.w3.org/2000/svg";
  const blocks = new Map(); // height -> {hash, height, prev_hash, timestamp_ms, txs, size}

  const $ = (id) => document.getElementById(id);
  const short = (hex) => (hex ? hex.slice(0, 16) : "-");

  async function getJSON(path) {
    const response = await fetch(path, { cache: "no-store" });
    if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
    return response.json();
  }

  function svg(tag, attrs = {}, text = null) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== null) node.textContent = text;
    return node;
  }

  function row(cells) {
    const tr = document.createElement("tr");
    for (const cell of cells) {
      const td = document.createElement("td");
      if (cell instanceof Node) td.appendChild(cell);
      else td.textContent = cell;
      tr.appendChild(td);
    }
    return tr;
  }

  function code(text, title) {
    const c = document.createElement("code");
    c.textContent = text;
    if (title) c.title = title;
    return c;
  }

  // --- blocks: the last MAX_BLOCKS of the main chain, re-fetched only where they changed ----

  async function fetchBlock(height) {
    const b = await getJSON(`/blocks/${height}`);
    return { hash: b.hash, height: b.height, prev_hash: b.prev_hash, timestamp_ms: b.timestamp_ms,
             txs: b.txs.length, size: b.size };
  }

  async function fetchMany(heights) {
    for (let i = 0; i < heights.length; i += PARALLEL) {
      const got = await Promise.all(heights.slice(i, i + PARALLEL).map(fetchBlock));
      for (const b of got) blocks.set(b.height, b);
    }
  }

  async function loadBlocks(status) {
    const top = status.height;
    const bottom = Math.max(0, top - MAX_BLOCKS + 1);
    for (const h of [...blocks.keys()]) if (h > top || h < bottom) blocks.delete(h);
    const missing = [];
    for (let h = top; h >= bottom; h--) if (!blocks.has(h)) missing.push(h);
    await fetchMany(missing);
    // Walk down from the tip: a kept block that is not the parent of the one above it was
    // replaced by a reorganisation; fetch it again (bounded by the window).
    let expect = status.tip;
    for (let h = top; h >= bottom; h--) {
      let b = blocks.get(h);
      if (b.hash !== expect) {
        b = await fetchBlock(h);
        blocks.set(h, b);
        if (b.hash !== expect) break; // the chain moved meanwhile: the next refresh catches up
      }
      expect = b.prev_hash;
    }
  }

  // --- drawing --------------------------------------------------------------------------------

  function showStatus(s) {
    $("name").textContent = s.name || short(s.node_id);
    document.title = `peerledger ${s.name || short(s.node_id)} - height ${s.height}`;
    $("network").textContent = `${s.network} (${s.consensus}) ${short(s.network_id)}`;
    $("node-id").textContent = s.node_id;
    $("height").textContent = String(s.height);
    $("tip").textContent = s.tip;
    $("tip").dataset.tip = s.tip;
    $("state-hash").textContent = s.state_hash;
    $("mempool").textContent = `${s.mempool_size} transactions, ${s.mempool_bytes} bytes`;
    $("syncing").textContent = s.syncing ? "catching up with peers" : "up to date";
    $("producing").textContent = s.producing
      ? `${s.blocks_produced} blocks${s.hash_rate ? `, ${s.hash_rate} hashes/s` : ""}` : "no";
    $("clock").textContent = `${s.clock_offset_ms} ms`;
  }

  function showPeers(self, peers) {
    const graph = $("graph");
    graph.replaceChildren();
    const live = peers.filter((p) => !("banned_until_ms" in p));
    const banned = peers.filter((p) => "banned_until_ms" in p);
    const everyone = [...live, ...banned];
    $("peer-count").textContent = `${live.filter((p) => p.ready).length} ready, ${banned.length} banned`;
    const cx = 210, cy = 150, r = everyone.length > 1 ? 110 : 90;
    const placed = everyone.map((p, i) => {
      const angle = -Math.PI / 2 + (2 * Math.PI * i) / Math.max(1, everyone.length);
      return { p, x: cx + r * Math.cos(angle), y: cy + r * Math.sin(angle) };
    });
    for (const { p, x, y } of placed) {
      if ("banned_until_ms" in p) continue;
      const cls = `edge ${p.direction === "inbound" ? "inbound" : "outbound"}`;
      graph.appendChild(svg("line", { x1: cx, y1: cy, x2: x, y2: y, class: cls }));
    }
    const me = svg("g", { class: "node self", "data-node-id": self });
    me.appendChild(svg("title", {}, `this node ${self}`));
    me.appendChild(svg("circle", { cx, cy, r: 14 }));
    me.appendChild(svg("text", { x: cx + 18, y: cy + 4 }, `this node ${short(self)}`));
    graph.appendChild(me);
    for (const { p, x, y } of placed) {
      const isBanned = "banned_until_ms" in p;
      const g = svg("g", { class: `node${isBanned ? " banned" : ""}`, "data-node-id": p.node_id });
      const about = isBanned
        ? `banned until ${new Date(p.banned_until_ms).toISOString()}`
        : `${p.direction} ${p.address || ""}${p.ready ? "" : " (handshake)"}`;
      g.appendChild(svg("title", {}, `${p.node_id} ${about}`));
      g.appendChild(svg("circle", { cx: x, cy: y, r: 9 }));
      const label = `${short(p.node_id)}${isBanned ? " banned" : ""}`;
      const left = x < cx - 5;
      g.appendChild(svg("text", { x: left ? x - 12 : x + 12, y: y + 4, "text-anchor": left ? "end" : "start" }, label));
      graph.appendChild(g);
    }
    const body = $("peers").tBodies[0];
    body.replaceChildren(...everyone.map((p) => row([
      code(short(p.node_id), p.node_id),
      "banned_until_ms" in p ? "banned" : `${p.direction}${p.ready ? "" : " (handshake)"}`,
      p.address || "-",
      p.height == null ? "-" : String(p.height),
      p.latency_ms == null ? "-" : `${Math.round(p.latency_ms)} ms`,
      p.score == null ? "-" : String(p.score),
    ])));
  }

  function chart(id, points, unit) {
    // points: [{x: height, y: value}], oldest first
    const el = $(id);
    el.replaceChildren();
    const W = 420, H = 160, L = 40, R = 10, T = 10, B = 22;
    el.appendChild(svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }));
    el.appendChild(svg("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }));
    if (points.length < 2) {
      el.appendChild(svg("text", { x: L + 10, y: H / 2 }, "waiting for blocks"));
      return;
    }
    const xs = points.map((p) => p.x), ys = points.map((p) => p.y);
    const x0 = Math.min(...xs), x1 = Math.max(...xs), y1 = Math.max(...ys, 1e-9);
    const px = (x) => L + ((x - x0) / Math.max(1, x1 - x0)) * (W - L - R);
    const py = (y) => H - B - (y / y1) * (H - T - B);
    const line = points.map((p) => `${px(p.x).toFixed(1)},${py(p.y).toFixed(1)}`).join(" ");
    el.appendChild(svg("polyline", { points: line, class: "line" }));
    el.appendChild(svg("text", { x: 2, y: T + 8 }, `${y1.toFixed(y1 < 10 ? 2 : 0)} ${unit}`));
    el.appendChild(svg("text", { x: 2, y: H - B }, `0`));
    el.appendChild(svg("text", { x: L, y: H - 6 }, `#${x0}`));
    el.appendChild(svg("text", { x: W - R, y: H - 6, "text-anchor": "end" }, `#${x1}`));
  }

  function showBlocks() {
    const list = [...blocks.values()].sort((a, b) => a.height - b.height);
    const intervals = [], rates = [];
    for (let i = 1; i < list.length; i++) {
      if (list[i].height !== list[i - 1].height + 1) continue;
      const seconds = Math.max(0.001, (list[i].timestamp_ms - list[i - 1].timestamp_ms) / 1000);
      intervals.push({ x: list[i].height, y: seconds });
      rates.push({ x: list[i].height, y: list[i].txs / seconds });
    }
    chart("interval-chart", intervals, "s");
    chart("rate-chart", rates, "tx/s");
    if (list.length > 1) {
      const span = (list[list.length - 1].timestamp_ms - list[0].timestamp_ms) / 1000;
      const txs = list.slice(1).reduce((n, b) => n + b.txs, 0);
      $("interval-avg").textContent = `mean ${(span / (list.length - 1)).toFixed(2)} s over ${list.length - 1} blocks`;
      $("rate-avg").textContent = `mean ${(txs / Math.max(span, 0.001)).toFixed(2)} tx/s`;
    }
    const byHeight = new Map(list.map((b) => [b.height, b]));
    const body = $("blocks").tBodies[0];
    body.replaceChildren(...list.slice().reverse().map((b) => {
      const parent = byHeight.get(b.height - 1);
      const interval = parent ? `${((b.timestamp_ms - parent.timestamp_ms) / 1000).toFixed(2)} s` : "-";
      return row([String(b.height), code(short(b.hash), b.hash),
                  new Date(b.timestamp_ms).toISOString().replace("T", " ").slice(0, 19),
                  String(b.txs), String(b.size), interval]);
    }));
  }

  async function refresh() {
    try {
      const [status, peers] = await Promise.all([getJSON("/status"), getJSON("/peers")]);
      showStatus(status);
      showPeers(status.node_id, peers);
      await loadBlocks(status);
      showBlocks();
      $("state").textContent = `updated ${new Date().toISOString().slice(11, 19)} UTC`;
      $("state").classList.remove("error");
    } catch (error) {
      $("state").textContent = `the node did not answer: ${error.message}`;
      $("state").classList.add("error");
    } finally {
      setTimeout(refresh, REFRESH_MS);
    }
  }

  refresh();
})();

// The three charts, drawn by uPlot (static/vendor/uPlot.iife.min.js, a global `uPlot`).
// Accuracy and loss change once a round: they redraw at once, in the same task as the run
// panel's cards, so a chart never shows an older round than the card beside it. The node-loss
// chart follows every progress frame: its redraws are throttled (at most one every
// REDRAW_MS), so a burst of frames costs one setData; it draws NODE_LINES_MAX lines at most,
// and says so under the chart when more nodes have trained.

import { int, num, pct, setText } from "./dom.js";

const REDRAW_MS = 400;
// Lines of the node-loss chart, as the federated chart's EVAL_NODES_MAX: more are unreadable.
export const NODE_LINES_MAX = 12;
export const HEIGHT = 220;
export const PALETTE = ["#2563eb", "#db2777", "#059669", "#d97706", "#7c3aed", "#0891b2", "#dc2626", "#4d7c0f"];
export const AXIS = { stroke: "#475569", grid: { stroke: "#e2e8f0", width: 1 }, ticks: { stroke: "#cbd5e1", width: 1 } };

export const roundTicks = (_u, splits) => splits.map((v) => (Number.isInteger(v) ? String(v) : ""));

export class Charts {
  /** @param {import("./state.js").DashboardState} state */
  constructor(state) {
    this.state = state;
    this.dirty = new Set();
    this.timer = null;
    this.plots = {};
    this.nodeKey = "";
    this.boxes = {
      accuracy: document.getElementById("chart-accuracy"),
      loss: document.getElementById("chart-loss"),
      nodes: document.getElementById("chart-nodes"),
    };
    this.observer = new ResizeObserver(() => this.resize());
    for (const box of Object.values(this.boxes)) this.observer.observe(box);
  }

  /** Redraw charts: "global" (accuracy and loss) now, "nodes" (per-node loss) throttled. */
  invalidate(...which) {
    for (const name of which) this.dirty.add(name);
    if (this.dirty.has("global") && typeof globalThis.uPlot === "function") {
      this.dirty.delete("global");
      this.drawGlobal();
    }
    if (this.dirty.size && this.timer === null) {
      this.timer = setTimeout(() => this.flush(), this.plots.nodes ? REDRAW_MS : 0);
    }
  }

  flush() {
    this.timer = null;
    if (typeof globalThis.uPlot !== "function") {
      this.timer = setTimeout(() => this.flush(), 100); // the deferred vendor script is not in yet
      return;
    }
    if (this.dirty.has("global")) this.drawGlobal();
    if (this.dirty.has("nodes")) this.drawNodes();
    this.dirty.clear();
  }

  xRange() {
    return (_u, _min, max) => [0, Math.max(this.state.run.rounds || 0, Number.isFinite(max) ? Math.ceil(max) : 0, 1)];
  }

  drawGlobal() {
    const history = this.state.history;
    const x = history.map((h) => h.round);
    // A round with no server test set (own data only) has no point: a gap, never 0%.
    const percent = (v) => (typeof v === "number" ? v * 100 : null);
    this.plot("accuracy", [x, history.map((h) => percent(h.test_accuracy))], () =>
      this.options("accuracy", [{ label: "test accuracy", stroke: PALETTE[0], fill: "rgba(37,99,235,0.08)" }], {
        y: { range: (_u, min) => [Math.max(0, Math.floor((Number.isFinite(min) ? min : 90) - 5)), 100] },
        yLabel: "%",
        yValues: (_u, splits) => splits.map((v) => `${v}%`),
      }),
    );
    this.plot("loss", [x, history.map((h) => (typeof h.test_loss === "number" ? h.test_loss : null))], () =>
      this.options("loss", [{ label: "test loss", stroke: PALETTE[1], fill: "rgba(219,39,119,0.07)" }], {
        y: { range: (_u, _min, max) => [0, Number.isFinite(max) && max > 0 ? max * 1.1 : 1] },
      }),
    );
    for (const name of ["accuracy", "loss"]) this.boxes[name].dataset.points = String(x.length);
    const last = history[history.length - 1];
    const onServer = typeof last?.test_accuracy === "number" ? pct(last.test_accuracy, 2) : "— (no server test set)";
    setText(document.getElementById("latest-accuracy"), last ? `round ${last.round}: ${onServer}` : "no round closed yet");
    setText(document.getElementById("latest-loss"), last ? `round ${last.round}: ${num(last.test_loss)}` : "");
  }

  /** The nodes drawn: all that have points while few do, else NODE_LINES_MAX of them, those
   * of the newest round first (with client sampling, the round's pick), in name order. */
  nodeLines() {
    const byName = (a, b) => this.state.nodeName(a).localeCompare(this.state.nodeName(b));
    const ids = [...this.state.nodeLoss.keys()].filter((id) => this.state.nodeLoss.get(id).length > 0).sort(byName);
    if (ids.length <= NODE_LINES_MAX) return { ids, of: ids.length };
    const round = (id) => Math.floor(this.state.nodeLoss.get(id).at(-1)[0]);
    const newest = [...ids].sort((a, b) => round(b) - round(a) || byName(a, b));
    return { ids: newest.slice(0, NODE_LINES_MAX).sort(byName), of: ids.length };
  }

  drawNodes() {
    const { ids, of } = this.nodeLines();
    const note = document.getElementById("nodes-chart-note");
    setText(note, of > ids.length
      ? `${int(of)} nodes have trained: ${ids.length} lines drawn, the nodes of the newest round first (one line each up to ${NODE_LINES_MAX}).`
      : "");
    note.hidden = of <= ids.length;
    const names = ids.map((id) => this.state.nodeName(id));
    const key = ids.map((id, i) => `${id}=${names[i]}`).join("|");
    const tables = ids.map((id) => {
      const points = this.state.nodeLoss.get(id);
      return [points.map((p) => p[0]), points.map((p) => p[1])];
    });
    const data = tables.length ? globalThis.uPlot.join(tables) : [[]];
    if (key !== this.nodeKey) {
      this.plots.nodes?.destroy();
      delete this.plots.nodes;
      this.nodeKey = key;
    }
    this.plot("nodes", data, () =>
      this.options(
        "nodes",
        names.map((name, i) => ({ label: name, stroke: PALETTE[i % PALETTE.length], spanGaps: true, points: { show: false } })),
        { y: { range: (_u, _min, max) => [0, Number.isFinite(max) && max > 0 ? max * 1.1 : 1] }, legend: true },
      ),
    );
    Object.assign(this.boxes.nodes.dataset, { series: String(ids.length), nodes: String(of) });
  }

  plot(name, data, makeOptions) {
    const box = this.boxes[name];
    const existing = this.plots[name];
    if (existing) {
      existing.setData(data);
      return;
    }
    box.replaceChildren();
    this.plots[name] = new globalThis.uPlot(makeOptions(), data, box);
  }

  options(name, series, { y, yValues, legend = false }) {
    return {
      width: Math.max(200, this.boxes[name].clientWidth),
      height: HEIGHT,
      legend: { show: legend, live: false },
      cursor: { drag: { x: false, y: false }, points: { size: 7 } },
      scales: { x: { time: false, range: this.xRange() }, y },
      axes: [
        { ...AXIS, label: "round", labelSize: 18, values: roundTicks, incrs: [1, 2, 5, 10, 20, 50, 100] },
        { ...AXIS, size: 52, values: yValues },
      ],
      series: [
        { label: "round" },
        ...series.map((s) => ({ width: 2, points: { show: true, size: 6 }, ...s })),
      ],
    };
  }

  /** A new run or a new snapshot: rebuild, so scales and series start from scratch. */
  reset() {
    for (const plot of Object.values(this.plots)) plot.destroy();
    this.plots = {};
    this.nodeKey = "";
    this.invalidate("global", "nodes");
  }

  resize() {
    for (const [name, plot] of Object.entries(this.plots)) {
      const width = Math.max(200, this.boxes[name].clientWidth);
      if (Math.abs(plot.width - width) > 1) plot.setSize({ width, height: HEIGHT });
    }
  }
}

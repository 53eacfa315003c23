// The federated evaluation of a job over the nodes' own data: each node's accuracy of every
// round's global model on its own test split (one line per node) and their weighted mean.
// Fed by the snapshot (history's and the job's `federated`, each node's latest `evaluation`,
// GET /monitor/nodes' `evaluations`) and by live `node_evaluated` events. Hidden while the
// job has no such figures: a shard job is evaluated on the server's test set, drawn beside.
// With more than EVAL_NODES_MAX nodes only the mean is drawn, and the caption says so.

import { AXIS, HEIGHT, PALETTE, roundTicks } from "./charts.js";
import { byId, int, pct, setText } from "./dom.js";
import { EVAL_NODES_MAX } from "./state.js";

const REDRAW_MS = 300; // a round's readings come in a burst, one per node: one redraw
const MEAN = { label: "weighted mean", stroke: "#0f172a", width: 3, spanGaps: true, points: { show: true, size: 6 } };

const percent = (v) => (typeof v === "number" && Number.isFinite(v) ? v * 100 : null);

export class FederatedChart {
  /** @param {import("./state.js").DashboardState} state */
  constructor(state) {
    this.state = state;
    this.figure = byId("federated-figure");
    this.box = byId("chart-federated");
    this.latest = byId("latest-federated");
    this.note = byId("federated-note");
    this.plot = null;
    this.key = ""; // the node lines drawn: another set rebuilds the chart
    this.timer = null;
    new ResizeObserver(() => this.resize()).observe(this.box);
  }

  invalidate() {
    if (this.timer === null) this.timer = setTimeout(() => this.draw(), this.plot ? REDRAW_MS : 0);
  }

  /** A new run or a new snapshot: rebuild from scratch. */
  reset() {
    this.destroy();
    this.invalidate();
  }

  destroy() {
    this.plot?.destroy();
    this.plot = null;
    this.key = "";
  }

  draw() {
    this.timer = null;
    if (typeof globalThis.uPlot !== "function") {
      this.timer = setTimeout(() => this.draw(), 100); // the deferred vendor script is not in yet
      return;
    }
    const { federated, nodeEvals } = this.state;
    this.figure.hidden = federated.size === 0 && nodeEvals.size === 0;
    if (this.figure.hidden) {
      this.destroy();
      return;
    }
    const names = [...nodeEvals.keys()].sort((a, b) => a.localeCompare(b));
    const rounds = new Set(federated.keys());
    for (const readings of nodeEvals.values()) for (const round of readings.keys()) rounds.add(round);
    const x = [...rounds].sort((a, b) => a - b);
    const data = [
      x,
      x.map((r) => percent(federated.get(r)?.accuracy)),
      ...names.map((name) => x.map((r) => percent(nodeEvals.get(name).get(r)))),
    ];
    const key = names.join("\n");
    if (key !== this.key) this.destroy();
    if (this.plot) this.plot.setData(data);
    else {
      this.box.replaceChildren();
      this.plot = new globalThis.uPlot(this.options(names), data, this.box);
      this.key = key;
    }
    const readings = data.slice(2).reduce((n, line) => n + line.filter((v) => v !== null).length, 0);
    Object.assign(this.box.dataset, { series: String(names.length), points: String(x.length), readings: String(readings) });
    this.caption();
  }

  caption() {
    const { federated, evalNodesOver } = this.state;
    const newest = federated.get(Math.max(...federated.keys()));
    setText(this.latest, newest
      ? `round ${newest.round}: ${pct(newest.accuracy, 2)} over ${int(newest.nodes)} node${newest.nodes === 1 ? "" : "s"}, ${int(newest.samples)} samples`
      : "");
    const most = Math.max(0, ...[...federated.values()].map((s) => s.nodes ?? 0));
    setText(this.note, evalNodesOver
      ? `${int(Math.max(most, EVAL_NODES_MAX + 1))} nodes report: only their weighted mean is drawn (one line each up to ${EVAL_NODES_MAX}).`
      : "");
    this.note.hidden = !evalNodesOver;
  }

  options(names) {
    const rounds = () => this.state.run.rounds || 0;
    return {
      width: Math.max(200, this.box.clientWidth),
      height: HEIGHT,
      legend: { show: true, live: false },
      cursor: { drag: { x: false, y: false }, points: { size: 7 } },
      scales: {
        x: { time: false, range: (_u, _min, max) => [0, Math.max(rounds(), Number.isFinite(max) ? Math.ceil(max) : 0, 1)] },
        y: { range: (_u, min) => [Math.max(0, Math.floor((Number.isFinite(min) ? min : 90) - 5)), 100] },
      },
      axes: [
        { ...AXIS, label: "round (0: the initial model)", labelSize: 18, values: roundTicks, incrs: [1, 2, 5, 10, 20, 50, 100] },
        { ...AXIS, size: 52, values: (_u, splits) => splits.map((v) => `${v}%`) },
      ],
      series: [
        { label: "round" },
        MEAN,
        ...names.map((name, i) => ({
          label: name, stroke: PALETTE[i % PALETTE.length], width: 1.5, spanGaps: true, points: { show: true, size: 4 },
        })),
      ],
    };
  }

  resize() {
    const width = Math.max(200, this.box.clientWidth);
    if (this.plot && Math.abs(this.plot.width - width) > 1) this.plot.setSize({ width, height: HEIGHT });
  }
}

// The node table: one row per node, kept by node id. A progress event updates the cells of
// its own row only; the whole table is re-synced only when nodes join, leave or change state.
// The Shard cell holds the shard's size and its label distribution bar (labels.js); the
// progress cell says which local epoch the bar is on when a round has several. Test acc is the
// node's latest reading of a global model on its own test split (jobs over its own data).

import { ago, byId, h, int, num, pct, setText } from "./dom.js";
import { LabelBar } from "./labels.js";

const STATE_LABELS = {
  idle: "idle", training: "training", waiting: "waiting", straggler: "straggler", offline: "offline",
  not_waited_for: "not waited for", evaluating: "evaluating",
};

export class NodeTable {
  /** @param {import("./state.js").DashboardState} state */
  constructor(state) {
    this.state = state;
    this.body = byId("nodes-body");
    this.empty = byId("nodes-empty");
    this.count = byId("nodes-count");
    this.rows = new Map(); // node_id -> {tr, cells}
  }

  /** Rebuild the row set (kept in name order) and refresh every row. */
  sync() {
    const nodes = [...this.state.nodes.values()].sort((a, b) => a.name.localeCompare(b.name));
    const seen = new Set();
    for (const node of nodes) {
      seen.add(node.node_id);
      const row = this.rows.get(node.node_id) ?? this.createRow(node);
      this.fill(row, node);
      this.body.append(row.tr); // append moves an existing row: this keeps name order
    }
    for (const [id, row] of this.rows) {
      if (!seen.has(id)) {
        row.tr.remove();
        this.rows.delete(id);
      }
    }
    const connected = nodes.filter((n) => n.connected).length;
    setText(this.count, nodes.length ? `${connected} connected${nodes.length > connected ? ` · ${nodes.length - connected} offline` : ""}` : "");
    this.empty.hidden = nodes.length > 0;
  }

  /** Refresh one node's row (a progress or upload event). */
  update(nodeId) {
    const node = this.state.nodes.get(nodeId);
    const row = this.rows.get(nodeId);
    if (node && row) this.fill(row, node);
    else if (node) this.sync();
  }

  /** Once a second: the "last seen" column. */
  tick() {
    const now = this.state.now();
    for (const [id, row] of this.rows) {
      const node = this.state.nodes.get(id);
      if (node) setText(row.cells.seen, ago(node.last_seen, now));
    }
  }

  createRow(node) {
    const cells = {
      name: h("strong"),
      detail: h("span", { class: "sub" }),
      device: h("td"),
      capacity: h("td", { class: "num" }),
      shard: h("span", { class: "shard-size" }),
      labels: new LabelBar(),
      badge: h("span", { class: "badge" }),
      missed: h("span", { class: "missed", title: "rounds this node missed (closed by partial average without it)" }),
      round: h("td", { class: "num" }),
      bar: h("progress", { max: "1", value: "0", "aria-label": `${node.name} local epoch` }),
      batch: h("span", { class: "bar-label" }),
      epoch: h("span", { class: "epoch-label", hidden: true }),
      loss: h("td", { class: "num" }),
      val: h("td", { class: "num" }),
      test: h("td", { class: "num col-test" }),
      seen: h("td", { class: "seen" }),
    };
    const tr = h(
      "tr",
      { class: "node-row", dataset: { nodeId: node.node_id } },
      h("th", { scope: "row" }, cells.name, cells.detail),
      cells.device,
      cells.capacity,
      h("td", { class: "num col-shard" }, cells.shard, cells.labels.el),
      h("td", { class: "col-state" }, cells.badge, cells.missed),
      cells.round,
      h("td", { class: "col-progress" }, h("div", { class: "bar" }, cells.epoch, cells.bar, cells.batch)),
      cells.loss,
      cells.val,
      cells.test,
      cells.seen,
    );
    const row = { tr, cells };
    this.rows.set(node.node_id, row);
    return row;
  }

  fill(row, node) {
    const { cells } = row;
    const state = node.connected === false ? "offline" : (node.state ?? "idle");
    setText(cells.name, node.name);
    setText(cells.detail, [node.node_id !== node.name ? node.node_id : null, node.version ? `v${node.version}` : null].filter(Boolean).join(" · "));
    setText(cells.device, node.device ?? "—");
    setText(cells.capacity, typeof node.capacity === "number" ? `${int(node.capacity)}/s` : "—");
    setText(cells.shard, node.shard_samples ? int(node.shard_samples) : "—");
    cells.labels.set(node.shard_labels ?? null, this.state.classNames());
    setText(cells.badge, STATE_LABELS[state] ?? state);
    cells.badge.className = `badge state-${state}`;
    const missed = this.state.missedRounds(node.name);
    setText(cells.missed, missed ? `missed ${missed}` : "");
    cells.missed.hidden = !missed;
    row.tr.className = `node-row row-${state}`;
    row.tr.dataset.state = state;
    setText(cells.round, node.round || "—");
    const batches = node.batches || 0;
    const batch = Math.min(node.batch || 0, batches);
    if (cells.bar.max !== Math.max(batches, 1)) cells.bar.max = Math.max(batches, 1);
    if (cells.bar.value !== batch) cells.bar.value = batch;
    setText(cells.batch, batches ? `${batch} / ${batches}` : "—");
    // Several local epochs: the bar restarts each epoch, so say which one it is on. A server
    // that does not report epochs shows nothing here.
    const epochs = node.epochs > 1 && node.epoch >= 1 ? node.epochs : 0;
    setText(cells.epoch, epochs ? `epoch ${Math.min(node.epoch, epochs)}/${epochs}` : "");
    cells.epoch.hidden = !epochs;
    setText(cells.loss, num(node.loss));
    setText(cells.val, pct(node.val_accuracy));
    // Own data: the node's latest reading of a global model on its own test split.
    const ev = node.evaluation;
    setText(cells.test, pct(ev?.accuracy));
    cells.test.title = ev ? `round ${ev.round}'s model on ${int(ev.samples)} test samples of its own, loss ${num(ev.loss)}` : "";
    setText(cells.seen, ago(node.last_seen, this.state.now()));
  }
}

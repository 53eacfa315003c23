// The node table: one row per node, kept by node id. Events only mark what they touched;
// the table is drawn once per animation frame, so a burst of progress frames from 100+
// nodes costs one pass over the rows they touched, and a join, leave or state change one
// re-plan of the page. Virtual nodes (names ending in -vNNN) group under their process, a
// folded group shows one summary row, and the rows come PAGE_ROWS a page (node_groups.js):
// only the page on show is in the DOM.
// The Shard cell holds the shard's size and its label distribution bar (labels.js); the
// progress cell says which local epoch the bar is on when a round has several. Test acc is the
// node's latest reading of a global model on its own test split (jobs over its own data).
// A node client sampling picked for the open round is marked; the others idle, "not sampled".

import { ago, byId, h, int, num, pct, setText } from "./dom.js";
import { LabelBar } from "./labels.js";
import { groupOf, pageOf, planRows, stateOf, summarize } from "./node_groups.js";

const STATE_LABELS = {
  idle: "idle", training: "training", waiting: "waiting", straggler: "straggler", offline: "offline",
  not_waited_for: "not waited for", evaluating: "evaluating", not_sampled: "idle: not sampled",
};
const COLUMNS = 11;

export class NodeTable {
  /** @param {import("./state.js").DashboardState} state */
  constructor(state) {
    this.state = state;
    this.body = byId("nodes-body");
    this.empty = byId("nodes-empty");
    this.count = byId("nodes-count");
    this.pager = { nav: byId("nodes-pager"), prev: byId("nodes-prev"), next: byId("nodes-next"), label: byId("nodes-page") };
    this.rows = new Map(); // node_id -> {tr, cells}, made when first on show
    this.planned = new Set(); // the node ids the last re-plan placed, on show or not
    this.groups = new Map(); // process name -> {tr, toggle, summary}
    this.open = new Set(); // the processes whose nodes are listed (the others are folded)
    this.page = 0;
    this.pending = new Set(); // node ids whose rows an event touched since the last frame
    this.replan = false;
    this.frame = null;
    // What the table did, for a test's log (or a curious person): frames drawn, full re-plans,
    // rows refilled, the last re-plan's milliseconds, and when rows were first on screen.
    this.stats = { frames: 0, plans: 0, fills: 0, planMs: 0, firstRowsAt: null };
    this.pager.prev.addEventListener("click", () => this.turn(-1));
    this.pager.next.addEventListener("click", () => this.turn(1));
  }

  /** Nodes joined, left or changed state: re-plan the page at the next frame. */
  sync() {
    this.replan = true;
    this.schedule();
  }

  /** One node's row changed (a progress or upload event): refill it at the next frame. */
  update(nodeId) {
    if (!this.planned.has(nodeId)) this.replan = true; // a node the page has not placed yet
    this.pending.add(nodeId);
    this.schedule();
  }

  schedule() {
    if (this.frame === null) this.frame = requestAnimationFrame(() => this.draw());
  }

  draw() {
    this.frame = null;
    this.stats.frames += 1;
    if (this.replan) this.render();
    else this.refresh();
    this.pending.clear();
    this.replan = false;
  }

  /** Refill the touched rows on show, and the summaries of their groups. */
  refresh() {
    const groups = new Set();
    for (const id of this.pending) {
      const node = this.state.nodes.get(id);
      const row = this.rows.get(id);
      if (node && row?.tr.isConnected) this.fill(row, node);
      const key = node ? groupOf(node.name) : null;
      if (key !== null) groups.add(key);
    }
    for (const key of groups) if (this.groups.get(key)?.tr.isConnected) this.fillGroup(key);
  }

  /** Re-plan: the rows in name order, grouped, and the page on show put in the body. */
  render() {
    const started = performance.now();
    this.stats.plans += 1;
    const nodes = [...this.state.nodes.values()].sort((a, b) => a.name.localeCompare(b.name));
    this.forgetGone(nodes);
    const { page, pages, first, rows } = pageOf(planRows(nodes, (key) => this.open.has(key)), this.page);
    this.page = page;
    this.body.replaceChildren(...rows.map((item) => {
      if (item.kind === "group") return this.fillGroup(item.key, item.nodes).tr;
      const row = this.rows.get(item.node.node_id) ?? this.createRow(item.node);
      this.fill(row, item.node);
      return row.tr;
    }));
    const total = this.body.childElementCount ? first + rows.length : 0;
    this.pager.nav.hidden = pages < 2;
    setText(this.pager.label, `page ${page + 1} of ${pages} · rows ${first + 1}-${total}`);
    this.pager.prev.disabled = page === 0;
    this.pager.next.disabled = page >= pages - 1;
    const connected = nodes.filter((n) => n.connected).length;
    setText(this.count, nodes.length ? `${connected} connected${nodes.length > connected ? ` · ${nodes.length - connected} offline` : ""}` : "");
    this.empty.hidden = nodes.length > 0;
    this.stats.planMs = performance.now() - started;
    if (nodes.length && this.stats.firstRowsAt === null) this.stats.firstRowsAt = performance.now();
  }

  forgetGone(nodes) {
    const ids = (this.planned = new Set(nodes.map((n) => n.node_id)));
    for (const id of this.rows.keys()) if (!ids.has(id)) this.rows.delete(id);
    const keys = new Set(nodes.map((n) => groupOf(n.name)));
    for (const key of this.groups.keys()) if (!keys.has(key)) this.groups.delete(key);
  }

  turn(by) {
    this.page += by;
    this.render();
  }

  /** Fold or unfold a process's nodes. */
  toggle(key) {
    if (this.open.has(key)) this.open.delete(key);
    else this.open.add(key);
    this.render();
  }

  /** Once a second: the "last seen" column of the rows on show. */
  tick() {
    const now = this.state.now();
    for (const [id, row] of this.rows) {
      const node = this.state.nodes.get(id);
      if (node && row.tr.isConnected) setText(row.cells.seen, ago(node.last_seen, now));
    }
  }

  /** A process's summary row: how many nodes, in which states, picked, and mean progress. */
  fillGroup(key, members) {
    let group = this.groups.get(key);
    if (!group) {
      const toggle = h("button", { type: "button", class: "group-toggle" });
      toggle.addEventListener("click", () => this.toggle(key));
      const summary = h("span", { class: "group-summary" });
      const tr = h("tr", { class: "group-row", dataset: { group: key } }, h("th", { scope: "rowgroup", colspan: String(COLUMNS) }, toggle, summary));
      group = { tr, toggle, summary };
      this.groups.set(key, group);
    }
    const nodes = members ?? [...this.state.nodes.values()].filter((n) => groupOf(n.name) === key);
    const open = this.open.has(key);
    const { count, states, picked, progress } = summarize(nodes, (n) => this.state.isPicked(n));
    setText(group.toggle, `${open ? "▾" : "▸"} ${key}`);
    group.toggle.setAttribute("aria-expanded", String(open));
    group.toggle.title = `${open ? "fold" : "list"} the ${count} virtual nodes of ${key}`;
    setText(group.summary, [
      `${int(count)} node${count === 1 ? "" : "s"}`,
      states.map(([state, n]) => `${int(n)} ${STATE_LABELS[state] ?? state}`).join(", "),
      picked ? `${int(picked)} picked this round` : null,
      `mean progress ${progress === null ? "—" : pct(progress, 0)}`,
    ].filter(Boolean).join(" · "));
    Object.assign(group.tr.dataset, { count: String(count), picked: String(picked) });
    return group;
  }

  createRow(node) {
    const cells = {
      name: h("strong"),
      picked: h("span", { class: "pick-mark", hidden: true }, "picked this round"),
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
      h("th", { scope: "row" }, cells.name, cells.picked, cells.detail),
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
    this.stats.fills += 1;
    const { cells } = row;
    const state = stateOf(node);
    setText(cells.name, node.name);
    const picked = this.state.isPicked(node);
    cells.picked.hidden = !picked;
    cells.picked.title = picked ? `client sampling picked this node for round ${this.state.run.round}` : "";
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
    row.tr.className = `node-row row-${state}${picked ? " row-picked" : ""}`;
    row.tr.dataset.state = state;
    row.tr.dataset.picked = String(picked);
    setText(cells.round, node.round || "—");
    this.fillProgress(cells, node);
    setText(cells.loss, num(node.loss));
    setText(cells.val, pct(node.val_accuracy));
    // Own data: the node's latest reading of a global model on its own test split.
    const ev = node.evaluation;
    setText(cells.test, pct(ev?.accuracy));
    cells.test.title = ev ? `round ${ev.round}'s model on ${int(ev.samples)} test samples of its own, loss ${num(ev.loss)}` : "";
    setText(cells.seen, ago(node.last_seen, this.state.now()));
  }

  fillProgress(cells, node) {
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
  }
}

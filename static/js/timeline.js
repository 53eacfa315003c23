// The event timeline, newest first: one line of plain words per stored event, naming a
// dozen nodes at most (a job over 100+ nodes lists the first and counts the others).

import { byId, clock, duration, h, int, num, pct } from "./dom.js";

const MAX_ITEMS = 200;

const NAMES_MAX = 12; // a line names this many nodes at most: 100+ names are not a sentence

const list = (names, separator = ", ") => {
  if (!names || !names.length) return "none";
  const more = names.length - NAMES_MAX;
  return more > 0 ? `${names.slice(0, NAMES_MAX).join(separator)} and ${int(more)} more` : names.join(separator);
};

/** One sentence per event kind; unknown kinds still show, with their raw data. */
const DESCRIBE = {
  node_joined: (d, name) => `${name} joined — ${d.device ?? "?"}, ${int(d.capacity)} samples/s`,
  node_left: (d, name) => `${d.name ?? name} left: ${d.reason ?? "disconnected"}`,
  dataset_prepared: (d) =>
    `${d.dataset_id} prepared from ${d.source}: ${int(d.train_samples)} train / ${int(d.test_samples)} test samples`,
  shards_planned: (d) =>
    `${d.dataset} split over ${Object.keys(d.shards ?? {}).length} nodes: ` +
    list(Object.entries(d.shards ?? {}).map(([n, s]) => `${n} ${int(s)}`), " · "),
  job_started: (d) =>
    `job started: ${d.rounds} rounds of ${d.dataset} on ${list(d.nodes)} (${d.aggregation} averaging)`,
  round_opened: (d) =>
    `round ${d.round} opened for ${list(d.expected)}${Array.isArray(d.sampled) ? " (client sampling's pick)" : ""}` +
    ((d.not_waited_for ?? []).length ? `; not waiting for ${list(d.not_waited_for)} (missed rounds)` : ""),
  upload_refused: (d, name) => `${name}'s upload for round ${d.round} was refused: ${d.error}`,
  average_refused: (d) => `round ${d.round}: the average was not finite, the weights were kept`,
  upload_accepted: (d, name) =>
    `${name} uploaded round ${d.round}: ${int(d.samples)} samples, loss ${num(d.train_loss)}, ` +
    `val acc ${pct(d.val_accuracy)}, ${duration(d.seconds)}`,
  partial_average: (d) =>
    `round ${d.round} closed by partial average of ${list(d.contributors)}; missing ${list(d.missing)}`,
  straggler: (d, name) => `${name} straggled: round ${d.round} went ahead without it`,
  deadline_extended: (d) => `round ${d.round}: no upload by the deadline, waiting longer (${d.empty_deadlines}×)`,
  round_closed: (d) =>
    `round ${d.round} of ${d.rounds} closed: ` +
    (typeof d.test_accuracy === "number" ? `test accuracy ${pct(d.test_accuracy, 2)}, loss ${num(d.test_loss)}` : "no server test set") +
    (d.federated ? `, nodes' weighted mean ${pct(d.federated.accuracy, 2)}` : "") + " — " +
    `${(d.contributors ?? []).length} nodes, ${int(d.samples)} samples, ${duration(d.seconds)}` +
    (d.partial ? " (partial)" : ""),
  node_evaluated: (d, name) =>
    `${d.name ?? name} tested round ${d.round}'s model on its own data: ${pct(d.accuracy, 2)} of ${int(d.samples)}, ` +
    `loss ${num(d.loss)}; weighted mean ${pct(d.federated?.accuracy, 2)} over ${int(d.federated?.nodes)} node${d.federated?.nodes === 1 ? "" : "s"}`,
  job_done: (d) => `job done: final test accuracy ${pct(d.final_accuracy, 2)}${d.model_name ? `, saved ${d.model_name}` : ""}`,
  job_failed: (d) => `job failed: ${d.error ?? "unknown error"}`,
  job_stopped: (d) => `job stopped: ${d.error ?? "by the operator"}`,
};

const TONE = {
  node_left: "warn", straggler: "warn", partial_average: "warn", deadline_extended: "warn",
  upload_refused: "bad", average_refused: "bad",
  job_failed: "bad", job_stopped: "warn", job_done: "good", round_closed: "good",
};

export class Timeline {
  /** @param {import("./state.js").DashboardState} state */
  constructor(state) {
    this.state = state;
    this.el = byId("timeline");
  }

  renderAll() {
    this.el.replaceChildren(...this.state.timeline.map((ev) => this.item(ev)));
    if (!this.state.timeline.length) this.el.append(h("li", { class: "empty" }, "No events yet."));
  }

  prepend(ev) {
    this.el.querySelector(":scope > li.empty")?.remove();
    this.el.prepend(this.item(ev));
    while (this.el.childElementCount > MAX_ITEMS) this.el.lastElementChild.remove();
  }

  item(ev) {
    const name = this.state.nodeName(ev.node_id);
    const describe = DESCRIBE[ev.kind];
    let text;
    try {
      text = describe ? describe(ev.data ?? {}, name) : `${name ? `${name}: ` : ""}${JSON.stringify(ev.data ?? {})}`;
    } catch {
      text = JSON.stringify(ev.data ?? {});
    }
    return h(
      "li",
      { class: `event tone-${TONE[ev.kind] ?? "info"}`, dataset: { kind: ev.kind } },
      h("time", { datetime: new Date(ev.ts * 1000).toISOString() }, clock(ev.ts)),
      h("span", { class: "kind" }, String(ev.kind).replaceAll("_", " ")),
      h("span", { class: "text" }, text),
    );
  }
}

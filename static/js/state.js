// The dashboard's model of the federation: built from the snapshot, then folded event by
// event. No DOM here: `apply` returns which parts of the page changed so the view can
// update only those (a progress event touches one node row and the node-loss chart).

const TIMELINE_MAX = 200;
const NODE_POINTS_MAX = 1200;
// Nodes whose own-data readings are kept one by one (each a line of the federated chart):
// beyond this many, only the weighted mean is kept, and drawn.
export const EVAL_NODES_MAX = 12;
// Offline nodes kept, as the server's FEDAVG_MAX_OFFLINE_NODES default: made-up ids that
// come and go must not grow the page for as long as it is open.
const OFFLINE_NODES_MAX = 256;
const FINISHED = { job_done: "completed", job_failed: "failed", job_stopped: "stopped" };

export class DashboardState {
  constructor() {
    this.reset();
  }

  reset() {
    this.run = { state: "idle", round: 0, rounds: 0, partial_rounds: 0 };
    this.dataset = null; // {dataset_id, source} of the last prepared dataset
    this.preparing = null; // {dataset, stage, done, total} of the preparation under way
    this.preparedAt = new Map(); // dataset id -> server time its last preparation ended
    this.history = []; // round_closed data, in round order
    this.nodes = new Map(); // node_id -> node view, as in GET /nodes, kept current by events
    this.nodeLoss = new Map(); // node_id -> [[x, loss], ...] with x = round - 1 + batch/batches
    // Own-data jobs: the nodes' readings of each round's model on their own test splits.
    this.federated = new Map(); // round -> the nodes' weighted mean {accuracy, loss, samples, nodes}
    this.nodeEvals = new Map(); // node name -> Map(round -> accuracy), EVAL_NODES_MAX names at most
    this.evalNodesOver = false; // more nodes reported than EVAL_NODES_MAX: only the mean is kept
    this.timeline = []; // newest first
    this.skew = 0; // server clock minus ours, seconds
  }

  /** Server time now, in epoch seconds. */
  now() {
    return Date.now() / 1000 + this.skew;
  }

  loadSnapshot(msg) {
    this.reset();
    const status = msg.status ?? {};
    const now = this.now();
    this.run = {
      ...status,
      partial_rounds: status.partial_rounds ?? 0,
      roundStartedAt: status.round_open && status.time_in_round_s != null ? now - status.time_in_round_s : null,
      deadlineAt: status.round_open && status.deadline_in_s != null ? now + status.deadline_in_s : null,
    };
    if (status.dataset) this.dataset = { dataset_id: status.dataset, source: status.dataset_source };
    this.history = [...(status.history ?? [])];
    for (const summary of [...(status.federated ?? []), ...this.history.map((h) => h.federated)]) {
      this.addFederated(summary);
    }
    for (const node of msg.nodes ?? []) {
      this.nodes.set(node.node_id, { ...node });
      if (node.evaluation) this.addEvaluation(node.name, node.evaluation);
    }
    this.timeline = (msg.timeline ?? []).slice(0, TIMELINE_MAX);
    if (!this.dataset) {
      const prepared = this.timeline.find((e) => e.kind === "dataset_prepared");
      if (prepared) this.dataset = { ...prepared.data };
    }
  }

  /** A preparation this page asked for has answered (or failed): its bar goes. */
  endPreparing(datasetId) {
    this.preparedAt.set(datasetId, this.now());
    if (this.preparing?.dataset !== datasetId) return false;
    this.preparing = null;
    return true;
  }

  /** Label names of the run's dataset (GET /datasets' class_names), when known. */
  classNames() {
    const wanted = this.run.dataset ?? this.dataset?.dataset_id;
    const names = this.dataset?.dataset_id === wanted ? this.dataset?.class_names : undefined;
    return Array.isArray(names) ? names : null;
  }

  /** GET /datasets: details (source, sample counts) of the run's dataset or the newest one. */
  loadDatasets(list) {
    const datasets = list ?? [];
    const wanted = this.run.dataset ?? this.dataset?.dataset_id;
    const newest = [...datasets].sort((a, b) => String(b.prepared_at).localeCompare(String(a.prepared_at)))[0];
    const match = datasets.find((d) => d.dataset_id === wanted) ?? newest;
    if (match) this.dataset = { ...match };
    return Boolean(match);
  }

  /** Per-round losses and own-data readings of each node in the current run (GET /monitor/nodes). */
  loadNodeHistory(details) {
    if (!details || details.run_id !== this.run.run_id) return false;
    for (const node of details.nodes ?? []) {
      for (const reading of node.evaluations ?? []) this.addEvaluation(node.name, reading);
      const points = (node.history ?? [])
        .filter((h) => typeof h.train_loss === "number")
        .map((h) => [h.round, h.train_loss]);
      const live = this.nodeLoss.get(node.node_id) ?? [];
      const merged = new Map([...points, ...live].map(([x, y]) => [x, y]));
      this.nodeLoss.set(node.node_id, [...merged].sort((a, b) => a[0] - b[0]));
    }
    return true;
  }

  nodeName(nodeId) {
    return this.nodes.get(nodeId)?.name ?? nodeId ?? "";
  }

  /** How many closed rounds of this run went ahead without the named node. */
  missedRounds(name) {
    return this.history.filter((h) => (h.missing ?? []).includes(name)).length;
  }

  /** Whether client sampling picked the node for the round open (or the last one) of the
   * running job; never while every node trains (`sampled` is null then). */
  isPicked(node) {
    const { sampled, state } = this.run;
    return state === "running" && Array.isArray(sampled) && node.connected !== false && sampled.includes(node.name);
  }

  nodeByName(name) {
    for (const node of this.nodes.values()) if (node.name === name) return node;
    return undefined;
  }

  /** Fold one event; returns {run, node, nodes, timeline, charts, nodeChart, evalChart, models,
   * preparing, datasets}. */
  apply(ev) {
    if (typeof ev.ts === "number") this.skew = ev.ts - Date.now() / 1000;
    const changed = {};
    if (ev.id !== null && ev.id !== undefined) {
      this.timeline.unshift(ev);
      if (this.timeline.length > TIMELINE_MAX) this.timeline.length = TIMELINE_MAX;
      changed.timeline = true;
    }
    const node = ev.node_id ? this.nodes.get(ev.node_id) : undefined;
    if (node) node.last_seen = ev.ts;
    const handler = HANDLERS[ev.kind];
    if (handler) handler(this, ev, ev.data ?? {}, node, changed);
    if (node && !changed.nodes) changed.node = ev.node_id;
    return changed;
  }

  /** A round's weighted mean of the nodes' readings (a later summary of a round has more). */
  addFederated(summary) {
    if (!summary || typeof summary.round !== "number" || typeof summary.accuracy !== "number") return;
    const known = this.federated.get(summary.round);
    if (!known || (summary.samples ?? 0) >= (known.samples ?? 0)) this.federated.set(summary.round, summary);
  }

  /** One node's reading {round, accuracy} of a round's model; per node while few report. */
  addEvaluation(name, { round, accuracy }) {
    if (this.evalNodesOver || typeof round !== "number" || typeof accuracy !== "number") return;
    if (!this.nodeEvals.has(name) && this.nodeEvals.size >= EVAL_NODES_MAX) {
      this.evalNodesOver = true;
      this.nodeEvals.clear();
      return;
    }
    if (!this.nodeEvals.has(name)) this.nodeEvals.set(name, new Map());
    this.nodeEvals.get(name).set(round, accuracy);
  }

  addLossPoint(nodeId, x, loss) {
    if (typeof loss !== "number" || !Number.isFinite(loss)) return;
    let points = this.nodeLoss.get(nodeId);
    if (!points) this.nodeLoss.set(nodeId, (points = []));
    const last = points[points.length - 1];
    if (last && last[0] === x) last[1] = loss;
    else if (!last || last[0] < x) points.push([x, loss]);
    else return; // an old round arriving late: the chart is already past it
    if (points.length > NODE_POINTS_MAX) {
      // Thin the older half; round ends (integer x) are kept so the per-round shape survives.
      const half = points.length >> 1;
      const old = points.slice(0, half).filter((p, i) => i % 2 === 0 || Number.isInteger(p[0]));
      this.nodeLoss.set(nodeId, old.concat(points.slice(half)));
    }
  }
}

/** Drop the longest-known offline nodes beyond OFFLINE_NODES_MAX, never one of this run. */
function forgetOldOffline(state) {
  let excess = -OFFLINE_NODES_MAX;
  for (const node of state.nodes.values()) if (!node.connected) excess += 1;
  for (const [id, node] of state.nodes) {
    if (excess <= 0) break;
    if (node.connected || (state.run.run_id && node.job_id === state.run.run_id)) continue;
    state.nodes.delete(id);
    state.nodeLoss.delete(id);
    excess -= 1;
  }
}

/** How far into its round a progress frame is, 0..1: batch i of n of epoch e of E (the
 * bar restarts each epoch), or of the one epoch when the frame names none; null if unknown. */
function roundShare({ batch, batches, epoch, epochs }) {
  if (!(batches > 0)) return null;
  const inEpoch = batch / batches;
  return epochs > 1 && epoch >= 1 ? (Math.min(epoch, epochs) - 1 + inEpoch) / epochs : inEpoch;
}

function setDeadline(state, deadline, ts) {
  state.run.deadlineAt = typeof deadline === "number" ? state.now() + (deadline - ts) : null;
}

const HANDLERS = {
  node_joined(state, ev, data, _node, changed) {
    state.nodes.set(data.node_id ?? ev.node_id, { ...data });
    changed.nodes = true;
  },
  node_left(state, ev, _data, node, changed) {
    if (node) Object.assign(node, { connected: false, state: "offline" });
    forgetOldOffline(state);
    changed.nodes = true;
  },
  progress(state, ev, data, node, changed) {
    if (node) {
      Object.assign(node, {
        round: data.round, batch: data.batch, batches: data.batches, loss: data.loss, state: "training",
        epoch: data.epoch, epochs: data.epochs, // absent from an older server's frames
      });
    }
    const x = roundShare(data);
    if (x !== null) state.addLossPoint(ev.node_id, data.round - 1 + x, data.loss);
    changed.nodeChart = true;
  },
  dataset_progress(state, ev, data, _node, changed) {
    // A report sent before this page saw that preparation end is late, not a new one.
    if (typeof ev.ts === "number" && ev.ts <= (state.preparedAt.get(data.dataset) ?? -Infinity)) return;
    state.preparing = { dataset: data.dataset, stage: data.stage, done: data.done, total: data.total };
    changed.preparing = true;
  },
  dataset_prepared(state, ev, data, _node, changed) {
    state.dataset = {
      dataset_id: data.dataset_id, source: data.source, source_detail: data.source_detail,
      train_samples: data.train_samples, test_samples: data.test_samples, input_shape: data.input_shape,
    };
    if (typeof ev.ts === "number") state.preparedAt.set(data.dataset_id, ev.ts);
    if (state.preparing?.dataset === data.dataset_id) state.preparing = null;
    Object.assign(changed, { run: true, preparing: true, datasets: true });
  },
  shards_planned(state, _ev, data, _node, changed) {
    const labels = data.labels ?? {};
    for (const [name, samples] of Object.entries(data.shards ?? {})) {
      const node = state.nodeByName(name);
      if (node) Object.assign(node, { shard_samples: samples, shard_labels: labels[name] ?? null });
    }
    changed.nodes = true;
  },
  job_started(state, ev, data, _node, changed) {
    state.run = {
      state: "running", run_id: ev.run_id, dataset: data.dataset, dataset_source: data.source,
      round: 0, rounds: data.rounds, round_open: false, partial_rounds: 0, aggregation: data.aggregation,
      model: data.model, train: data.train, server_opt: data.server_opt, partition: data.partition,
      data_mode: data.data_mode, test_set: data.test_set, sampling: data.sampling, sampled: null,
      nodes: data.nodes,
    };
    if (state.dataset?.dataset_id !== data.dataset) {
      state.dataset = { dataset_id: data.dataset, source: data.source };
      changed.datasets = true; // its counts and class names come from GET /datasets
    }
    state.history = [];
    state.nodeLoss.clear();
    Object.assign(state, { federated: new Map(), nodeEvals: new Map(), evalNodesOver: false });
    for (const node of state.nodes.values()) node.evaluation = null; // readings of an older job
    Object.assign(changed, { run: true, nodes: true, charts: true, nodeChart: true, evalChart: true });
  },
  round_opened(state, ev, data, _node, changed) {
    Object.assign(state.run, {
      round: data.round, round_open: true, roundStartedAt: state.now(), expected: data.expected ?? [], received: [],
      sampled: Array.isArray(data.sampled) ? data.sampled : null,
    });
    // Client sampling: the job's connected nodes it did not pick idle this round. The job's
    // nodes are job_started's; after a snapshot (whose status does not list them), the
    // nodes holding a shard.
    if (Array.isArray(data.sampled)) {
      const picked = new Set(data.sampled);
      const job = Array.isArray(state.run.nodes) ? new Set(state.run.nodes) : null;
      for (const node of state.nodes.values()) {
        const inJob = job ? job.has(node.name) : node.shard_samples > 0;
        if (node.connected && inJob && !picked.has(node.name)) node.state = "not_sampled";
      }
    }
    setDeadline(state, data.deadline, ev.ts);
    for (const name of data.expected ?? []) {
      const node = state.nodeByName(name);
      if (node && node.connected) Object.assign(node, { state: "training", round: data.round, batch: 0, epoch: 1 });
    }
    // Missed too many rounds in a row: the round does not wait for them (until they upload).
    for (const name of data.not_waited_for ?? []) {
      const node = state.nodeByName(name);
      if (node && node.connected) node.state = "not_waited_for";
    }
    Object.assign(changed, { run: true, nodes: true });
  },
  deadline_extended(state, ev, data, _node, changed) {
    setDeadline(state, data.deadline, ev.ts);
    changed.run = true;
  },
  upload_accepted(state, ev, data, node, changed) {
    if (node) {
      Object.assign(node, { state: "waiting", val_accuracy: data.val_accuracy ?? node.val_accuracy });
      if (typeof data.train_loss === "number") node.loss = data.train_loss;
      if (node.batches) node.batch = node.batches;
      if (node.epochs) node.epoch = node.epochs;
    }
    state.addLossPoint(ev.node_id, data.round, data.train_loss);
    if (data.round === state.run.round && state.run.round_open) {
      const name = state.nodeName(ev.node_id);
      state.run.received = [...new Set([...(state.run.received ?? []), name])];
      changed.run = true;
    }
    changed.nodeChart = true;
  },
  straggler(_state, _ev, _data, node) {
    if (node && node.connected) node.state = "straggler";
  },
  round_closed(state, _ev, data, _node, changed) {
    state.history = state.history.filter((h) => h.round !== data.round).concat([data]);
    // The next round opens (and its weights go out) before this one is evaluated and
    // recorded: a late round_closed must not mark the open round closed.
    if (data.round >= state.run.round) {
      Object.assign(state.run, { round: data.round, round_open: false, roundStartedAt: null, deadlineAt: null });
    }
    state.run.partial_rounds = state.history.filter((h) => h.partial).length;
    state.addFederated(data.federated);
    Object.assign(changed, { run: true, charts: true, evalChart: true, nodes: Boolean(data.partial) });
  },
  node_evaluated(state, ev, data, node, changed) {
    const reading = { round: data.round, accuracy: data.accuracy, loss: data.loss, samples: data.samples };
    if (node) Object.assign(node, { evaluation: reading });
    // An evaluation-only job's readings fill the rows, not the chart of the run on show.
    if (ev.run_id && ev.run_id !== state.run.run_id) return;
    state.addEvaluation(data.name ?? state.nodeName(ev.node_id), reading);
    state.addFederated(data.federated);
    changed.evalChart = true;
  },
};

for (const kind of Object.keys(FINISHED)) {
  HANDLERS[kind] = (state, _ev, data, _node, changed) => {
    Object.assign(state.run, {
      state: data.status ?? FINISHED[kind], error: data.error, round_open: false,
      roundStartedAt: null, deadlineAt: null, model_url: data.model_url || null,
      final_accuracy: data.final_accuracy,
    });
    for (const node of state.nodes.values()) if (node.connected) node.state = "idle";
    Object.assign(changed, { run: true, nodes: true, models: true });
  };
}

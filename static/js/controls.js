// The control form: prepare MNIST, start a job of N epochs, stop it. When the server has an
// admin token, the form shows a password field (kept in sessionStorage) and asks for it.

import { adminToken, api } from "./api.js";
import { byId, int, setText } from "./dom.js";

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
      epochs: byId("epochs"), message: byId("control-message"),
    };
    this.el.tokenRow.hidden = !tokenRequired;
    this.el.token.value = adminToken.get();
    this.el.token.addEventListener("input", () => adminToken.set(this.el.token.value.trim()));
    this.el.form.addEventListener("submit", (event) => event.preventDefault());
    this.el.prepare.addEventListener("click", () => this.run("prepare"));
    this.el.start.addEventListener("click", () => this.run("start"));
    this.el.stop.addEventListener("click", () => this.run("stop"));
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
      this.say("info", WORKING[action]);
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

  /** Buttons follow the run: start while nothing runs, stop while something does. */
  render() {
    const running = ["running", "starting"].includes(this.state.run.state);
    this.el.prepare.disabled = this.busy;
    this.el.start.disabled = this.busy || running;
    this.el.stop.disabled = this.busy || !running;
  }
}

const WORKING = {
  prepare: "Preparing MNIST…",
  start: "Planning shards and starting the job…",
  stop: "Stopping the job…",
};

const ACTIONS = {
  async prepare() {
    const info = await api("POST", "/datasets/prepare-mnist", { admin: true });
    return `MNIST ready from ${info.source}: ${int(info.train_samples)} train / ${int(info.test_samples)} test samples.`;
  },
  async start(controls) {
    const epochs = controls.epochs();
    const job = await api("POST", `/train/mnist?epochs=${epochs}`, { admin: true });
    return `Job ${job.job_id} started: ${job.rounds} rounds on ${job.nodes} nodes.`;
  },
  async stop() {
    const job = await api("POST", "/jobs/stop", { admin: true });
    return `Job ${job.job_id} ${job.state}.`;
  },
};

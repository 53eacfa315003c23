// The live dashboard: one WebSocket feeds the state, the state feeds the views.
// A snapshot (on every connect) re-renders everything; an event updates only what it touched.

import { api } from "./api.js";
import { Charts } from "./charts.js";
import { Controls } from "./controls.js";
import { FederatedChart } from "./federated.js";
import { byId, setText } from "./dom.js";
import { ModelList } from "./models.js";
import { NodeTable } from "./nodes.js";
import { RunPanel } from "./run.js";
import { DashboardSocket } from "./socket.js";
import { DashboardState } from "./state.js";
import { Timeline } from "./timeline.js";

// Set once per page load: a test (or a curious person) can tell a live update from a reload.
window.__loadId ??= `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;

const state = new DashboardState();
const views = {
  run: new RunPanel(state),
  nodes: new NodeTable(state),
  timeline: new Timeline(state),
  charts: new Charts(state),
  federated: new FederatedChart(state),
  models: new ModelList(),
  controls: new Controls(state, document.body.dataset.adminTokenRequired === "true"),
};
const conn = byId("conn");
const ENDS = new Set(["job_done", "job_failed", "job_stopped"]);
// What handling the feed costs, in milliseconds: the last snapshot's render (the node table
// draws at the next animation frame: its own figures are views.nodes.stats), and the events'
// total and slowest. Read by the many-nodes browser test, which logs them.
const timings = { snapshotMs: null, events: 0, eventMs: 0, eventMaxMs: 0 };
// The page's model and views, for a test (or a curious person) to read what is drawn.
window.__dashboard = { state, views, timings };

function onSnapshot(msg) {
  state.loadSnapshot(msg);
  views.run.render();
  views.nodes.sync();
  views.timeline.renderAll();
  views.charts.reset();
  views.federated.reset();
  views.controls.render();
  views.controls.renderProgress();
  views.models.refresh();
  loadNodeHistory();
  loadDatasets();
}

/** What the snapshot does not carry: per-node loss history and own-data readings of the run. */
async function loadNodeHistory() {
  const runId = state.run.run_id;
  if (!runId) return;
  const details = await api("GET", "/monitor/nodes").catch(() => null);
  if (state.run.run_id !== runId) return; // a newer snapshot or job took over meanwhile
  if (state.loadNodeHistory(details)) {
    views.charts.invalidate("nodes");
    views.federated.invalidate();
  }
}

/** GET /datasets feeds the dataset picker and the run panel's counts. A call made while one
 * is in flight (a dataset_prepared right after a snapshot) runs once more after it. */
let datasetsPending = null;
let datasetsAgain = false;
function loadDatasets() {
  if (datasetsPending) {
    datasetsAgain = true;
    return;
  }
  datasetsPending = api("GET", "/datasets")
    .then((body) => {
      views.controls.setDatasets(body);
      if (state.loadDatasets(body?.datasets)) {
        views.run.render();
        views.nodes.sync(); // class names for the label bars' text
      }
    })
    .catch((err) => views.controls.datasetsFailed(err))
    .finally(() => {
      datasetsPending = null;
      if (datasetsAgain) {
        datasetsAgain = false;
        loadDatasets();
      }
    });
}

function onEvent(ev) {
  const changed = state.apply(ev);
  if (changed.timeline) views.timeline.prepend(ev);
  if (changed.nodes) views.nodes.sync();
  else if (changed.node) views.nodes.update(changed.node);
  if (changed.run) {
    views.run.render();
    views.controls.render();
  }
  if (changed.charts) views.charts.invalidate("global");
  if (changed.nodeChart) views.charts.invalidate("nodes");
  if (changed.evalChart) views.federated.invalidate();
  if (ev.kind === "job_started") {
    views.charts.reset();
    views.federated.reset();
  }
  if (ENDS.has(ev.kind)) views.controls.jobEnded(state.run);
  if (changed.models) views.models.refresh();
  if (changed.preparing) views.controls.renderProgress();
  if (changed.datasets) loadDatasets();
}

const socket = new DashboardSocket({
  onMessage(msg) {
    const started = performance.now();
    if (msg.type === "snapshot") {
      onSnapshot(msg);
      timings.snapshotMs = performance.now() - started;
    } else if (msg.type === "event") {
      onEvent(msg);
      const spent = performance.now() - started;
      Object.assign(timings, { events: timings.events + 1, eventMs: timings.eventMs + spent, eventMaxMs: Math.max(timings.eventMaxMs, spent) });
    }
  },
  onStatus(status, detail) {
    conn.className = `conn conn-${status}`;
    conn.dataset.status = status;
    document.body.classList.toggle("stale", status !== "live");
    if (status === "live") setText(conn, "live");
    else if (status === "connecting") setText(conn, "connecting…");
    else {
      setText(conn, "disconnected · reconnecting…");
      conn.title = `next attempt at ${new Date(detail.retryAt).toLocaleTimeString("en-GB")}`;
    }
  },
});

setInterval(() => {
  views.run.tick();
  views.nodes.tick();
}, 1000);

views.controls.render();
socket.connect();

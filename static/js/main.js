// The live dashboard: one WebSocket feeds the state, the state feeds the views.
// A snapshot (on every connect) re-renders everything; an event updates only what it touched.

import { api } from "./api.js";
import { Charts } from "./charts.js";
import { Controls } from "./controls.js";
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
  models: new ModelList(),
  controls: new Controls(state, document.body.dataset.adminTokenRequired === "true"),
};
const conn = byId("conn");

function onSnapshot(msg) {
  state.loadSnapshot(msg);
  views.run.render();
  views.nodes.sync();
  views.timeline.renderAll();
  views.charts.reset();
  views.controls.render();
  views.models.refresh();
  loadExtras();
}

/** Details the snapshot does not carry: per-node loss history and the dataset's counts. */
async function loadExtras() {
  const runId = state.run.run_id;
  const [details, datasets] = await Promise.allSettled([
    runId ? api("GET", "/monitor/nodes") : Promise.resolve(null),
    api("GET", "/datasets"),
  ]);
  if (state.run.run_id !== runId) return; // a newer snapshot or job took over meanwhile
  if (details.status === "fulfilled" && state.loadNodeHistory(details.value)) views.charts.invalidate("nodes");
  if (datasets.status === "fulfilled" && state.loadDatasets(datasets.value?.datasets)) views.run.render();
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
  if (ev.kind === "job_started") views.charts.reset();
  if (changed.models) views.models.refresh();
}

const socket = new DashboardSocket({
  onMessage(msg) {
    if (msg.type === "snapshot") onSnapshot(msg);
    else if (msg.type === "event") onEvent(msg);
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

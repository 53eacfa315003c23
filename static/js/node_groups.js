// The node table's plan for 100+ nodes: which rows it shows, in which groups and pages.
// A name ending in -vNNN is a virtual node of `fedavg-node --virtual N`: it groups under its
// prefix, the process it runs in, and a group can be folded into one summary row. The rows
// are cut into pages of PAGE_ROWS. No DOM here: node views in, a row plan out.

export const PAGE_ROWS = 50;
const VIRTUAL = /^(.+)-v(\d{3,})$/;

/** The group (process) a node's name belongs to, or null for a node of its own. */
export function groupOf(name) {
  const match = VIRTUAL.exec(name ?? "");
  return match ? match[1] : null;
}

/** What a node's State cell says: offline once its socket is gone, else the server's state. */
export function stateOf(node) {
  return node.connected === false ? "offline" : (node.state ?? "idle");
}

/** How far into its round a node is, 0..1, or null when it is not working on one. */
export function roundProgress(node) {
  if (!(node.batches > 0) || !["training", "waiting", "straggler", "not_waited_for"].includes(stateOf(node))) return null;
  const inEpoch = Math.min(node.batch || 0, node.batches) / node.batches;
  const epochs = node.epochs > 1 && node.epoch >= 1 ? node.epochs : 1;
  return (Math.min(node.epoch || 1, epochs) - 1 + inEpoch) / epochs;
}

/**
 * The rows in order, for nodes sorted by name: {kind: "node", node, group} and, for each
 * process, {kind: "group", key, nodes} before its members (left out while it is folded).
 * @param {object[]} nodes
 * @param {(key: string) => boolean} isOpen
 */
export function planRows(nodes, isOpen) {
  const items = [];
  const groups = new Map();
  for (const node of nodes) {
    const key = groupOf(node.name);
    if (key === null) {
      items.push({ kind: "node", node, group: null });
      continue;
    }
    let group = groups.get(key);
    if (!group) {
      group = { kind: "group", key, nodes: [] };
      groups.set(key, group);
      items.push(group);
    }
    group.nodes.push(node);
  }
  return items.flatMap((item) => (item.kind === "group" && isOpen(item.key)
    ? [item, ...item.nodes.map((node) => ({ kind: "node", node, group: item.key }))]
    : [item]));
}

/** One page of the rows: the page shown (clamped), how many there are, and its rows. */
export function pageOf(rows, page) {
  const pages = Math.max(1, Math.ceil(rows.length / PAGE_ROWS));
  const shown = Math.min(Math.max(0, page), pages - 1);
  return { page: shown, pages, first: shown * PAGE_ROWS, rows: rows.slice(shown * PAGE_ROWS, (shown + 1) * PAGE_ROWS) };
}

/** A group's summary: its size, how many are in each state, how many were picked this
 * round, and the mean progress of those working on a round (null when none is). */
export function summarize(nodes, isPicked) {
  const states = new Map();
  let picked = 0;
  let sum = 0;
  let working = 0;
  for (const node of nodes) {
    const state = stateOf(node);
    states.set(state, (states.get(state) ?? 0) + 1);
    if (isPicked(node)) picked += 1;
    const share = roundProgress(node);
    if (share !== null) {
      sum += share;
      working += 1;
    }
  }
  return { count: nodes.length, states: [...states].sort((a, b) => b[1] - a[1]), picked, progress: working ? sum / working : null };
}

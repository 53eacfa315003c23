// A node's label distribution: a small horizontal bar of its shard's classes (GET /nodes'
// `shard_labels`, or the `shards_planned` event), one segment per class it holds, sized by
// its share. Class k always has the same colour (`.dist-c{k mod PALETTE_SIZE}` in
// dashboard.css), so bars compare across rows. The bar is rebuilt only when its counts or
// the class names change: a table of hundreds of rows re-synced on every event stays cheap.

import { h, int } from "./dom.js";

/** Colours in dashboard.css (.dist-c0 … .dist-c11); class k takes colour k mod this. */
export const PALETTE_SIZE = 12;

/** A share as the bar's text says it: "12%", "<1%" for a sliver, "0%" for none. */
export function shareText(count, total) {
  if (!(total > 0) || !(count > 0)) return "0%";
  const percent = (count / total) * 100;
  return percent < 1 ? "<1%" : `${Math.round(percent)}%`;
}

/** Class k's name: the dataset's own when known (one per label), else the label number. */
export function className(names, label) {
  return names && typeof names[label] === "string" && names[label] ? names[label] : String(label);
}

/** Counts the bar can show: a non-empty list of non-negative integers with a positive sum. */
function validCounts(counts) {
  if (!Array.isArray(counts) || counts.length === 0) return null;
  let total = 0;
  for (const c of counts) {
    if (!Number.isInteger(c) || c < 0) return null;
    total += c;
  }
  return total > 0 ? total : null;
}

/** "0: 12%, 4: 80%, 7: 8%": the classes a shard holds, in label order (empty ones left out). */
export function labelsText(counts, names) {
  const total = validCounts(counts);
  if (!total) return "";
  const parts = [];
  counts.forEach((c, label) => {
    if (c > 0) parts.push(`${className(names, label)}: ${shareText(c, total)}`);
  });
  return parts.join(", ");
}

export class LabelBar {
  constructor() {
    this.el = h("div", { class: "dist", role: "img", hidden: true });
    this.counts = undefined; // the arrays last shown: the same ones again cost one comparison
    this.names = undefined;
    this.key = "";
  }

  /** Show these per-class counts (or nothing for null); names label the classes when known. */
  set(counts, names) {
    if (counts === this.counts && names === this.names) return;
    this.counts = counts;
    this.names = names;
    const total = validCounts(counts);
    const usable = names && names.length === counts?.length ? names : null;
    const key = total ? `${counts.join(",")}|${usable ? usable.join("\u0000") : ""}` : "";
    if (key === this.key) return;
    this.key = key;
    const el = this.el;
    el.hidden = !total;
    if (!total) {
      el.replaceChildren();
      el.removeAttribute("aria-label");
      el.removeAttribute("title");
      delete el.dataset.labels;
      return;
    }
    const segments = [];
    counts.forEach((c, label) => {
      if (c <= 0) return;
      const seg = h("span", { class: `dist-seg dist-c${label % PALETTE_SIZE}`, dataset: { label: String(label), count: String(c) } });
      seg.style.flexGrow = String(c); // flex-basis 0 (in the CSS): widths in proportion to counts
      segments.push(seg);
    });
    el.replaceChildren(...segments);
    el.dataset.labels = counts.join(",");
    el.setAttribute("aria-label", `label shares ${labelsText(counts, usable)}`);
    el.title = counts
      .map((c, label) => (c > 0 ? `${className(usable, label)}: ${int(c)} (${shareText(c, total)})` : null))
      .filter(Boolean)
      .join("\n");
  }
}

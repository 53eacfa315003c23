// Small DOM and formatting helpers. Everything shown to the user goes through `textContent`
// or attributes set one by one, so no server-provided string is ever parsed as HTML.

/** Create an element: h("td", {class: "num"}, "text", childNode, ...). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export const byId = (id) => document.getElementById(id);

/** Set text only when it changed: cheap for the per-second ticker and progress updates. */
export function setText(el, text) {
  const value = text === null || text === undefined ? "" : String(text);
  if (el.textContent !== value) el.textContent = value;
}

export function pct(value, digits = 1) {
  return typeof value === "number" && Number.isFinite(value) ? `${(value * 100).toFixed(digits)}%` : "—";
}

export function num(value, digits = 3) {
  return typeof value === "number" && Number.isFinite(value) ? value.toFixed(digits) : "—";
}

export function int(value) {
  return typeof value === "number" && Number.isFinite(value) ? Math.round(value).toLocaleString("en") : "—";
}

/** A sample's shape, channels first: [3, 32, 32] as "3×32×32" ("—" when none is known). */
export function shape(dims) {
  return Array.isArray(dims) && dims.length ? dims.join("×") : "—";
}

/** Seconds as "42 s", "3 min 05 s" or "1 h 02 min". */
export function duration(seconds) {
  if (typeof seconds !== "number" || !Number.isFinite(seconds)) return "—";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
  return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")} min`;
}

/** A past moment (epoch seconds) relative to now, e.g. "just now", "12 s ago". */
export function ago(epochSeconds, nowSeconds) {
  if (typeof epochSeconds !== "number") return "—";
  const s = Math.max(0, nowSeconds - epochSeconds);
  return s < 2 ? "just now" : `${duration(s)} ago`;
}

export function clock(epochSeconds) {
  return new Date(epochSeconds * 1000).toLocaleTimeString("en-GB", { hour12: false });
}

export function bytes(n) {
  if (typeof n !== "number") return "—";
  const units = ["B", "KiB", "MiB", "GiB"];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit ? 1 : 0)} ${units[unit]}`;
}

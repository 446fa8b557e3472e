// Rendering helpers shared by every page. Markup is built with the `html` tagged template,
// which escapes every interpolated value unless it is itself `html` (or `raw`): data from
// the API never reaches innerHTML unescaped.

/** Markup that is already safe: made by `html`, `raw` or a helper here. */
export class SafeHtml {
  constructor(text) {
    this.text = text;
  }
  toString() {
    return this.text;
  }
}

/** Escapes text for HTML content and attribute values. */
export function esc(value) {
  return String(value ?? "")
    .replace(/&/g, "&amp;")
    .replace(/</g, "&lt;")
    .replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;")
    .replace(/'/g, "&#39;");
}

/** Trusted markup, as is (only for constants and helper output). */
export function raw(text) {
  return new SafeHtml(String(text));
}

function piece(value) {
  if (value === null || value === undefined || value === false) return "";
  if (value instanceof SafeHtml) return value.text;
  if (Array.isArray(value)) return value.map(piece).join("");
  return esc(value);
}

/** Tagged template: html`<td>${name}</td>` escapes `name`; arrays are joined. */
export function html(strings, ...values) {
  let out = strings[0];
  for (let i = 0; i < values.length; i++) out += piece(values[i]) + strings[i + 1];
  return new SafeHtml(out);
}

/** Replaces an element's content with safe markup; returns the element. */
export function setHTML(element, markup) {
  if (!(markup instanceof SafeHtml)) markup = html`${markup}`;
  element.innerHTML = markup.text;
  return element;
}

/** A new element: el("button", {class: "primary", onclick: fn}, "Run"). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") node.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    if (child instanceof SafeHtml) node.insertAdjacentHTML("beforeend", child.text);
    else node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

/** `#/runs/ID`-style link target, each segment encoded. */
export function href(...segments) {
  return "#/" + segments.map((s) => encodeURIComponent(s)).join("/");
}

/** Status badge: a coloured pill with the status text. */
export function badge(status, label) {
  const s = String(status ?? "unknown");
  return html`<span class="badge s-${s.replace(/[^a-z_]/gi, "")}" data-status="${s}">${label ?? s.replace(/_/g, " ")}</span>`;
}

/** "3 minutes ago", "in 2 hours"; with the exact time in a title. */
export function relTime(iso, now = Date.now()) {
  if (!iso) return html`<span class="muted">—</span>`;
  const at = new Date(iso);
  if (Number.isNaN(at.getTime())) return html`${iso}`;
  return html`<time datetime="${iso}" title="${at.toLocaleString()}">${relText(at.getTime() - now)}</time>`;
}

/** The text of a relative time for a difference in ms (negative: past). */
export function relText(deltaMs) {
  const past = deltaMs <= 0;
  const s = Math.abs(deltaMs) / 1000;
  const units = [
    [60, 1, "second"],
    [3600, 60, "minute"],
    [86400, 3600, "hour"],
    [86400 * 30, 86400, "day"],
    [86400 * 365, 86400 * 30, "month"],
    [Infinity, 86400 * 365, "year"],
  ];
  if (s < 5) return "just now";
  for (const [limit, size, name] of units) {
    if (s < limit) {
      const n = Math.floor(s / size);
      const text = `${n} ${name}${n === 1 ? "" : "s"}`;
      return past ? `${text} ago` : `in ${text}`;
    }
  }
  return "";
}

/** 850 ms, 4.2 s, 3 m 05 s, 1 h 02 m. */
export function duration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "—";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} m ${String(Math.floor(s % 60)).padStart(2, "0")} s`;
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, "0")} m`;
}

/** 1.5 KiB, 20 MiB. */
export function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i === 0 || n >= 100 ? 0 : 1)} ${units[i]}`;
}

/** Milliseconds between two RFC 3339 times (now when `to` is missing). */
export function elapsed(from, to) {
  if (!from) return null;
  return (to ? new Date(to) : new Date()).getTime() - new Date(from).getTime();
}

/**
 * A table. columns: [{label, render(row) -> SafeHtml|string, class?, num?}];
 * options: {empty: "No runs yet", caption, rowAttrs(row) -> {name: value}}.
 */
export function table(columns, rows, options = {}) {
  if (!rows.length) return html`<div class="table-wrap"><p class="empty">${options.empty ?? "Nothing here yet."}</p></div>`;
  const cls = (c) => [c.class, c.num ? "num" : ""].filter(Boolean).join(" ");
  const attrs = (row) =>
    options.rowAttrs
      ? raw(Object.entries(options.rowAttrs(row)).map(([k, v]) => ` ${esc(k)}="${esc(v)}"`).join(""))
      : "";
  return html`<div class="table-wrap"><table class="data">
    ${options.caption ? html`<caption class="visually-hidden">${options.caption}</caption>` : ""}
    <thead><tr>${columns.map((c) => html`<th scope="col" class="${cls(c)}">${c.label}</th>`)}</tr></thead>
    <tbody>${rows.map((row) => html`<tr${attrs(row)}>${columns.map((c) => html`<td class="${cls(c)}">${c.render(row)}</td>`)}</tr>`)}</tbody>
  </table></div>`;
}

/** Definition list of [label, value] pairs (values escaped unless SafeHtml). */
export function facts(pairs) {
  return html`<dl class="facts">${pairs.filter(Boolean).map(([k, v]) => html`<dt>${k}</dt><dd>${v ?? "—"}</dd>`)}</dl>`;
}

/**
 * Sparkline of recent runs: one bar per point, height by value (e.g. duration), colour by
 * status. points: [{value, status, title}] oldest first.
 */
export function sparkline(points, { width = 120, height = 24, label = "Recent runs" } = {}) {
  if (!points.length) return html`<span class="muted">no runs</span>`;
  const n = Math.max(points.length, 10);
  const gap = 2;
  const barWidth = Math.max(2, (width - gap * (n - 1)) / n);
  const max = Math.max(1, ...points.map((p) => p.value || 0));
  const bars = points.map((p, i) => {
    const h = Math.max(3, ((p.value || 0) / max) * (height - 2));
    const x = i * (barWidth + gap);
    return html`<rect class="c-${p.status || "none"}" x="${x.toFixed(1)}" y="${(height - h).toFixed(1)}" width="${barWidth.toFixed(1)}" height="${h.toFixed(1)}" rx="1"><title>${p.title || p.status}</title></rect>`;
  });
  return html`<svg class="sparkline" role="img" aria-label="${label}" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}">${bars}</svg>`;
}

/**
 * A horizontal bar: `[offset, offset+length]` of `total`, coloured by status (a Gantt row
 * when offset is the start within the run, a plain bar with offset 0).
 */
export function durationBar(length, total, { offset = 0, status = "none", width = 140, label } = {}) {
  if (length === null || length === undefined || !total) return html`<span class="muted">—</span>`;
  const x = Math.max(0, Math.min(width, (offset / total) * width));
  const w = Math.max(2, Math.min(width - x, (length / total) * width));
  return html`<svg class="durbar" role="img" aria-label="${label ?? duration(length)}" width="${width}" height="10" viewBox="0 0 ${width} 10"><rect class="track" x="0" y="0" width="${width}" height="10" rx="2"/><rect class="c-${status}" x="${x.toFixed(1)}" y="0" width="${w.toFixed(1)}" height="10" rx="2"/></svg>`;
}

/** A thin percentage bar (0–100) for gauges. */
export function gaugeBar(percent) {
  const p = Math.max(0, Math.min(100, Number(percent) || 0));
  const cls = p >= 90 ? "c-failed" : p >= 75 ? "c-cancelled" : "c-succeeded";
  return html`<div class="gauge-bar"><svg viewBox="0 0 100 6" preserveAspectRatio="none" aria-hidden="true"><rect class="${cls}" x="0" y="0" width="${p.toFixed(1)}" height="6"/></svg></div>`;
}

/**
 * A line/area chart. series: [{name, points: [[time ms or number, value], ...]}];
 * options: {width, height, min, max, format(value) -> text, area: true, label}.
 */
export function lineChart(series, options = {}) {
  const { width = 560, height = 160, area = true, format = (v) => String(Math.round(v)), label = "Chart" } = options;
  const pad = { left: 40, right: 8, top: 8, bottom: 18 };
  const all = series.flatMap((s) => s.points);
  if (!all.length) return html`<p class="empty">No data yet.</p>`;
  const xs = all.map((p) => p[0]);
  const ys = all.map((p) => p[1]);
  const x0 = Math.min(...xs);
  const x1 = Math.max(...xs, x0 + 1);
  const y0 = options.min ?? Math.min(0, ...ys);
  const y1 = options.max ?? Math.max(...ys, y0 + 1);
  const sx = (x) => pad.left + ((x - x0) / (x1 - x0)) * (width - pad.left - pad.right);
  const sy = (y) => pad.top + (1 - (y - y0) / (y1 - y0)) * (height - pad.top - pad.bottom);
  const paths = series.map((s, i) => {
    if (!s.points.length) return "";
    const line = s.points.map((p, j) => `${j ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join("");
    const fill = area
      ? `${line}L${sx(s.points[s.points.length - 1][0]).toFixed(1)},${sy(y0).toFixed(1)}L${sx(s.points[0][0]).toFixed(1)},${sy(y0).toFixed(1)}Z`
      : "";
    return html`${area ? html`<path class="area-${i % 4}" d="${fill}"/>` : ""}<path class="line series-${i % 4}" d="${line}"><title>${s.name}</title></path>`;
  });
  const isTime = x0 > 1e11;
  const xLabel = (x) => (isTime ? new Date(x).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : String(x));
  return html`<svg class="chart" role="img" aria-label="${label}" viewBox="0 0 ${width} ${height}">
    <line class="grid-line" x1="${pad.left}" x2="${width - pad.right}" y1="${sy(y1)}" y2="${sy(y1)}"/>
    <line class="grid-line" x1="${pad.left}" x2="${width - pad.right}" y1="${sy((y0 + y1) / 2)}" y2="${sy((y0 + y1) / 2)}"/>
    <line class="axis" x1="${pad.left}" x2="${width - pad.right}" y1="${sy(y0)}" y2="${sy(y0)}"/>
    <text x="${pad.left - 4}" y="${sy(y1) + 4}" text-anchor="end">${format(y1)}</text>
    <text x="${pad.left - 4}" y="${sy(y0)}" text-anchor="end">${format(y0)}</text>
    <text x="${pad.left}" y="${height - 4}">${xLabel(x0)}</text>
    <text x="${width - pad.right}" y="${height - 4}" text-anchor="end">${xLabel(x1)}</text>
    ${paths}</svg>`;
}

/** An API error (or any error) as a box: code, message, details. */
export function errorBox(error, title = "Something went wrong") {
  const code = error && error.code;
  const details = error && error.details && Object.keys(error.details).length ? JSON.stringify(error.details, null, 2) : "";
  return html`<div class="error-box" role="alert"><strong>${title}</strong>
    <p>${code ? html`<span class="code">${code}</span> ` : ""}${(error && error.message) || String(error)}</p>
    ${details ? html`<pre>${details}</pre>` : ""}</div>`;
}

/** A short message in the corner, gone after a few seconds. kind: info, success, error. */
export function toast(message, kind = "info", ms = 5000) {
  const area = document.getElementById("toasts");
  if (!area) return;
  const node = el("div", { class: `toast ${kind}` }, message);
  area.append(node);
  setTimeout(() => node.remove(), ms);
}

/** The page header: title, optional breadcrumb (SafeHtml) and actions (nodes). */
export function pageHeader(title, { crumb, subtitle } = {}) {
  return html`<div class="page-header"><div>
    ${crumb ? html`<div class="breadcrumb">${crumb}</div>` : ""}
    <h1>${title}</h1>${subtitle ? html`<div class="muted">${subtitle}</div>` : ""}
  </div><div class="actions" data-actions></div></div>`;
}

/** Calls `fn` at most once per `ms`, trailing (for refetching on bursts of events). */
export function debounce(fn, ms = 150) {
  let timer = null;
  const wrapped = (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
  wrapped.cancel = () => clearTimeout(timer);
  return wrapped;
}

/**
 * Accessible tabs. tabs: [{id, label, render(panel)}]; returns the element. The first tab
 * (or `selected`) is shown; arrow keys move between tabs.
 */
export function tabs(items, selected) {
  const root = el("div", { class: "tabbed" });
  const list = el("div", { class: "tabs", role: "tablist" });
  const panels = [];
  const buttons = items.map((item, i) => {
    const button = el("button", {
      type: "button", role: "tab", id: `tab-${item.id}`, "aria-controls": `panel-${item.id}`,
      "aria-selected": "false", tabindex: "-1", "data-tab": item.id,
    }, item.label);
    const panel = el("div", { role: "tabpanel", id: `panel-${item.id}`, "aria-labelledby": `tab-${item.id}`, hidden: true });
    panels.push(panel);
    button.addEventListener("click", () => show(i));
    button.addEventListener("keydown", (e) => {
      if (e.key === "ArrowRight" || e.key === "ArrowLeft") {
        const next = (i + (e.key === "ArrowRight" ? 1 : items.length - 1)) % items.length;
        show(next);
        buttons[next].focus();
      }
    });
    return button;
  });
  const rendered = new Set();
  function show(index) {
    buttons.forEach((b, j) => {
      b.setAttribute("aria-selected", String(j === index));
      b.tabIndex = j === index ? 0 : -1;
      panels[j].hidden = j !== index;
    });
    if (!rendered.has(index)) {
      rendered.add(index);
      items[index].render(panels[index]);
    }
  }
  list.append(...buttons);
  root.append(list, ...panels);
  show(Math.max(0, items.findIndex((t) => t.id === selected)));
  return root;
}

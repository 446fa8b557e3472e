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

/**
 * A link target from API data, kept only when it is a path on this server (`/api/...`) or
 * a route (`#/...`): anything else (`javascript:`, another origin) becomes `#`.
 */
export function safeUrl(url) {
  const text = String(url ?? "");
  return /^(\/(?![/\\])|#)/.test(text) ? text : "#";
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

/** "Nice" tick values covering [lo, hi]: about `count` of them, on 1/2/5 × 10^n steps. */
export function niceTicks(lo, hi, count = 4) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / Math.max(1, count);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const ticks = [];
  for (let v = Math.ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  return ticks;
}

/** The label of a time on an axis spanning `span` ms. */
function timeLabel(ms, span) {
  const at = new Date(ms);
  if (span > 2 * 86400e3) return at.toLocaleDateString([], { month: "short", day: "numeric" });
  if (span > 86400e3 * 0.9) return at.toLocaleString([], { weekday: "short", hour: "2-digit", minute: "2-digit" });
  if (span < 300e3) return at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  return at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

// Charts by id, for the hover read-out (the markup is a string: its data stays here). The
// newest few hundred are kept; an older chart still on screen just has no read-out.
const charts = new Map();
let chartSeq = 0;
let hoverInstalled = false;

function installHover() {
  if (hoverInstalled || typeof document === "undefined") return;
  hoverInstalled = true;
  const hide = (svg) => svg?.querySelector(".hover")?.setAttribute("visibility", "hidden");
  document.addEventListener("pointermove", (event) => {
    const svg = event.target instanceof Element ? event.target.closest("svg.chart[data-chart]") : null;
    document.querySelectorAll("svg.chart[data-hovering]").forEach((other) => {
      if (other !== svg) {
        other.removeAttribute("data-hovering");
        hide(other);
      }
    });
    if (!svg) return;
    const chart = charts.get(svg.dataset.chart);
    if (!chart) return;
    const box = svg.getBoundingClientRect();
    const x = ((event.clientX - box.left) / box.width) * chart.width;
    if (x < chart.pad.left || x > chart.width - chart.pad.right) return hide(svg);
    const value = chart.ix(x);
    const rows = [];
    let nearest = null;
    chart.series.forEach((s, i) => {
      if (!s.points.length) return;
      let best = s.points[0];
      for (const p of s.points) if (Math.abs(p[0] - value) < Math.abs(best[0] - value)) best = p;
      if (nearest === null || Math.abs(best[0] - value) < Math.abs(nearest - value)) nearest = best[0];
      rows.push({ i, name: s.name, point: best });
    });
    if (nearest === null) return hide(svg);
    const group = svg.querySelector(".hover");
    const px = chart.sx(nearest);
    const line = group.querySelector("line");
    line.setAttribute("x1", px);
    line.setAttribute("x2", px);
    group.querySelectorAll("circle").forEach((c) => c.setAttribute("visibility", "hidden"));
    for (const row of rows) {
      const dot = group.querySelector(`circle[data-series="${row.i}"]`);
      if (!dot) continue;
      dot.setAttribute("cx", chart.sx(row.point[0]));
      dot.setAttribute("cy", chart.sy(row.point[1]));
      dot.setAttribute("visibility", "visible");
    }
    const lines = [chart.isTime ? new Date(nearest).toLocaleString() : String(nearest), ...rows.map((r) => `${r.name}: ${chart.format(r.point[1])}`)];
    const text = group.querySelector("text");
    text.replaceChildren(
      ...lines.map((l, k) => {
        const span = document.createElementNS("http://www.w3.org/2000/svg", "tspan");
        span.setAttribute("x", "0");
        span.setAttribute("dy", k ? "1.2em" : "0");
        span.textContent = l;
        return span;
      }),
    );
    const widest = Math.max(...lines.map((l) => l.length)) * 5.6 + 12;
    const tall = lines.length * 12 + 8;
    const left = px + widest + 12 > chart.width - chart.pad.right ? px - widest - 8 : px + 8;
    const panel = group.querySelector("g.tip");
    panel.setAttribute("transform", `translate(${left.toFixed(1)},${chart.pad.top + 2})`);
    const rect = panel.querySelector("rect");
    rect.setAttribute("width", widest.toFixed(0));
    rect.setAttribute("height", tall);
    text.setAttribute("transform", "translate(6,13)");
    group.setAttribute("visibility", "visible");
    svg.setAttribute("data-hovering", "");
    svg.dataset.hoverValue = lines.join(" | ");
  });
}

/**
 * A line/area chart. series: [{name, points: [[time ms or number, value], ...]}];
 * options: {width, height, min, max, format(value) -> text, area: true, label, xFormat(x),
 * legend (default: when there are several series), from, to (the x range: default the
 * data's)}. Values on a time axis (x > 1e11) are labelled as times; moving the pointer over
 * the chart shows each series' value at the nearest point.
 */
export function lineChart(series, options = {}) {
  const { width = 560, height = 160, area = true, format = (v) => String(Math.round(v)), label = "Chart" } = options;
  const pad = { left: 46, right: 10, top: 10, bottom: 20 };
  const all = series.flatMap((s) => s.points);
  if (!all.length) return html`<p class="empty">No data yet.</p>`;
  const xs = all.map((p) => p[0]);
  const ys = all.map((p) => p[1]).filter((y) => Number.isFinite(y));
  const x0 = options.from ?? Math.min(...xs);
  const x1 = Math.max(options.to ?? Math.max(...xs), x0 + 1);
  let y0 = options.min ?? Math.min(0, ...ys);
  let y1 = options.max ?? Math.max(...ys, y0 + 1e-9);
  if (!(y1 > y0)) y1 = y0 + 1;
  const yTicks = niceTicks(y0, y1, 4);
  // An open top is rounded up to the next tick, so the highest line has a label.
  if (options.max === undefined && yTicks.length && yTicks[yTicks.length - 1] < y1) {
    const step = yTicks.length > 1 ? yTicks[1] - yTicks[0] : y1 - y0;
    yTicks.push(Number((yTicks[yTicks.length - 1] + step).toPrecision(12)));
  }
  if (options.max === undefined) y1 = Math.max(y1, yTicks[yTicks.length - 1]);
  // The left margin fits the longest value label.
  pad.left = Math.max(30, Math.min(96, Math.max(...yTicks.map((t) => String(format(t)).length)) * 5.8 + 10));
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const sx = (x) => pad.left + ((x - x0) / (x1 - x0)) * plotW;
  const sy = (y) => pad.top + (1 - (y - y0) / (y1 - y0)) * plotH;
  const ix = (px) => x0 + ((px - pad.left) / plotW) * (x1 - x0);
  const paths = series.map((s, i) => {
    if (!s.points.length) return "";
    const line = s.points.map((p, j) => `${j ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join("");
    const fill = area
      ? `${line}L${sx(s.points[s.points.length - 1][0]).toFixed(1)},${sy(y0).toFixed(1)}L${sx(s.points[0][0]).toFixed(1)},${sy(y0).toFixed(1)}Z`
      : "";
    const dot = s.points.length === 1 ? html`<circle class="dot series-${i % 4}" cx="${sx(s.points[0][0]).toFixed(1)}" cy="${sy(s.points[0][1]).toFixed(1)}" r="2.5"/>` : "";
    return html`${area ? html`<path class="area-${i % 4}" d="${fill}"/>` : ""}<path class="line series-${i % 4}" data-series="${s.name}" d="${line}"><title>${s.name}</title></path>${dot}`;
  });
  const isTime = x0 > 1e11;
  const xLabel = options.xFormat || ((x) => (isTime ? timeLabel(x, x1 - x0) : String(Math.round(x * 100) / 100)));
  const xCount = Math.max(2, Math.min(6, Math.floor(plotW / 90)));
  const xTicks = Array.from({ length: xCount }, (_, k) => x0 + ((x1 - x0) * k) / (xCount - 1));
  const id = `c${++chartSeq}`;
  charts.set(id, { series, format, width, pad, sx, sy, ix, isTime });
  if (charts.size > 300) charts.delete(charts.keys().next().value);
  installHover();
  const legend = (options.legend ?? series.length > 1)
    ? html`<div class="chart-legend">${series.map((s, i) => html`<span class="key k-${i % 4}">${s.name}</span>`)}</div>`
    : "";
  return html`<svg class="chart" role="img" aria-label="${label}" data-chart="${id}" data-points="${all.length}" viewBox="0 0 ${width} ${height}">
    ${yTicks.map((t) => html`<line class="grid-line" x1="${pad.left}" x2="${width - pad.right}" y1="${sy(t).toFixed(1)}" y2="${sy(t).toFixed(1)}"/><text class="y-tick" x="${pad.left - 5}" y="${(sy(t) + 3).toFixed(1)}" text-anchor="end">${format(t)}</text>`)}
    <line class="axis" x1="${pad.left}" x2="${width - pad.right}" y1="${sy(y0).toFixed(1)}" y2="${sy(y0).toFixed(1)}"/>
    <line class="axis" x1="${pad.left}" x2="${pad.left}" y1="${pad.top}" y2="${sy(y0).toFixed(1)}"/>
    ${xTicks.map((t, k) => (k > 0 && xLabel(t) === xLabel(xTicks[k - 1]) ? "" : html`<text class="x-tick" x="${sx(t).toFixed(1)}" y="${height - 5}" text-anchor="${k === 0 ? "start" : k === xCount - 1 ? "end" : "middle"}">${xLabel(t)}</text>`))}
    ${paths}
    <g class="hover" visibility="hidden" pointer-events="none"><line class="hover-line" x1="0" x2="0" y1="${pad.top}" y2="${sy(y0).toFixed(1)}"/>
      ${series.map((_, i) => html`<circle class="dot series-${i % 4}" data-series="${i}" r="3" cx="0" cy="0"/>`)}
      <g class="tip"><rect rx="4"/><text></text></g></g>
    <rect class="hover-target" x="${pad.left}" y="${pad.top}" width="${plotW}" height="${plotH}"/></svg>${legend}`;
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
  // A burst of events does not cover the page: the newest few stay.
  while (area.childElementCount > MAX_TOASTS) area.firstElementChild.remove();
  setTimeout(() => node.remove(), ms);
}

/** How many toasts show at once. */
const MAX_TOASTS = 3;

/**
 * Copies text to the clipboard; where there is none (an insecure origin), selects the text
 * of `node` for a manual copy instead. Says which with a toast.
 */
export async function copyText(text, node) {
  try {
    await navigator.clipboard.writeText(text);
    toast("Copied", "success");
  } catch {
    if (node) {
      node.textContent = text;
      const range = document.createRange();
      range.selectNodeContents(node);
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
    }
    toast("Press Ctrl+C to copy the selected text", "info");
  }
}

/** Offers text as a file download named `name`. */
export function downloadText(name, text, type = "application/yaml") {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const link = el("a", { href: url, download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

/**
 * The element of `form` a diagnostic's JSON pointer is about: the one whose
 * `data-pointer` is the pointer, or the closest enclosing one (null: none).
 */
export function fieldFor(form, pointer) {
  const nodes = [...form.querySelectorAll("[data-pointer]")];
  let p = pointer || "";
  for (;;) {
    const node = nodes.find((n) => n.dataset.pointer === p);
    if (node) return node;
    if (!p) return null;
    p = p.slice(0, p.lastIndexOf("/"));
  }
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

// Buttons `data-action="ACTION" data-name="NAME"` inside `part` POST to
// `${base}/NAME/ACTION`: the button is disabled while it goes, a toast says what became of
// it (`done[ACTION]`, e.g. "Stopped"), and `reload` draws the page again after a success.
export function actionButtons(part, api, base, done, reload) {
  part.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    const { action, name } = button.dataset;
    button.disabled = true;
    try {
      await api.post(`${base}/${encodeURIComponent(name)}/${action}`);
      toast(`${done[action] ?? action} ${name}`, "success");
      await reload();
    } catch (err) {
      button.disabled = false;
      if (err.name !== "AbortError") toast(`Could not ${action} ${name}: ${err.message}`, "error");
    }
  });
}

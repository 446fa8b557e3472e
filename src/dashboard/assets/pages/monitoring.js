// Monitoring: the machine and the orchestrator over time. Current gauges from the latest
// sample; charts of CPU, memory, disk, network, load and the orchestrator's own CPU and
// resident memory over a chosen range (15 min, 1 h, 6 h, 24 h) from
// GET /api/system/metrics, with each `system_metrics` event from /ws appended live.

import { html, setHTML, bytes, relTime, gaugeBar, lineChart, errorBox, pageHeader } from "../lib/ui.js";
import { qs } from "../lib/api.js";

/** The ranges: the `since` asked for, and a `step` that keeps charts to a few hundred points. */
const RANGES = [
  { id: "15m", label: "15 min", ms: 15 * 60e3, step: "" },
  { id: "1h", label: "1 h", ms: 3600e3, step: "" },
  { id: "6h", label: "6 h", ms: 6 * 3600e3, step: "1m" },
  { id: "24h", label: "24 h", ms: 24 * 3600e3, step: "5m" },
];

/** The most points a chart keeps, however long the page stays open. */
const MAX_POINTS = 2000;

const pct = (v) => `${Number(v).toFixed(0)}%`;
const rate = (v) => `${bytes(v)}/s`;
const fixed = (n) => (v) => Number(v).toFixed(n);

/** The charts: a title, the series (field, name) and how values read. */
const CHARTS = [
  { id: "cpu", title: "CPU (% of all cores)", series: [["cpu_percent", "CPU mean"], ["cpu_percent_max", "CPU max"]], min: 0, max: 100, format: pct },
  { id: "memory", title: "Memory in use (%)", series: [["memory_percent", "Memory"]], min: 0, max: 100, format: pct },
  { id: "disk", title: "Disk used, data directory (%)", series: [["disk_percent", "Disk"]], min: 0, max: 100, format: pct },
  { id: "network", title: "Network (bytes per second)", series: [["network_rx_bytes_per_second", "Received"], ["network_tx_bytes_per_second", "Sent"]], format: rate },
  { id: "load", title: "Load average (1 min)", series: [["load_average", "Load"]], format: fixed(2) },
  { id: "processes", title: "Processes", series: [["process_count", "Processes"]], format: fixed(0) },
  { id: "orchestrator-cpu", title: "Orchestrator CPU (% of all cores)", series: [["orchestrator_cpu_percent", "Orchestrator CPU"]], min: 0, format: (v) => `${Number(v).toFixed(1)}%` },
  { id: "orchestrator-rss", title: "Orchestrator resident memory", series: [["orchestrator_rss_bytes", "Resident memory"]], min: 0, format: bytes },
];

export async function render(ctx) {
  const { api, root } = ctx;
  let range = RANGES.find((r) => r.id === ctx.query.get("range")) || RANGES[0];
  let latest = null;
  let points = [];
  let source = "";
  let stepSeconds = 0;

  setHTML(
    root,
    html`${pageHeader("Monitoring", { subtitle: "The machine and the orchestrator, live" })}
    <div class="grid cols-4 monitoring-gauges" data-section="gauges"></div>
    <div class="range-bar"><span class="muted" id="range-label">Range</span>
      <div class="segmented" role="group" aria-labelledby="range-label">${RANGES.map(
        (r) => html`<button type="button" data-range="${r.id}" aria-pressed="${String(r === range)}">${r.label}</button>`,
      )}</div>
      <span class="muted" data-section="range-info"></span></div>
    <div class="grid cols-2 monitoring-charts" data-section="charts">${CHARTS.map(
      (c) => html`<section class="card" data-chart-card="${c.id}"><h3>${c.title}</h3><div data-plot="${c.id}"></div></section>`,
    )}</div>`,
  );
  const part = (name) => root.querySelector(`[data-section="${name}"]`);

  function showGauges() {
    if (!latest) {
      setHTML(part("gauges"), html`<div class="card muted">No system sample yet: the first is taken within a second of the start.</div>`);
      return;
    }
    const gauge = (id, label, value, percent, hint) =>
      html`<div class="card stat" data-gauge="${id}"><span class="label">${label}</span><span class="value">${value}</span>${percent === undefined ? "" : gaugeBar(percent)}${hint ? html`<span class="label">${hint}</span>` : ""}</div>`;
    setHTML(
      part("gauges"),
      html`${gauge("cpu", "CPU", pct(latest.cpu_percent), latest.cpu_percent)}
      ${gauge("memory", "Memory", pct(latest.memory_percent), latest.memory_percent)}
      ${gauge("disk", "Disk", pct(latest.disk_percent), latest.disk_percent)}
      ${gauge("load", "Load average", latest.load_average.toFixed(2), undefined, `${Math.round(latest.process_count)} processes`)}
      ${gauge("network", "Network", html`<span class="net">↓ ${rate(latest.network_rx_bytes_per_second)}</span> <span class="net">↑ ${rate(latest.network_tx_bytes_per_second)}</span>`)}
      ${gauge("orchestrator-cpu", "Orchestrator CPU", `${latest.orchestrator_cpu_percent.toFixed(1)}%`, latest.orchestrator_cpu_percent)}
      ${gauge("orchestrator-rss", "Orchestrator memory", bytes(latest.orchestrator_rss_bytes))}
      ${gauge("sampled", "Last sample", relTime(latest.at))}`,
    );
  }

  function showCharts() {
    const now = Date.now();
    const from = now - range.ms;
    const shown = points.filter((p) => new Date(p.at).getTime() >= from);
    for (const chart of CHARTS) {
      const series = chart.series
        .map(([key, name]) => ({
          name,
          points: shown.filter((p) => p[key] !== undefined && p[key] !== null).map((p) => [new Date(p.at).getTime(), p[key]]),
        }))
        .filter((s) => s.points.length);
      setHTML(
        root.querySelector(`[data-plot="${chart.id}"]`),
        lineChart(series, { min: chart.min, max: chart.max, format: chart.format, label: `${chart.title} over the last ${range.label}`, area: series.length === 1 }),
      );
    }
    setHTML(
      part("range-info"),
      html`${shown.length} point${shown.length === 1 ? "" : "s"}${stepSeconds ? `, one per ${stepSeconds < 1 ? `${Math.round(stepSeconds * 1000)} ms` : `${Math.round(stepSeconds)} s`}` : ""}${source ? ` (${source === "raw" ? "recent samples" : "stored history"})` : ""} · live`,
    );
  }

  // Charts are redrawn at most a few times a second, however fast samples arrive.
  let drawTimer = null;
  const draw = () => {
    if (drawTimer) return;
    drawTimer = setTimeout(() => {
      drawTimer = null;
      if (ctx.left) return;
      showGauges();
      showCharts();
    }, 250);
  };
  ctx.onLeave(() => clearTimeout(drawTimer));

  let loading = null;
  async function load() {
    const controller = new AbortController();
    if (loading) loading.abort();
    loading = controller;
    ctx.signal.addEventListener("abort", () => controller.abort(), { once: true });
    try {
      const body = await api.get(`/api/system/metrics${qs({ since: range.id, step: range.step })}`, { signal: controller.signal });
      if (controller !== loading) return;
      latest = body.latest || latest;
      points = body.points || [];
      source = body.source;
      stepSeconds = body.step_seconds;
    } catch (err) {
      if (err.name === "AbortError" || controller.signal.aborted) return;
      setHTML(part("charts"), errorBox(err, "System metrics unavailable"));
      throw err;
    }
    showGauges();
    showCharts();
  }

  root.querySelectorAll("[data-range]").forEach((button) =>
    button.addEventListener("click", () => {
      range = RANGES.find((r) => r.id === button.dataset.range) || range;
      root.querySelectorAll("[data-range]").forEach((b) => b.setAttribute("aria-pressed", String(b === button)));
      history.replaceState(null, "", `#/monitoring${qs({ range: range.id === "15m" ? "" : range.id })}`);
      load().catch(() => {});
    }),
  );

  await load();

  ctx.on("system_metrics", (sample) => {
    if (!sample || !sample.at) return;
    latest = sample;
    // A live sample is a point of one sample (its CPU figure is its own maximum). A range
    // read in steps gets a live point per step, not per sample, so its charts keep the few
    // hundred points the history has.
    const last = points[points.length - 1];
    const at = new Date(sample.at).getTime();
    if (!last || !stepSeconds || at - new Date(last.at).getTime() >= stepSeconds * 1000) {
      points.push({ ...sample, samples: 1, cpu_percent_max: sample.cpu_percent });
    }
    const cutoff = Date.now() - range.ms;
    if (points.length && new Date(points[0].at).getTime() < cutoff) points = points.filter((p) => new Date(p.at).getTime() >= cutoff);
    if (points.length > MAX_POINTS) points = points.slice(-MAX_POINTS);
    draw();
  });
  ctx.on("resync", () => load().catch(() => {}));
}

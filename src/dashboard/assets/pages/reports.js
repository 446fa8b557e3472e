// Reports and analytics: each workflow's recent finished runs — outcomes, test pass rate and
// duration trends (charts), the slowest and most failing test cases — and the reports runs
// recorded (HTML, JUnit, JSON), opened through GET /api/runs/{id}/artifacts/{path}. Data
// from GET /api/workflows/{id}/trends, plus the metrics window of
// GET /api/workflows/{id}/metrics (flaky cases). Live: a finished run refreshes it.

import { html, setHTML, badge, relTime, duration, table, href, errorBox, pageHeader, debounce, lineChart, sparkline, safeUrl } from "../lib/ui.js";
import { qs, seg } from "../lib/api.js";

const LIMITS = [10, 30, 100];
const OUTCOMES = ["succeeded", "failed", "timed_out", "cancelled", "interrupted"];
const rate = (r) => (r === null || r === undefined ? "—" : `${Number((r * 100).toFixed(1))}%`);
const secs = (s) => (s < 1 ? `${Math.round(s * 1000)} ms` : `${s.toFixed(s < 10 ? 2 : 1)} s`);
const testName = (t) => html`<span class="test-name">${t.name}</span>${t.classname || t.suite ? html`<div class="muted">${[t.suite, t.classname].filter(Boolean).join(" · ")}</div>` : ""}`;

export async function render(ctx) {
  if (ctx.params[0]) return workflow(ctx, ctx.params[0]);
  return overview(ctx);
}

/** A bar split by outcome: one coloured segment per state, widths by count. */
function outcomeBar(outcomes, total, width = 160) {
  if (!total) return html`<span class="muted">no runs</span>`;
  let x = 0;
  const parts = OUTCOMES.concat(Object.keys(outcomes).filter((k) => !OUTCOMES.includes(k)))
    .filter((k) => outcomes[k])
    .map((k) => {
      const w = (outcomes[k] / total) * width;
      const rect = html`<rect class="c-${k}" x="${x.toFixed(1)}" y="0" width="${Math.max(1, w).toFixed(1)}" height="12"><title>${outcomes[k]} ${k.replace("_", " ")}</title></rect>`;
      x += w;
      return rect;
    });
  const text = Object.entries(outcomes).map(([k, n]) => `${n} ${k.replace("_", " ")}`).join(", ");
  return html`<svg class="outcome-bar" role="img" aria-label="${text}" width="${width}" height="12" viewBox="0 0 ${width} 12">${parts}</svg>`;
}

/** Links to the files a run recorded; HTML reports first. */
function reportLinks(run) {
  const files = [...(run.artifacts || [])].sort((a, b) => Number(b.path.endsWith(".html")) - Number(a.path.endsWith(".html")));
  if (!files.length) return html`<span class="muted">—</span>`;
  return html`<span class="report-links">${files.map((a) => {
    const name = a.path.split("/").pop();
    return a.url
      ? html`<a href="${safeUrl(a.url)}" target="_blank" rel="noopener" data-artifact="${a.path}" title="${a.path} (step ${a.step})">${name}</a>`
      : html`<span class="muted" title="${a.path}: outside the project, not served">${name}</span>`;
  })}</span>`;
}

async function overview(ctx) {
  const { api, root } = ctx;
  setHTML(
    root,
    html`${pageHeader("Reports and analytics", { subtitle: "Outcomes, pass rates and durations of each workflow's recent runs, and their reports" })}
    <div data-section="workflows"><p class="loading">Loading…</p></div>
    <section><h2>Latest reports</h2><div data-section="reports"></div></section>`,
  );
  const part = (name) => root.querySelector(`[data-section="${name}"]`);

  async function load() {
    const { workflows } = await api.get("/api/workflows?limit=200", { signal: ctx.signal });
    const trends = await Promise.all(
      workflows.map((w) => api.get(`/api/workflows/${seg(w.id)}/trends?limit=20`, { signal: ctx.signal }).catch((err) => ({ error: err, workflow_id: w.id, workflow_name: w.name, runs: [], outcomes: {} }))),
    );
    setHTML(
      part("workflows"),
      table(
        [
          { label: "Workflow", render: (t) => html`<a href="${href("reports", t.workflow_id)}">${t.workflow_name}</a>` },
          { label: "Last 20 runs", render: (t) => outcomeBar(t.outcomes, t.runs.length) },
          { label: "Durations", render: (t) => sparkline(t.runs.map((r) => ({ value: r.duration_ms, status: r.status, title: `${r.id}: ${r.status}, ${duration(r.duration_ms)}` }))), class: "hide-narrow" },
          { label: "Pass rate", render: (t) => rate(t.pass_rate), num: true },
          { label: "p95 duration", render: (t) => (t.duration ? duration(t.duration.p95_ms) : "—"), num: true },
          { label: "Latest", render: (t) => (t.runs.length ? html`${badge(t.runs[t.runs.length - 1].status)} ${relTime(t.runs[t.runs.length - 1].finished_at)}` : html`<span class="muted">never ran</span>`) },
        ],
        trends,
        { empty: "No workflows yet.", rowAttrs: (t) => ({ "data-workflow": t.workflow_id }) },
      ),
    );
    const latest = trends
      .flatMap((t) => t.runs.map((r) => ({ ...r, workflow_id: t.workflow_id, workflow_name: t.workflow_name })))
      .filter((r) => (r.artifacts || []).length)
      .sort((a, b) => (b.finished_at || "").localeCompare(a.finished_at || ""))
      .slice(0, 15);
    setHTML(
      part("reports"),
      table(
        [
          { label: "Run", render: (r) => html`<a href="${href("runs", r.id)}" class="mono">${r.id}</a>` },
          { label: "Workflow", render: (r) => html`<a href="${href("reports", r.workflow_id)}">${r.workflow_name}</a>` },
          { label: "Status", render: (r) => badge(r.status) },
          { label: "Finished", render: (r) => relTime(r.finished_at) },
          { label: "Reports", render: reportLinks },
        ],
        latest,
        { empty: "No run has recorded a report yet: a report_generator step or a test_runner suite with a junit file records one.", rowAttrs: (r) => ({ "data-run": r.id }) },
      ),
    );
  }
  await load();
  const soon = debounce(() => load().catch(() => {}), 400);
  ctx.on("workflow_completed", soon);
  ctx.on("manifest_applied", soon);
  ctx.on("resync", soon);
}

async function workflow(ctx, id) {
  const { api, root } = ctx;
  const limit = LIMITS.includes(Number(ctx.query.get("limit"))) ? Number(ctx.query.get("limit")) : 30;
  setHTML(
    root,
    html`${pageHeader(id, { crumb: html`<a href="#/reports">Reports and analytics</a> /` })}
    <div class="range-bar"><span class="muted" id="limit-label">Runs</span><div class="segmented" role="group" aria-labelledby="limit-label">${LIMITS.map(
      (n) => html`<a class="button" href="${href("reports", id)}${qs({ limit: n })}" ${n === limit ? html`aria-current="true"` : ""} data-limit="${n}">last ${n}</a>`,
    )}</div></div>
    <div class="grid cols-4" data-section="stats"></div>
    <div class="grid cols-2">
      <section class="card"><h3>Test pass rate per run</h3><div data-section="pass-chart"></div></section>
      <section class="card"><h3>Duration per run</h3><div data-section="duration-chart"></div></section>
    </div>
    <div class="grid cols-2">
      <section><h2>Slowest tests</h2><div data-section="slowest"></div></section>
      <section><h2>Most failing tests</h2><div data-section="failing"></div></section>
    </div>
    <section><h2>Runs and reports</h2><div data-section="runs"></div></section>`,
  );
  const part = (name) => root.querySelector(`[data-section="${name}"]`);

  async function load() {
    const [trends, metrics] = await Promise.all([
      api.get(`/api/workflows/${seg(id)}/trends?limit=${limit}`, { signal: ctx.signal }),
      api.get(`/api/workflows/${seg(id)}/metrics`, { signal: ctx.signal }).catch(() => null),
    ]);
    ctx.setTitle(`Reports: ${trends.workflow_name}`);
    root.querySelector(".page-header h1").textContent = trends.workflow_name;
    const runs = trends.runs;
    const stat = (key, label, value, hint) => html`<div class="card stat" data-stat="${key}"><span class="label">${label}</span><span class="value">${value}</span>${hint ? html`<span class="label">${hint}</span>` : ""}</div>`;
    const failedRuns = runs.filter((r) => r.status !== "succeeded").length;
    setHTML(
      part("stats"),
      html`${stat("runs", "Runs", String(runs.length), html`${outcomeBar(trends.outcomes, runs.length)}`)}
      ${stat("success", "Succeeded", runs.length ? rate((trends.outcomes.succeeded || 0) / runs.length) : "—", `${trends.outcomes.succeeded || 0} succeeded, ${failedRuns} did not`)}
      ${stat("pass-rate", "Test pass rate", rate(trends.pass_rate), metrics && metrics.tests && metrics.tests.flaky ? `${metrics.tests.flaky} flaky in the last ${Math.round(metrics.window_seconds / 60)} min` : "over the runs' test cases")}
      ${stat("duration", "Duration", trends.duration ? duration(trends.duration.p50_ms) : "—", trends.duration ? `median; p95 ${duration(trends.duration.p95_ms)}, max ${duration(trends.duration.max_ms)}` : "")}`,
    );
    // One point per run, in order; the x axis is the run's end.
    const at = (r) => new Date(r.finished_at || r.created_at).getTime();
    const withRate = runs.filter((r) => r.pass_rate !== null && r.pass_rate !== undefined);
    setHTML(
      part("pass-chart"),
      withRate.length ? lineChart([{ name: "Pass rate", points: withRate.map((r) => [at(r), r.pass_rate * 100]) }], { min: 0, max: 100, format: (v) => `${Math.round(v)}%`, label: "Test pass rate of each run" }) : html`<p class="empty">No run with test results yet.</p>`,
    );
    const timed = runs.filter((r) => r.duration_ms !== null && r.duration_ms !== undefined);
    setHTML(
      part("duration-chart"),
      timed.length ? lineChart([{ name: "Duration", points: timed.map((r) => [at(r), r.duration_ms]) }], { min: 0, format: (v) => duration(v), label: "Duration of each run" }) : html`<p class="empty">No finished run yet.</p>`,
    );
    setHTML(
      part("slowest"),
      table(
        [
          { label: "Test", render: testName },
          { label: "Mean", render: (t) => secs(t.mean_seconds), num: true },
          { label: "Max", render: (t) => secs(t.max_seconds), num: true },
          { label: "Runs", render: (t) => String(t.runs), num: true },
        ],
        trends.slowest_tests,
        { empty: "No test results in these runs.", rowAttrs: (t) => ({ "data-test": t.name }) },
      ),
    );
    setHTML(
      part("failing"),
      table(
        [
          { label: "Test", render: (t) => html`${testName(t)}${t.last_message ? html`<div class="failure-message">${t.last_message}</div>` : ""}` },
          { label: "Failed", render: (t) => `${t.failures} of ${t.runs}`, num: true },
          { label: "Last failure", render: (t) => (t.last_failed_run ? html`<a href="${href("runs", t.last_failed_run)}" class="mono">${t.last_failed_run}</a>` : "—") },
        ],
        trends.failing_tests,
        { empty: "No test failed in these runs.", rowAttrs: (t) => ({ "data-test": t.name }) },
      ),
    );
    setHTML(
      part("runs"),
      table(
        [
          { label: "Run", render: (r) => html`<a href="${href("runs", r.id)}" class="mono">${r.id}</a>` },
          { label: "Status", render: (r) => badge(r.status) },
          { label: "Finished", render: (r) => relTime(r.finished_at) },
          { label: "Duration", render: (r) => duration(r.duration_ms), num: true },
          { label: "Tests", render: (r) => (r.tests.total ? `${r.tests.passed}/${r.tests.total} passed` : "—"), num: true },
          { label: "Reports", render: reportLinks },
        ],
        [...runs].reverse(),
        { empty: "No finished run yet.", rowAttrs: (r) => ({ "data-run": r.id, "data-status": r.status }) },
      ),
    );
  }
  try {
    await load();
  } catch (err) {
    if (err.status === 404) {
      setHTML(root, html`${pageHeader("Workflow not found", { crumb: html`<a href="#/reports">Reports and analytics</a> /` })}${errorBox(err, `No workflow ${id}`)}`);
      return;
    }
    throw err;
  }
  const soon = debounce(() => load().catch(() => {}), 400);
  ctx.on("workflow_completed", (p) => {
    if (!p || !p.workflow_id || p.workflow_id === id) soon();
  });
  ctx.on("resync", soon);
}

// Overview: the source, what runs now, recent failures, firing alerts and system gauges,
// kept current from /ws.

import { html, setHTML, badge, relTime, duration, bytes, table, href, gaugeBar, facts, errorBox, debounce, lineChart, pageHeader } from "../lib/ui.js";

export async function render(ctx) {
  const { api, root } = ctx;
  setHTML(
    root,
    html`${pageHeader("Overview", { subtitle: "What the orchestrator is doing now" })}
    <div class="grid cols-4" data-section="gauges"></div>
    <div class="grid cols-2">
      <section><h2>Running now</h2><div data-section="running"></div></section>
      <section><h2><a href="#/alerts">Firing alerts</a></h2><div data-section="alerts"></div></section>
    </div>
    <section><h2>Recent failures</h2><div data-section="failures"></div></section>
    <div class="grid cols-2">
      <section><h2><a href="#/monitoring">System</a></h2><div class="card" data-section="chart"></div></section>
      <section><h2>Server</h2><div class="card" data-section="server"></div></section>
    </div>`,
  );
  const part = (name) => root.querySelector(`[data-section="${name}"]`);
  const opts = { signal: ctx.signal };
  let latest = null;
  let points = [];

  const runColumns = [
    { label: "Run", render: (r) => html`<a href="${href("runs", r.id)}">${r.id}</a>` },
    { label: "Workflow", render: (r) => html`<a href="${href("workflows", r.workflow_id)}">${r.workflow_name}</a>` },
    { label: "Status", render: (r) => badge(r.status) },
    { label: "Started", render: (r) => relTime(r.started_at || r.created_at) },
  ];

  async function loadRuns() {
    const [running, queued, failed] = await Promise.all([
      api.get("/api/runs?status=running&limit=20", opts),
      api.get("/api/runs?status=queued&limit=20", opts),
      api.get("/api/runs?status=failed&limit=8", opts),
    ]);
    setHTML(part("running"), table(runColumns, [...running.runs, ...queued.runs], { empty: "Nothing is running." }));
    setHTML(
      part("failures"),
      table(
        [
          ...runColumns.slice(0, 2),
          { label: "When", render: (r) => relTime(r.finished_at || r.created_at) },
          { label: "Why", render: (r) => r.message || (r.tests && (r.tests.failed || r.tests.errors) ? testsText(r.tests) : "—") },
          { label: "Duration", render: (r) => duration(r.duration_ms), num: true },
        ],
        failed.runs,
        { empty: "No failed runs." },
      ),
    );
  }

  async function loadAlerts() {
    let body;
    try {
      body = await api.get("/api/alerts", opts);
    } catch (err) {
      setHTML(part("alerts"), errorBox(err, "Alerts unavailable"));
      return;
    }
    const firing = (body.alerts || []).filter((a) => a.state === "firing");
    setHTML(
      part("alerts"),
      table(
        [
          { label: "Alert", render: (a) => html`<a href="${href("alerts", a.id)}">${a.name}</a>` },
          { label: "Severity", render: (a) => badge(a.severity || "none") },
          { label: "Since", render: (a) => relTime(a.fired_at || a.since) },
          { label: "Value", render: (a) => (a.value === null || a.value === undefined ? "—" : Number(a.value).toFixed(2)), num: true },
        ],
        firing,
        { empty: `No alert is firing (${(body.alerts || []).length} rule(s)).`, rowAttrs: (a) => ({ "data-alert": a.id }) },
      ),
    );
  }

  function showGauges() {
    if (!latest) {
      setHTML(part("gauges"), html`<div class="card muted">No system sample yet.</div>`);
      return;
    }
    const gauge = (label, value, percent) =>
      html`<div class="card stat" data-gauge="${label}"><span class="label">${label}</span><span class="value">${value}</span>${percent === undefined ? "" : gaugeBar(percent)}</div>`;
    setHTML(
      part("gauges"),
      html`${gauge("CPU", `${latest.cpu_percent.toFixed(0)}%`, latest.cpu_percent)}
      ${gauge("Memory", `${latest.memory_percent.toFixed(0)}%`, latest.memory_percent)}
      ${gauge("Disk", `${latest.disk_percent.toFixed(0)}%`, latest.disk_percent)}
      ${gauge("Orchestrator memory", bytes(latest.orchestrator_rss_bytes))}`,
    );
    const series = (key, name) => ({ name, points: points.map((p) => [new Date(p.at).getTime(), p[key]]) });
    setHTML(
      part("chart"),
      html`<h3>CPU and memory, last hour (%)</h3>${lineChart([series("cpu_percent", "CPU %"), series("memory_percent", "Memory %")], { min: 0, max: 100, label: "CPU and memory over the last hour" })}`,
    );
  }

  async function loadSystem() {
    try {
      const body = await api.get("/api/system/metrics?since=1h", opts);
      latest = body.latest;
      points = body.points || [];
    } catch (err) {
      setHTML(part("gauges"), errorBox(err, "System metrics unavailable"));
      return;
    }
    showGauges();
  }

  async function loadServer() {
    const status = await api.get("/api/status", opts);
    const objects = Object.entries(status.objects || {}).map(([k, n]) => `${n} ${k}`).join(", ") || "none";
    setHTML(
      part("server"),
      facts([
        ["Version", status.version],
        ["Environment", status.environment],
        ["Up since", relTime(status.started_at)],
        ["Project", html`<code>${status.project_dir}</code>`],
        ["Objects", objects],
        ["Active runs", String((status.active_runs || []).length)],
        ["Agents", String((status.agents || []).length)],
      ]),
    );
  }

  await Promise.all([loadRuns(), loadAlerts(), loadSystem(), loadServer()]);

  const runsSoon = debounce(() => loadRuns().catch(() => {}), 200);
  const alertsSoon = debounce(() => loadAlerts(), 200);
  const serverSoon = debounce(() => loadServer().catch(() => {}), 500);
  ctx.onLeave(() => [runsSoon, alertsSoon, serverSoon].forEach((fn) => fn.cancel()));
  ctx.on("workflow_started", () => (runsSoon(), serverSoon()));
  ctx.on("workflow_completed", () => (runsSoon(), serverSoon()));
  ctx.on("alert_firing", alertsSoon);
  ctx.on("alert_resolved", alertsSoon);
  ctx.on("manifest_applied", serverSoon);
  ctx.on("system_metrics", (sample) => {
    latest = sample;
    points.push({ ...sample });
    const cutoff = Date.now() - 3600 * 1000;
    points = points.filter((p) => new Date(p.at).getTime() >= cutoff).slice(-2000);
    showGauges();
  });
  ctx.on("resync", () => (runsSoon(), alertsSoon(), loadSystem(), serverSoon()));
}

// A run's test counts as people read them, as the server's `TestSummary::describe` says
// them: "212 passed, 2 new failures, 1 flaky, 3 quarantined".
function testsText(t) {
  const n = (key) => t[key] || 0;
  const parts = [`${n("passed")} passed`];
  const say = (count, one, many) => { if (count > 0) parts.push(`${count} ${count === 1 ? one : many}`); };
  say(n("new_failures"), "new failure", "new failures");
  say(n("still_failing"), "still failing", "still failing");
  say(n("flaky"), "flaky", "flaky");
  say(n("quarantined"), "quarantined", "quarantined");
  const classified = n("new_failures") + n("still_failing") + n("quarantined") + n("flaky");
  say(Math.max(0, n("failed") + n("errors") - classified), "failed", "failed");
  return parts.join(", ");
}

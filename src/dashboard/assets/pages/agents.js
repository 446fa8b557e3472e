// Agents: each agent with its state (enabled or disabled at run time), its latest health
// check and health score, start and stop, its metrics over the window (executions,
// success rate, p50/p95 durations, CPU seconds, peak memory, last error) and its recent
// step executions with links to their runs and logs. Live on agent_status_changed and
// workflow_completed.

import { html, setHTML, badge, relTime, duration, bytes, table, href, facts, debounce, actionButtons, pageHeader, safeUrl } from "../lib/ui.js";

const RECENT = 8;

function percent(rate) {
  return rate === null || rate === undefined ? "—" : `${(rate * 100).toFixed(rate >= 0.995 || rate === 0 ? 0 : 1)} %`;
}

function seconds(value) {
  return value === null || value === undefined ? "—" : duration(value * 1000);
}

/** A health score 0..1 as a badge-like pill, coloured by band. */
function score(value) {
  const v = Number(value);
  const band = v >= 0.8 ? "succeeded" : v >= 0.5 ? "cancelled" : "failed";
  return html`<span class="badge s-${band}" data-score="${v.toFixed(2)}" title="health score, 0 to 1">${v.toFixed(2)}</span>`;
}

function healthCheck(check) {
  if (!check) return html`<span class="muted">not run yet</span>`;
  return html`${badge(check.status)} <span class="muted">${relTime(check.checked_at)}</span>${check.message ? html`<div class="check-message">${check.message}</div>` : ""}`;
}

function agentCard(agent, metrics, executions) {
  const m = metrics || {};
  const state = agent.enabled ? "enabled" : "disabled";
  const lastError = m.last_error;
  return html`<article class="card agent-card" data-agent="${agent.name}" data-state="${state}">
    <div class="agent-head">
      <div><h2>${agent.name}</h2><div class="muted">${agent.type}${agent.builtin ? " · built in" : ""}${agent.description ? ` · ${agent.description}` : ""}</div></div>
      <div class="agent-actions">
        ${badge(state === "enabled" ? "ok" : "cancelled", state)}
        ${metrics ? score(m.health_score) : ""}
        ${agent.enabled
          ? html`<button type="button" class="danger" data-action="stop" data-name="${agent.name}" aria-label="Stop ${agent.name}">Stop</button>`
          : html`<button type="button" class="primary" data-action="start" data-name="${agent.name}" aria-label="Start ${agent.name}">Start</button>`}
      </div>
    </div>
    ${!agent.manifest_enabled ? html`<p class="muted">Its manifest says <code>enabled: false</code>.</p>` : ""}
    <div class="grid cols-2">
      ${facts([
        ["Health check", healthCheck(m.health_check)],
        ["Running steps", String(agent.running_steps ?? 0)],
        ["Executions", metrics ? html`${String(m.executions)} <span class="muted">in the last ${duration((m.window_seconds || 0) * 1000)}</span>` : "—"],
        ["Success rate", percent(m.success_rate)],
        ["Duration p50 / p95", html`${seconds(m.duration_p50_seconds)} / ${seconds(m.duration_p95_seconds)}`],
      ])}
      ${facts([
        ["CPU", m.cpu_seconds === null || m.cpu_seconds === undefined ? "—" : `${m.cpu_seconds.toFixed(2)} s`],
        ["Peak memory", bytes(m.max_rss_bytes)],
        [
          "Last error",
          lastError
            ? html`<span data-last-error>${lastError.message}</span><div class="muted"><a href="${href("runs", lastError.run_id)}">${lastError.run_id}</a> · step ${lastError.step} · ${relTime(lastError.at)}</div>`
            : html`<span class="muted">none</span>`,
        ],
      ])}
    </div>
    <h3>Recent executions</h3>
    ${executions === null
      ? html`<p class="muted">Could not read its executions.</p>`
      : table(
          [
            { label: "Run", render: (x) => html`<a href="${href("runs", x.run_id)}">${x.run_id}</a><div class="muted">${x.workflow_name}</div>` },
            { label: "Step", render: (x) => html`${x.step}<div class="muted">${x.action}</div>` },
            { label: "Status", render: (x) => badge(x.status) },
            { label: "When", render: (x) => relTime(x.finished_at || x.started_at) },
            { label: "Duration", render: (x) => duration(x.duration_ms), num: true },
            { label: "Log", render: (x) => html`<a href="${safeUrl(x.log_url)}" target="_blank" rel="noopener" data-log aria-label="Log of ${x.step} in ${x.run_id}">log</a>` },
          ],
          executions,
          { empty: "No executions yet.", rowAttrs: (x) => ({ "data-execution": `${x.run_id}/${x.step}` }) },
        )}
  </article>`;
}

export async function render(ctx) {
  const { api, root } = ctx;
  setHTML(root, html`${pageHeader("Agents", { subtitle: "What runs the steps: state, health, metrics and recent executions" })}<div data-section="agents"><p class="loading">Loading…</p></div>`);
  const part = root.querySelector('[data-section="agents"]');
  const opts = { signal: ctx.signal };

  async function load() {
    const { agents } = await api.get("/api/agents", opts);
    const details = await Promise.all(
      agents.map(async (agent) => {
        const name = encodeURIComponent(agent.name);
        const [metrics, executions] = await Promise.all([
          api.get(`/api/agents/${name}/metrics`, opts).catch((err) => (err.name === "AbortError" ? Promise.reject(err) : null)),
          api
            .get(`/api/agents/${name}/executions?limit=${RECENT}`, opts)
            .then((body) => body.executions)
            .catch((err) => (err.name === "AbortError" ? Promise.reject(err) : null)),
        ]);
        return agentCard(agent, metrics, executions);
      }),
    );
    setHTML(part, agents.length ? html`${details}` : html`<p class="empty">No agents.</p>`);
  }

  actionButtons(part, api, "/api/agents", { stop: "Stopped", start: "Started" }, load);

  await load();
  const soon = debounce(() => load().catch(() => {}), 300);
  for (const type of ["agent_status_changed", "workflow_completed", "manifest_applied", "resync"]) ctx.on(type, soon);
}

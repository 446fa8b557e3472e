// Workers: every worker that registered with this controller (up, draining or lost), its
// labels, slots, the attempts it runs with links to their runs, the age of its last
// heartbeat, version and host, with drain and resume. `#/workers/NAME` highlights one.
// Live on worker_connected, worker_lost, worker_drained, worker_resumed and the steps'
// events; the heartbeat ages tick every second between them.

import { html, setHTML, badge, relTime, table, href, pageHeader, debounce, actionButtons, duration } from "../lib/ui.js";

function state(worker) {
  if (worker.state === "lost") return "lost";
  return worker.draining ? "draining" : "up";
}

function stateBadge(worker) {
  const s = state(worker);
  return badge(s === "up" ? "succeeded" : s === "lost" ? "failed" : "cancelled", s);
}

function labels(worker) {
  const pairs = Object.entries(worker.labels || {});
  if (!pairs.length) return html`<span class="muted">none</span>`;
  return html`${pairs.map(([k, v]) => html`<code class="label" data-label="${k}=${v}">${k}=${v}</code> `)}`;
}

function running(worker) {
  if (!worker.running.length) return html`<span class="muted">idle</span>`;
  return html`<ul class="plain">${worker.running.map(
    (a) => html`<li data-attempt="${a.run_id}/${a.step}/${a.attempt}"><a href="${href("runs", a.run_id)}">${a.run_id}</a> · ${a.step}${a.attempt > 1 ? html` <span class="muted">(attempt ${String(a.attempt)})</span>` : ""}</li>`,
  )}</ul>`;
}

function heartbeat(worker) {
  if (worker.heartbeat_age_ms === null || worker.heartbeat_age_ms === undefined) return html`<span class="muted">not since this server started</span>`;
  return html`<span data-heartbeat-age="${String(worker.heartbeat_age_ms)}">${duration(worker.heartbeat_age_ms)} ago</span>`;
}

/** What a re-render would change: everything but the heartbeat ages, which tick in place. */
function signature(list) {
  return JSON.stringify({ ...list, workers: list.workers.map((w) => ({ ...w, heartbeat_age_ms: w.heartbeat_age_ms === null })) });
}

function actions(worker) {
  if (worker.state === "lost") return html`<span class="muted">—</span>`;
  return worker.draining
    ? html`<button type="button" class="primary" data-action="resume" data-name="${worker.name}" aria-label="Resume ${worker.name}">Resume</button>`
    : html`<button type="button" class="danger" data-action="drain" data-name="${worker.name}" aria-label="Drain ${worker.name}">Drain</button>`;
}

export async function render(ctx) {
  const { api, root } = ctx;
  const focus = ctx.params && ctx.params[0];
  setHTML(root, html`${pageHeader("Workers", { subtitle: "Machines that run steps with runs_on over NATS: labels, slots, running attempts, heartbeats; drain and resume" })}<div data-section="workers"><p class="loading">Loading…</p></div>`);
  const part = root.querySelector('[data-section="workers"]');
  const opts = { signal: ctx.signal };
  let list = null;
  let shown = null;
  let seenAt = Date.now();

  function show() {
    if (!list) return;
    if (!list.enabled) {
      setHTML(part, html`<div class="notice" data-workers="disabled"><p><strong>Workers are not enabled.</strong> This server runs every step itself. Start it with <code>orchestrator start --nats nats://HOST:4222</code> (or set <code>distributed.nats</code> in the configuration) and start workers with <code>orchestrator worker --nats URL --name NAME --labels key=value</code>.</p></div>`);
      return;
    }
    const up = list.workers.filter((w) => w.state === "up");
    const slots = up.reduce((n, w) => n + w.slots, 0);
    const busy = up.reduce((n, w) => n + w.running.length, 0);
    setHTML(
      part,
      html`<p class="muted" data-workers-summary>${String(up.length)} of ${String(list.workers.length)} worker(s) up · ${String(busy)} of ${String(slots)} slot(s) busy · lease ${duration(list.lease_ms)}</p>
      ${table(
        [
          { label: "Worker", render: (w) => html`<strong>${w.name}</strong><div class="muted">${w.host} · pid ${String(w.pid)}</div>` },
          { label: "State", render: (w) => stateBadge(w) },
          { label: "Labels", render: (w) => labels(w) },
          { label: "Slots", render: (w) => html`<span data-slots>${String(w.running.length)} / ${String(w.slots)}</span>`, num: true },
          { label: "Running", render: (w) => running(w) },
          { label: "Heartbeat", render: (w) => heartbeat(w) },
          { label: "Version", render: (w) => html`${w.version}<div class="muted">started ${relTime(w.started_at)} · ${String(w.finished)} done</div>`, class: "hide-narrow" },
          { label: "", render: (w) => actions(w) },
        ],
        list.workers,
        {
          empty: "No worker has registered yet: start one with `orchestrator worker --nats URL --name NAME --labels key=value`.",
          caption: "Workers",
          rowAttrs: (w) => ({ "data-worker": w.name, "data-state": state(w), class: w.name === focus ? "selected" : "" }),
        },
      )}`,
    );
  }

  /** The heartbeat ages as of now, in place: the rows (and their buttons) stay. */
  function tick() {
    if (!list || !list.enabled) return;
    const since = Date.now() - seenAt;
    for (const w of list.workers) {
      const span = part.querySelector(`[data-worker="${CSS.escape(w.name)}"] [data-heartbeat-age]`);
      if (span && w.heartbeat_age_ms !== null) {
        span.dataset.heartbeatAge = String(w.heartbeat_age_ms + since);
        span.textContent = `${duration(w.heartbeat_age_ms + since)} ago`;
      }
    }
  }

  async function load() {
    list = await api.get("/api/workers", opts);
    seenAt = Date.now();
    const now = signature(list);
    if (now === shown) {
      tick();
      return;
    }
    shown = now;
    show();
  }

  actionButtons(part, api, "/api/workers", { drain: "Draining", resume: "Resumed" }, load);

  await load();
  const soon = debounce(() => load().catch(() => {}), 200);
  for (const type of ["worker_connected", "worker_lost", "worker_drained", "worker_resumed", "step_started", "step_completed", "resync"]) ctx.on(type, soon);
  // Heartbeat ages tick every second; the list is read again every few seconds, and the
  // table drawn again only when something besides the ages changed.
  const ticker = setInterval(tick, 1000);
  const timer = setInterval(() => load().catch(() => {}), 3000);
  ctx.signal.addEventListener("abort", () => {
    clearInterval(ticker);
    clearInterval(timer);
  });
}

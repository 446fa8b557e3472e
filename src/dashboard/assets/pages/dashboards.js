// Custom dashboards: pages composed from the available charts and tables, saved as
// `Dashboard` manifests (`dashboards/<slug>.yaml`, in git like everything else).
//
//   #/dashboards            the list
//   #/dashboards/<id>       one dashboard, its widgets showing live data
//   #/dashboards/new        compose a new one
//   #/dashboards/<id>/edit  change one
//
// Composing: add, remove and reorder widgets, pick each one's type, title, width and
// options; the server validates as you type and saving goes through `POST /api/manifests`
// (a git-source server gives the YAML to commit instead).

import { html, setHTML, el, href, table, badge, relTime, duration, bytes, sparkline, lineChart, facts, errorBox, toast, pageHeader, debounce, copyText, downloadText, fieldFor } from "../lib/ui.js";
import { qs } from "../lib/api.js";
import { toYaml } from "../lib/yaml.js";

/** Every widget type: its label, default title and the options it takes. */
export const WIDGETS = {
  system_metric: { label: "System metric chart", options: ["metric", "since"] },
  pass_rate: { label: "Workflow pass-rate trend", options: ["workflow", "runs"] },
  runs_table: { label: "Runs table", options: ["workflow", "status", "limit"] },
  alerts_table: { label: "Alerts table", options: ["state"] },
  workflow_sparkline: { label: "A workflow's last runs", options: ["workflow", "runs"] },
  agent_metrics: { label: "Agent metrics", options: ["agent"] },
};

const METRICS = {
  cpu_percent: ["CPU", "%"],
  memory_percent: ["Memory", "%"],
  disk_percent: ["Disk", "%"],
  load_average: ["Load average", ""],
  network_rx_bytes_per_second: ["Network received", "B/s"],
  network_tx_bytes_per_second: ["Network sent", "B/s"],
  process_count: ["Processes", ""],
  orchestrator_cpu_percent: ["Orchestrator CPU", "%"],
  orchestrator_rss_bytes: ["Orchestrator memory", "B"],
};
const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled", "timed_out", "skipped", "interrupted"];
const ALERT_STATES = ["inactive", "pending", "firing", "resolved"];
const FINISHED = new Set(["succeeded", "failed", "timed_out"]);

export async function render(ctx) {
  const [first, second] = ctx.params;
  if (!first) return list(ctx);
  if (first === "new") return compose(ctx, null);
  if (second === "edit") return compose(ctx, first);
  return view(ctx, first);
}

// ---- list --------------------------------------------------------------------------------

async function list(ctx) {
  const { api, root } = ctx;
  setHTML(root, html`${pageHeader("Custom dashboards", { subtitle: "Pages composed from charts and tables, kept as manifests under dashboards/" })}<div data-section="list"></div>`);
  root.querySelector("[data-actions]").append(el("a", { class: "button primary", href: "#/dashboards/new", "data-action": "new-dashboard" }, "New dashboard"));
  async function load() {
    const { dashboards } = await api.get("/api/dashboards", { signal: ctx.signal });
    setHTML(
      root.querySelector('[data-section="list"]'),
      table(
        [
          { label: "Dashboard", render: (d) => html`<a href="${href("dashboards", d.id)}"><strong>${d.name}</strong></a><div class="muted mono">${d.id}</div>` },
          { label: "Description", render: (d) => d.description || "", class: "hide-narrow" },
          { label: "Widgets", render: (d) => String(d.widgets), num: true },
          { label: "Manifest", render: (d) => html`${d.status === "applied" ? "" : badge(d.status)} <span class="mono muted">${d.source_file}</span>`, class: "hide-narrow" },
          { label: "", render: (d) => html`<a class="button" href="${href("dashboards", d.id, "edit")}" aria-label="Edit ${d.name}">Edit</a>` },
        ],
        dashboards,
        { empty: "No dashboards yet: compose one with “New dashboard”.", rowAttrs: (d) => ({ "data-dashboard-row": d.id }) },
      ),
    );
  }
  await load();
  const soon = debounce(() => load().catch(() => {}), 250);
  ctx.on("manifest_applied", soon);
  ctx.on("resync", soon);
}

// ---- view --------------------------------------------------------------------------------

async function view(ctx, id) {
  const { api, root } = ctx;
  const dashboard = await api.get(`/api/dashboards/${encodeURIComponent(id)}`, { signal: ctx.signal });
  ctx.setTitle(dashboard.name);
  setHTML(
    root,
    html`${pageHeader(dashboard.name, {
      crumb: html`<a href="#/dashboards">Custom dashboards</a> / <span class="mono">${dashboard.id}</span>`,
      subtitle: dashboard.description,
    })}<div class="widget-grid" data-section="widgets"></div>`,
  );
  root.querySelector("[data-actions]").append(el("a", { class: "button", href: href("dashboards", dashboard.id, "edit"), "data-action": "edit" }, "Edit"));
  const widgets = (dashboard.spec && dashboard.spec.widgets) || [];
  await renderWidgets(ctx, root.querySelector('[data-section="widgets"]'), widgets);
}

/** Renders widgets into a grid, each loading its own data and refreshing itself. */
async function renderWidgets(ctx, grid, widgets, { live = true } = {}) {
  grid.replaceChildren();
  const loads = widgets.map((widget, index) => {
    const body = el("div", { class: "widget-body" }, el("p", { class: "loading" }, "Loading…"));
    const card = el(
      "section",
      { class: `card widget w-${Math.min(4, Math.max(1, Number(widget.width) || 2))}`, "data-widget": index, "data-widget-type": widget.type },
      el("h2", {}, widget.title || defaultTitle(widget)),
      body,
    );
    grid.append(card);
    const load = async () => {
      try {
        setHTML(body, await WIDGET_RENDERERS[widget.type](ctx, widget.options || {}));
        card.dataset.loaded = "true";
      } catch (err) {
        if (ctx.left || (err && err.name === "AbortError")) return;
        if (!(err && err.name === "ApiError")) console.error("a widget failed", err);
        setHTML(body, errorBox(err, "This widget cannot be shown"));
        card.dataset.loaded = "error";
      }
    };
    if (!WIDGET_RENDERERS[widget.type]) {
      setHTML(body, html`<p class="muted">Unknown widget type ${widget.type}.</p>`);
      return Promise.resolve();
    }
    if (live) {
      const soon = debounce(load, 400);
      for (const type of WIDGET_EVENTS[widget.type] || []) ctx.on(type, soon);
      ctx.on("resync", soon);
      if (widget.type === "system_metric" || widget.type === "agent_metrics") {
        const timer = setInterval(() => !document.hidden && load(), 15000);
        ctx.onLeave(() => clearInterval(timer));
      }
      ctx.onLeave(() => soon.cancel());
    }
    return load();
  });
  await Promise.all(loads);
}

function defaultTitle(widget) {
  const o = widget.options || {};
  switch (widget.type) {
    case "system_metric":
      return `${(METRICS[o.metric || "cpu_percent"] || [o.metric])[0]} (last ${o.since || "1h"})`;
    case "pass_rate":
      return `Pass rate${o.workflow ? ` of ${o.workflow}` : ""}`;
    case "runs_table":
      return [o.status ? `${o.status.replace(/_/g, " ")} runs` : "Runs", o.workflow ? `of ${o.workflow}` : ""].filter(Boolean).join(" ").replace(/^./, (c) => c.toUpperCase());
    case "alerts_table":
      return o.state ? `Alerts ${o.state}` : "Alerts";
    case "workflow_sparkline":
      return `Last runs of ${o.workflow || "?"}`;
    case "agent_metrics":
      return `Agent ${o.agent || "?"}`;
    default:
      return widget.type;
  }
}

const WIDGET_EVENTS = {
  pass_rate: ["workflow_completed"],
  runs_table: ["workflow_started", "workflow_completed"],
  workflow_sparkline: ["workflow_completed"],
  alerts_table: ["alert_firing", "alert_resolved", "alert_state_changed"],
  agent_metrics: ["step_completed", "agent_status_changed"],
};

const WIDGET_RENDERERS = {
  async system_metric(ctx, o) {
    const metric = o.metric || "cpu_percent";
    const [label, unit] = METRICS[metric] || [metric, ""];
    const data = await ctx.api.get(`/api/system/metrics${qs({ since: o.since || "1h" })}`, { signal: ctx.signal });
    const points = (data.points || []).filter((p) => typeof p[metric] === "number").map((p) => [new Date(p.at).getTime(), p[metric]]);
    const latest = data.latest && typeof data.latest[metric] === "number" ? data.latest[metric] : null;
    if (latest !== null && data.latest.at) points.push([new Date(data.latest.at).getTime(), latest]);
    const format = unit === "%" ? (v) => `${Math.round(v)}%` : unit === "B" || unit === "B/s" ? (v) => `${bytes(v)}${unit === "B/s" ? "/s" : ""}` : (v) => (Math.round(v * 100) / 100).toString();
    return html`<p class="widget-figure">${latest === null ? "—" : format(latest)} <span class="muted">now</span></p>${lineChart([{ name: label, points }], { label, format, min: 0, max: unit === "%" ? 100 : undefined, height: 140 })}`;
  },

  async pass_rate(ctx, o) {
    const limit = o.runs || 50;
    const data = await ctx.api.get(`/api/runs${qs({ workflow: o.workflow, limit })}`, { signal: ctx.signal });
    const runs = (data.runs || []).filter((r) => FINISHED.has(r.status)).reverse();
    if (!runs.length) return html`<p class="empty">No finished runs yet.</p>`;
    const window = Math.min(5, runs.length);
    const points = [];
    runs.forEach((run, i) => {
      if (i + 1 < window) return;
      const slice = runs.slice(i + 1 - window, i + 1);
      const passed = slice.filter((r) => r.status === "succeeded").length;
      points.push([new Date(run.finished_at || run.created_at).getTime(), (passed / slice.length) * 100]);
    });
    const passed = runs.filter((r) => r.status === "succeeded").length;
    const rate = Math.round((passed / runs.length) * 100);
    return html`<p class="widget-figure" data-pass-rate="${rate}">${rate}% <span class="muted">of ${runs.length} run${runs.length === 1 ? "" : "s"} passed</span></p>
      ${lineChart([{ name: `Pass rate over the last ${window} runs`, points }], { label: "Pass rate", format: (v) => `${Math.round(v)}%`, min: 0, max: 100, height: 140 })}`;
  },

  async runs_table(ctx, o) {
    const data = await ctx.api.get(`/api/runs${qs({ workflow: o.workflow, status: o.status, limit: o.limit || 10 })}`, { signal: ctx.signal });
    return table(
      [
        { label: "Run", render: (r) => html`<a href="${href("runs", r.id)}" class="mono">${r.id}</a>` },
        { label: "Workflow", render: (r) => html`<a href="${href("workflows", r.workflow_id)}">${r.workflow_name || r.workflow_id}</a>` },
        { label: "Status", render: (r) => badge(r.status) },
        { label: "Created", render: (r) => relTime(r.created_at), class: "hide-narrow" },
        { label: "Duration", render: (r) => duration(r.duration_ms), num: true },
      ],
      data.runs || [],
      { empty: "No runs match.", rowAttrs: (r) => ({ "data-run": r.id }) },
    );
  },

  async alerts_table(ctx, o) {
    const data = await ctx.api.get("/api/alerts", { signal: ctx.signal });
    const alerts = (data.alerts || []).filter((a) => !o.state || a.state === o.state);
    return table(
      [
        { label: "Alert", render: (a) => html`<strong>${a.name}</strong><div class="muted mono">${a.condition || ""}</div>` },
        { label: "State", render: (a) => badge(a.state) },
        { label: "Severity", render: (a) => (a.severity ? badge(a.severity) : "—") },
        { label: "Value", render: (a) => (a.value === null || a.value === undefined ? "—" : String(Math.round(a.value * 100) / 100)), num: true },
        { label: "Since", render: (a) => relTime(a.since), class: "hide-narrow" },
      ],
      alerts,
      { empty: o.state ? `No alert is ${o.state}.` : "No alert rules.", rowAttrs: (a) => ({ "data-alert": a.id }) },
    );
  },

  async workflow_sparkline(ctx, o) {
    const data = await ctx.api.get(`/api/runs${qs({ workflow: o.workflow, limit: o.runs || 20 })}`, { signal: ctx.signal });
    const runs = (data.runs || []).slice().reverse();
    const last = runs[runs.length - 1];
    return html`<p>${sparkline(
      runs.map((r) => ({ value: r.duration_ms || 1, status: r.status, title: `${r.id}: ${r.status}, ${duration(r.duration_ms)}` })),
      { width: 240, height: 36, label: `Last runs of ${o.workflow}` },
    )}</p><p class="muted">${last ? html`Last: ${badge(last.status)} ${relTime(last.finished_at || last.created_at)} · ` : ""}<a href="${href("workflows", o.workflow || "")}">${o.workflow}</a></p>`;
  },

  async agent_metrics(ctx, o) {
    const m = await ctx.api.get(`/api/agents/${encodeURIComponent(o.agent || "")}/metrics`, { signal: ctx.signal });
    const pct = (v) => (v === null || v === undefined ? "—" : `${Math.round(v * 100)}%`);
    const secs = (v) => (v === null || v === undefined ? "—" : duration(v * 1000));
    return facts([
      ["Executions", String(m.executions ?? 0)],
      ["Success rate", pct(m.success_rate)],
      ["Duration p50 / p95", `${secs(m.duration_p50_seconds)} / ${secs(m.duration_p95_seconds)}`],
      ["Health score", m.health_score === undefined ? "—" : String(Math.round(m.health_score * 100) / 100)],
      ["Last error", m.last_error ? html`<a href="${href("runs", m.last_error.run_id || "")}">${m.last_error.run_id || "a run"}</a> ${m.last_error.message || ""}` : "none"],
    ]);
  },
};

// ---- compose -----------------------------------------------------------------------------

async function compose(ctx, id) {
  const { api, root } = ctx;
  const [status, dashboard, workflowList, agentList] = await Promise.all([
    api.get("/api/status", { signal: ctx.signal }),
    id ? api.get(`/api/dashboards/${encodeURIComponent(id)}`, { signal: ctx.signal }) : null,
    api.get("/api/workflows?limit=1000", { signal: ctx.signal }),
    api.get("/api/agents", { signal: ctx.signal }),
  ]);
  const gitMode = (status.source || {}).kind === "git";
  const workflows = workflowList.workflows || [];
  const agents = agentList.agents || [];
  const spec = (dashboard && dashboard.spec) || { name: "", widgets: [{ type: "runs_table", options: { limit: 10 } }] };
  const extra = Object.fromEntries(Object.entries(spec).filter(([k]) => !["kind", "name", "description", "widgets"].includes(k)));
  const state = {
    kind: spec.kind,
    name: spec.name || "",
    description: spec.description || "",
    widgets: (spec.widgets || []).map((w) => ({ ...w, options: { ...(w.options || {}) } })),
  };
  const title = dashboard ? `Edit ${dashboard.name}` : "New dashboard";
  ctx.setTitle(title);
  setHTML(
    root,
    html`${pageHeader(title, {
      crumb: html`<a href="#/dashboards">Custom dashboards</a>${dashboard ? html` / <a href="${href("dashboards", dashboard.id)}" class="mono">${dashboard.id}</a>` : ""}`,
      subtitle: gitMode ? "This server follows a git repository: commit the YAML below to add the dashboard." : "Saved as a manifest under dashboards/, validated first.",
    })}
    <div class="editor-layout">
      <form class="editor-form" data-form="dashboard" novalidate>
        <section class="card" data-section="basics"></section>
        <section class="card" data-section="widgets"></section>
      </form>
      <aside class="editor-side">
        <section class="card" data-section="problems" aria-live="polite"></section>
        <section class="card" data-section="yaml"><h2>YAML</h2><p class="muted" data-file></p><pre class="code" data-yaml></pre></section>
      </aside>
    </div>
    <h2>Preview</h2><div class="widget-grid" data-section="preview"></div>`,
  );
  const part = (name) => root.querySelector(`[data-section="${name}"]`);
  const form = root.querySelector('[data-form="dashboard"]');
  const actions = root.querySelector("[data-actions]");
  const saveButton = el("button", { type: "button", class: "primary", "data-action": "save" }, dashboard ? "Save" : "Create");
  const copyButton = el("button", { type: "button", "data-action": "copy" }, "Copy YAML");
  const downloadButton = el("button", { type: "button", "data-action": "download" }, "Download");
  if (gitMode) actions.append(copyButton, downloadButton);
  else actions.append(saveButton, copyButton);
  actions.append(el("a", { class: "button", href: dashboard ? href("dashboards", dashboard.id) : "#/dashboards" }, "Cancel"));
  let lastValidation = null;

  const manifest = () => {
    const m = {};
    if (state.kind) m.kind = state.kind;
    m.name = state.name;
    if (state.description) m.description = state.description;
    m.widgets = state.widgets.map((w) => {
      const out = { type: w.type };
      if (w.title) out.title = w.title;
      if (w.width) out.width = Number(w.width);
      const options = Object.fromEntries(Object.entries(w.options || {}).filter(([, v]) => v !== "" && v !== undefined && v !== null));
      if (Object.keys(options).length) out.options = options;
      return out;
    });
    return Object.assign(m, extra);
  };

  const text = (attrs, value) => {
    const node = el("input", { type: "text", autocomplete: "off", ...attrs });
    node.value = value ?? "";
    return node;
  };
  const select = (attrs, choices, value) => {
    const node = el("select", attrs);
    for (const [v, label] of choices) node.append(el("option", { value: v, selected: String(value ?? "") === v }, label));
    return node;
  };
  let fid = 0;
  const field = (label, control, pointer, hint) => {
    control.id = control.id || `dash-f-${++fid}`;
    return el("div", { class: "field", "data-pointer": pointer }, el("label", { for: control.id }, label), control, hint ? el("span", { class: "hint" }, hint) : null);
  };

  function optionField(w, i, name) {
    const o = w.options || {};
    const attrs = { "data-widget": i, "data-option": name };
    const pointer = `/widgets/${i}/options/${name}`;
    switch (name) {
      case "metric":
        return field("Metric", select(attrs, Object.entries(METRICS).map(([k, [label]]) => [k, label]), o.metric || "cpu_percent"), pointer);
      case "since":
        return field("Period", text({ ...attrs, placeholder: "1h" }, o.since), pointer, "How far back: 15m, 1h, 1d");
      case "workflow": {
        const choices = [["", w.type === "workflow_sparkline" ? "Choose…" : "(every workflow)"], ...workflows.map((wf) => [wf.id, wf.name])];
        if (o.workflow && !workflows.some((wf) => wf.id === o.workflow)) choices.push([o.workflow, `${o.workflow} (not in force)`]);
        return field("Workflow", select(attrs, choices, o.workflow), pointer);
      }
      case "status":
        return field("Status", select(attrs, [["", "(any)"], ...STATUSES.map((s) => [s, s.replace(/_/g, " ")])], o.status), pointer);
      case "state":
        return field("State", select(attrs, [["", "(any)"], ...ALERT_STATES.map((s) => [s, s])], o.state), pointer);
      case "limit":
        return field("Rows", text({ ...attrs, type: "number", min: "1", max: "100", "data-number": "" }, o.limit), pointer);
      case "runs":
        return field("Runs", text({ ...attrs, type: "number", min: "1", max: "500", "data-number": "" }, o.runs), pointer);
      case "agent": {
        const choices = [["", "Choose…"], ...agents.map((a) => [a.name, a.name])];
        return field("Agent", select(attrs, choices, o.agent), pointer);
      }
      default:
        return null;
    }
  }

  function renderForm() {
    part("basics").replaceChildren(
      el("h2", {}, "Dashboard"),
      field("Name", text({ "data-bind": "name", placeholder: "Team board" }, state.name), "/name", "The id and file name are derived from it"),
      field("Description", text({ "data-bind": "description" }, state.description), "/description"),
    );
    const cards = state.widgets.map((w, i) =>
      el(
        "fieldset",
        { class: "editor-item", "data-widget-card": i, "data-pointer": `/widgets/${i}` },
        el("legend", {}, `Widget ${i + 1}`),
        el(
          "div",
          { class: "editor-row" },
          field("Type", select({ "data-widget": i, "data-key": "type" }, [...(WIDGETS[w.type] ? [] : [[w.type, `${w.type} (unknown)`]]), ...Object.entries(WIDGETS).map(([k, v]) => [k, v.label])], w.type), `/widgets/${i}/type`),
          field("Title", text({ "data-widget": i, "data-key": "title", placeholder: defaultTitle(w) }, w.title), `/widgets/${i}/title`),
          field("Width", select({ "data-widget": i, "data-key": "width" }, [["", "(half)"], ["1", "quarter"], ["2", "half"], ["3", "three quarters"], ["4", "full"]], w.width), `/widgets/${i}/width`),
        ),
        el("div", { class: "editor-row", "data-pointer": `/widgets/${i}/options` }, ...(WIDGETS[w.type] ? WIDGETS[w.type].options : []).map((name) => optionField(w, i, name))),
        el(
          "div",
          { class: "editor-item-actions" },
          el("button", { type: "button", "data-op": "up", "data-index": i, disabled: i === 0, "aria-label": `Move widget ${i + 1} up` }, "↑ Up"),
          el("button", { type: "button", "data-op": "down", "data-index": i, disabled: i === state.widgets.length - 1, "aria-label": `Move widget ${i + 1} down` }, "↓ Down"),
          el("button", { type: "button", class: "danger", "data-op": "remove", "data-index": i }, "Remove widget"),
        ),
      ),
    );
    const addType = select({ "data-add-type": "", "aria-label": "Type of the widget to add" }, Object.entries(WIDGETS).map(([k, v]) => [k, v.label]), "system_metric");
    part("widgets").replaceChildren(
      el("h2", {}, "Widgets"),
      ...(cards.length ? cards : [el("p", { class: "muted" }, "No widgets yet.")]),
      el("div", { class: "editor-row add-widget" }, addType, el("button", { type: "button", "data-op": "add" }, "Add widget")),
    );
  }

  function showDiagnostics(diagnostics) {
    for (const node of form.querySelectorAll(".field-error")) node.remove();
    for (const node of form.querySelectorAll("[data-invalid]")) node.removeAttribute("data-invalid");
    for (const node of form.querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
    const errors = diagnostics.filter((d) => d.severity !== "warning");
    for (const d of diagnostics) {
      const target = fieldFor(form, d.pointer || "");
      if (!target) continue;
      target.dataset.invalid = d.severity === "warning" ? "warning" : "error";
      const control = target.querySelector("input, select");
      if (control && d.severity !== "warning") control.setAttribute("aria-invalid", "true");
      target.append(el("p", { class: "field-error", "data-diagnostic": d.pointer || "" }, d.message));
    }
    setHTML(
      part("problems"),
      html`<h2>Validation</h2>${
        diagnostics.length
          ? html`<p class="form-error" data-valid="${errors.length ? "false" : "true"}">${errors.length} error${errors.length === 1 ? "" : "s"}</p><ul class="diagnostics">${diagnostics.map((d) => html`<li data-severity="${d.severity}"><span class="mono">${lastValidation ? `${lastValidation.file}:` : ""}${d.line}:${d.column}</span> <code>${d.pointer || "/"}</code> ${d.message}</li>`)}</ul>`
          : html`<p class="ok" data-valid="true">✓ Valid</p>`
      }`,
    );
  }

  let validation = null;
  async function validateNow() {
    if (validation) validation.abort();
    validation = new AbortController();
    try {
      const m = manifest();
      const answer = await api.post("/api/validate", { kind: "Dashboard", id: dashboard ? dashboard.id : undefined, manifest: m }, { signal: validation.signal });
      lastValidation = { ...answer, of: JSON.stringify(m) };
      root.querySelector("[data-file]").textContent = gitMode ? `Commit as ${answer.file} in the repository` : `Saved as ${answer.file}`;
      showDiagnostics(answer.diagnostics || []);
    } catch (err) {
      if (err && err.name === "AbortError") return;
      setHTML(part("problems"), html`<h2>Validation</h2>${errorBox(err, "The dashboard could not be checked")}`);
    }
  }
  const validateSoon = debounce(validateNow, 350);
  const previewSoon = debounce(() => renderWidgets(ctx, part("preview"), manifest().widgets.filter((w) => WIDGETS[w.type]), { live: false }), 600);
  ctx.onLeave(() => {
    validateSoon.cancel();
    previewSoon.cancel();
    if (validation) validation.abort();
  });
  function refresh({ preview = true } = {}) {
    root.querySelector("[data-yaml]").textContent = toYaml(manifest());
    validateSoon();
    if (preview) previewSoon();
  }

  form.addEventListener("submit", (e) => e.preventDefault());
  form.addEventListener("input", (event) => {
    const t = event.target;
    if (t.dataset.bind) {
      state[t.dataset.bind] = t.value;
      refresh({ preview: false });
      return;
    }
    if (t.dataset.widget === undefined || t.tagName === "SELECT") return;
    const w = state.widgets[Number(t.dataset.widget)];
    if (t.dataset.key === "title") w.title = t.value;
    else if (t.dataset.option) w.options[t.dataset.option] = t.dataset.number !== undefined && t.value !== "" && !Number.isNaN(Number(t.value)) ? Number(t.value) : t.value;
    refresh();
  });
  form.addEventListener("change", (event) => {
    const t = event.target;
    if (t.tagName !== "SELECT" || t.dataset.widget === undefined) return;
    const i = Number(t.dataset.widget);
    const w = state.widgets[i];
    if (t.dataset.key === "type") {
      w.type = t.value;
      const allowed = new Set(WIDGETS[w.type] ? WIDGETS[w.type].options : []);
      w.options = Object.fromEntries(Object.entries(w.options || {}).filter(([k]) => allowed.has(k)));
      renderForm();
      form.querySelector(`[data-widget="${i}"][data-key="type"]`)?.focus();
    } else if (t.dataset.key === "width") w.width = t.value ? Number(t.value) : undefined;
    else if (t.dataset.option) w.options[t.dataset.option] = t.value;
    refresh();
  });
  form.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-op]");
    if (!button) return;
    const i = Number(button.dataset.index);
    const op = button.dataset.op;
    let focus = null;
    if (op === "add") {
      const type = form.querySelector("[data-add-type]").value;
      state.widgets.push({ type, options: {} });
      focus = `[data-widget="${state.widgets.length - 1}"][data-key="type"]`;
    } else if (op === "remove") state.widgets.splice(i, 1);
    else if (op === "up" || op === "down") {
      const j = op === "up" ? i - 1 : i + 1;
      [state.widgets[i], state.widgets[j]] = [state.widgets[j], state.widgets[i]];
      focus = `[data-op="${op}"][data-index="${j}"]`;
    }
    renderForm();
    refresh();
    const next = focus && form.querySelector(focus);
    if (next && !next.disabled) next.focus();
  });

  // The server's text (with its header comment) when it is of the dashboard as it is now.
  const yamlText = () => {
    const m = manifest();
    return lastValidation && lastValidation.of === JSON.stringify(m) ? lastValidation.text : toYaml(m);
  };
  saveButton.addEventListener("click", async () => {
    saveButton.disabled = true;
    validateSoon.cancel();
    try {
      const saved = await api.post("/api/manifests", { kind: "Dashboard", id: dashboard ? dashboard.id : undefined, manifest: manifest() });
      toast(`${saved.created ? "Created" : "Saved"} ${saved.name} in ${saved.file}`, "success");
      ctx.navigate(href("dashboards", saved.id));
    } catch (err) {
      if (err && err.details && Array.isArray(err.details.diagnostics)) {
        showDiagnostics(err.details.diagnostics);
        toast("Not saved: the dashboard has problems", "error");
      } else setHTML(part("problems"), html`<h2>Validation</h2>${errorBox(err, "The dashboard was not saved")}`);
    } finally {
      saveButton.disabled = false;
    }
  });
  copyButton.addEventListener("click", () => copyText(yamlText(), root.querySelector("[data-yaml]")));
  downloadButton.addEventListener("click", () => downloadText((lastValidation ? lastValidation.file : "dashboard.yaml").split("/").pop(), yamlText()));

  renderForm();
  refresh({ preview: false });
  await Promise.all([validateNow(), renderWidgets(ctx, part("preview"), manifest().widgets.filter((w) => WIDGETS[w.type]), { live: false })]);
}

// Workflows: the list (last status, a sparkline of recent runs) and one workflow (its step
// graph, its manifest, its run history, and a Run form generated from its typed
// parameters).

import { html, setHTML, el, badge, relTime, duration, table, href, sparkline, durationBar, facts, errorBox, debounce, tabs, toast, pageHeader } from "../lib/ui.js";
import { dagSvg } from "../lib/dag.js";
import { toYaml } from "../lib/yaml.js";

export async function render(ctx) {
  if (ctx.params[0]) return detail(ctx, ctx.params[0]);
  return list(ctx);
}

/** Recent runs per workflow id, oldest first (from one page of runs). */
function byWorkflow(runs) {
  const map = new Map();
  for (const run of [...runs].reverse()) {
    if (!map.has(run.workflow_id)) map.set(run.workflow_id, []);
    map.get(run.workflow_id).push(run);
  }
  return map;
}

function spark(runs) {
  return sparkline(
    runs.slice(-20).map((r) => ({
      value: r.duration_ms || 1,
      status: r.status,
      title: `${r.id}: ${r.status}, ${duration(r.duration_ms)}`,
    })),
    { label: "Recent runs, height by duration, colour by status" },
  );
}

async function list(ctx) {
  const { api, root } = ctx;
  setHTML(root, html`${pageHeader("Workflows", { subtitle: "Workflows in force, from the manifests" })}<div data-section="list"><p class="loading">Loading…</p></div>`);
  root.querySelector("[data-actions]").append(el("a", { class: "button primary", href: "#/editor", "data-action": "new-workflow" }, "New workflow"));
  async function load() {
    const [workflows, runs] = await Promise.all([
      api.get("/api/workflows?limit=1000", { signal: ctx.signal }),
      api.get("/api/runs?limit=500", { signal: ctx.signal }),
    ]);
    const recent = byWorkflow(runs.runs);
    setHTML(
      root.querySelector('[data-section="list"]'),
      table(
        [
          { label: "Workflow", render: (w) => html`<a href="${href("workflows", w.id)}"><strong>${w.name}</strong></a><div class="muted mono">${w.id}</div>` },
          { label: "Description", render: (w) => w.description || (w.template ? `from template ${w.template}` : ""), class: "hide-narrow" },
          { label: "Steps", render: (w) => String(w.steps || (w.template ? "—" : 0)), num: true },
          { label: "Last run", render: (w) => (w.last_run ? html`${badge(w.last_run.status)} ${relTime(w.last_run.finished_at || w.last_run.created_at)}` : html`<span class="muted">never</span>`) },
          { label: "Recent runs", render: (w) => spark(recent.get(w.id) || []) },
          { label: "Manifest", render: (w) => html`${w.status === "applied" ? "" : badge(w.status)} <span class="mono muted">${w.source_file || ""}</span>`, class: "hide-narrow" },
          { label: "", render: (w) => html`<a class="button" href="${href("workflows", w.id)}?run=1" aria-label="Run ${w.name}">Run</a>` },
        ],
        workflows.workflows,
        { empty: "No workflows yet: add a manifest under workflows/.", rowAttrs: (w) => ({ "data-workflow": w.id }) },
      ),
    );
  }
  await load();
  const soon = debounce(() => load().catch(() => {}), 250);
  for (const type of ["workflow_started", "workflow_completed", "manifest_applied", "resync"]) ctx.on(type, soon);
}

/**
 * The steps and declared parameters of a workflow, expanding its template (found among the
 * manifests) when it has one. Returns {steps, declared, preset}.
 */
async function expand(ctx, spec) {
  if (!spec || !spec.template) return { steps: spec?.steps || [], declared: spec?.parameters || {}, preset: {} };
  const manifests = await ctx.api.get("/api/manifests?full=true", { signal: ctx.signal });
  const template = (manifests.records || []).find(
    (r) => r.key && r.key.kind === "WorkflowTemplate" && (r.name === spec.template || r.key.id === spec.template),
  );
  const tspec = (template && template.spec) || {};
  return { steps: tspec.steps || [], declared: tspec.parameters || {}, preset: spec.parameters || {}, template };
}

async function detail(ctx, id) {
  const { api, root } = ctx;
  const workflow = await api.get(`/api/workflows/${encodeURIComponent(id)}`, { signal: ctx.signal });
  const { steps, declared, preset } = await expand(ctx, workflow.spec);
  ctx.setTitle(workflow.name);
  setHTML(
    root,
    html`${pageHeader(workflow.name, { crumb: html`<a href="#/workflows">Workflows</a> / <span class="mono">${workflow.id}</span>`, subtitle: workflow.description })}
    <div class="grid cols-2">
      <div class="card" data-section="facts"></div>
      <div class="card" data-section="run-form" hidden></div>
    </div>
    <div data-section="diagnostics"></div>
    <div data-section="tabs"></div>`,
  );
  const part = (name) => root.querySelector(`[data-section="${name}"]`);
  const runButton = el("button", { type: "button", class: "primary", "data-action": "run", "aria-expanded": "false" }, "Run…");
  root.querySelector("[data-actions]").append(runButton);
  root.querySelector("[data-actions]").append(el("a", { class: "button", href: href("editor", workflow.id), "data-action": "edit" }, "Edit"));

  const last = workflow.last_run;
  setHTML(
    part("facts"),
    facts([
      ["Id", html`<code>${workflow.id}</code>`],
      ["Status", badge(workflow.status)],
      ["Last run", last ? html`${badge(last.status)} <a href="${href("runs", last.id)}">${last.id}</a> ${relTime(last.finished_at || last.created_at)}` : "never"],
      ["Steps", String(steps.length)],
      workflow.template ? ["Template", workflow.template] : null,
      ["Manifest", html`<code>${workflow.source_file || "—"}</code>`],
      ["Revision", html`<code>${workflow.applied_revision || "—"}</code>`],
    ]),
  );
  if (workflow.diagnostics && workflow.diagnostics.length) {
    setHTML(
      part("diagnostics"),
      html`<div class="error-box" role="alert"><strong>The current manifest has problems</strong> (its last good version stays in force)<ul>${workflow.diagnostics.map(
        (d) => html`<li>${d.message || JSON.stringify(d)}</li>`,
      )}</ul></div>`,
    );
  }

  const form = runForm(ctx, workflow, declared, preset);
  part("run-form").append(form);
  const toggleForm = (open) => {
    part("run-form").hidden = !open;
    runButton.setAttribute("aria-expanded", String(open));
    if (open) (form.querySelector("input, select, textarea") || form.querySelector("button[type=submit]")).focus();
  };
  runButton.addEventListener("click", () => toggleForm(part("run-form").hidden));
  if (ctx.query.get("run")) toggleForm(true);

  let history = workflow.runs || [];
  const historyPanel = (panel) => {
    const max = Math.max(1, ...history.map((r) => r.duration_ms || 0));
    setHTML(
      panel,
      html`<p>${spark(history)}</p>${table(
        [
          { label: "Run", render: (r) => html`<a href="${href("runs", r.id)}">${r.id}</a>` },
          { label: "Status", render: (r) => badge(r.status) },
          { label: "Trigger", render: (r) => (r.trigger && r.trigger.kind) || "—" },
          { label: "Created", render: (r) => relTime(r.created_at) },
          { label: "Duration", render: (r) => html`${durationBar(r.duration_ms, max, { status: r.status })} <span class="muted">${duration(r.duration_ms)}</span>` },
          { label: "Tests", render: (r) => (r.tests && r.tests.total ? `${r.tests.passed}/${r.tests.total} passed` : "—") },
        ],
        history,
        { empty: "No runs yet." },
      )}`,
    );
  };
  let historyNode = null;
  setHTML(part("tabs"), "");
  part("tabs").append(
    tabs([
      { id: "graph", label: "Step graph", render: (panel) => setHTML(panel, dagSvg(steps, {}, { label: `Steps of ${workflow.name}` })) },
      {
        id: "manifest",
        label: "Manifest",
        render: (panel) => {
          const yaml = toYaml(workflow.spec || {});
          const json = JSON.stringify(workflow.spec || {}, null, 2);
          setHTML(panel, html`<p class="muted">The manifest in force, as stored (YAML; <button type="button" class="icon-button" data-action="as-json">show as JSON</button>)</p><pre class="code" data-manifest>${yaml}</pre>`);
          panel.querySelector('[data-action="as-json"]').addEventListener("click", (e) => {
            const pre = panel.querySelector("[data-manifest]");
            const isJson = pre.dataset.format === "json";
            pre.textContent = isJson ? yaml : json;
            pre.dataset.format = isJson ? "yaml" : "json";
            e.target.textContent = isJson ? "show as JSON" : "show as YAML";
          });
        },
      },
      { id: "history", label: "Run history", render: (panel) => ((historyNode = panel), historyPanel(panel)) },
    ], ctx.query.get("tab") || "graph"),
  );

  const reload = debounce(async () => {
    try {
      const fresh = await api.get(`/api/workflows/${encodeURIComponent(id)}`, { signal: ctx.signal });
      history = fresh.runs || [];
      if (historyNode) historyPanel(historyNode);
    } catch {
      /* left, or the server went away: the next event tries again */
    }
  }, 250);
  const mine = (run) => run && (run.workflow_id === workflow.id);
  ctx.on("workflow_started", (run) => mine(run) && reload());
  ctx.on("workflow_completed", (run) => mine(run) && reload());
  ctx.on("resync", reload);
}

/** The control for one declared parameter. */
function field(name, decl, value) {
  const id = `param-${name}`;
  const type = decl.type || (Array.isArray(decl.enum) ? "string" : "string");
  const required = decl.required === true && value === undefined;
  let control;
  if (Array.isArray(decl.enum)) {
    control = el("select", { id, name, "data-type": "enum", required });
    if (!required || value === undefined) control.append(el("option", { value: "" }, required ? "Choose…" : "(default)"));
    decl.enum.forEach((option, i) => {
      const o = el("option", { value: String(i) }, typeof option === "string" ? option : JSON.stringify(option));
      if (value !== undefined && JSON.stringify(option) === JSON.stringify(value)) o.selected = true;
      control.append(o);
    });
  } else if (type === "boolean") {
    control = el("input", { id, name, type: "checkbox", "data-type": "boolean" });
    control.checked = value === true;
  } else if (type === "number" || type === "integer") {
    control = el("input", { id, name, type: "number", step: type === "integer" ? "1" : "any", "data-type": type, required });
    if (value !== undefined) control.value = String(value);
  } else if (type === "array" || type === "object") {
    control = el("textarea", { id, name, "data-type": type, required, rows: 3, placeholder: type === "array" ? '["a", "b"]' : '{"key": "value"}' });
    if (value !== undefined) control.value = JSON.stringify(value);
  } else {
    control = el("input", { id, name, type: "text", "data-type": "string", required, autocomplete: "off" });
    if (value !== undefined) control.value = String(value);
  }
  const hint = [decl.description, `${type}${decl.required ? ", required" : ""}`, decl.default !== undefined ? `default ${JSON.stringify(decl.default)}` : ""]
    .filter(Boolean)
    .join(" · ");
  return el(
    "div",
    { class: "field", "data-param": name },
    el("label", { for: id }, name, decl.required ? el("span", { class: "required", "aria-hidden": "true" }, " *") : null),
    control,
    el("span", { class: "hint" }, hint),
  );
}

/** Reads the form into parameters; throws a message for a value that does not parse. */
function readParameters(form, declared) {
  const parameters = {};
  for (const [name, decl] of Object.entries(declared)) {
    const control = form.elements[name];
    if (!control) continue;
    const kind = control.dataset.type;
    if (kind === "boolean") {
      if (control.checked || decl.default !== undefined || decl.required) parameters[name] = control.checked;
      continue;
    }
    const text = control.value;
    if (text === "") continue; // the default applies (or the server says it is required)
    if (kind === "enum") parameters[name] = decl.enum[Number(text)];
    else if (kind === "number" || kind === "integer") parameters[name] = Number(text);
    else if (kind === "array" || kind === "object") {
      try {
        parameters[name] = JSON.parse(text);
      } catch (err) {
        throw new Error(`${name}: not JSON (${err.message})`);
      }
    } else parameters[name] = text;
  }
  return parameters;
}

function runForm(ctx, workflow, declared, preset) {
  const names = Object.keys(declared || {});
  const form = el("form", { class: "params", "data-form": "run", novalidate: false });
  form.append(el("h2", {}, `Run ${workflow.name}`));
  if (!names.length) form.append(el("p", { class: "muted" }, "This workflow takes no parameters."));
  for (const name of names) {
    const decl = declared[name] && typeof declared[name] === "object" ? declared[name] : {};
    const value = preset[name] !== undefined ? preset[name] : decl.default;
    form.append(field(name, decl, value));
  }
  const error = el("div", { "data-form-error": "" });
  const submit = el("button", { type: "submit", class: "primary" }, "Start run");
  form.append(error, el("div", { class: "actions" }, submit));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    setHTML(error, "");
    let parameters;
    try {
      parameters = readParameters(form, declared);
    } catch (err) {
      setHTML(error, errorBox({ code: "invalid", message: err.message }, "Check the parameters"));
      return;
    }
    submit.disabled = true;
    try {
      const accepted = await ctx.api.post(`/api/workflows/${encodeURIComponent(workflow.id)}/execute`, { parameters });
      toast(`Started ${accepted.run_id}`, "success");
      ctx.navigate(href("runs", accepted.run_id));
    } catch (err) {
      setHTML(error, errorBox(err, "The run was not started"));
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

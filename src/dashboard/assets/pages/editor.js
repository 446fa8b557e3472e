// The visual workflow editor: `#/editor` for a new workflow, `#/editor/<id>` to edit one.
// Steps are added, removed, reordered and connected (depends_on); each picks an agent and
// an action from `GET /api/agents` (or runs a command with the shell) and takes parameters.
// The workflow's typed parameters and basic fields are edited beside them. The YAML and the
// step graph follow every keystroke; the server validates the manifest as you type
// (`POST /api/validate`, debounced) and its diagnostics are shown at the field they point
// at. Saving goes through `POST /api/manifests`; a server that follows a git repository
// writes nothing, so the YAML is offered to copy or download for a commit instead. The page,
// the validation, the save and the copy and download are those of every manifest editor
// (`lib/manifest-editor.js`); this module is the form, its manifest and the step graph.

import { html, setHTML, el, href } from "../lib/ui.js";
import { dagSvg } from "../lib/dag.js";
import { manifestEditor, uid, pointerSegment as seg, textInput as input, fieldBox } from "../lib/manifest-editor.js";

const PARAM_TYPES = ["string", "number", "integer", "boolean", "enum"];
/** Fields of the manifest the form edits; anything else is kept as it was. */
const EDITED = new Set(["kind", "name", "description", "timeout", "max_parallel", "parameters", "steps"]);
const STEP_EDITED = new Set(["name", "agent", "action", "command", "parameters", "depends_on"]);

/** A value typed into a text box: JSON numbers, booleans, arrays and objects as such. */
function parseValue(text) {
  const t = text.trim();
  if (/^(true|false|null|-?\d+(\.\d+)?([eE][+-]?\d+)?)$/.test(t) || /^[[{]/.test(t)) {
    try {
      return JSON.parse(t);
    } catch {
      return text;
    }
  }
  return text;
}

/** A value shown in a text box. */
function showValue(value) {
  if (value === undefined) return "";
  return typeof value === "string" ? value : JSON.stringify(value);
}

/** The editor's state from a workflow spec. */
function fromSpec(spec = {}) {
  const extra = Object.fromEntries(Object.entries(spec).filter(([k]) => !EDITED.has(k)));
  const steps = (spec.steps || []).map((s) => ({
    uid: uid(),
    name: s.name || "",
    agent: s.agent && s.agent !== "shell" ? s.agent : "",
    action: s.action || "",
    command: s.command === undefined ? "" : typeof s.command === "string" ? s.command : JSON.stringify(s.command),
    params: Object.entries(s.parameters || {}).map(([key, value]) => ({ uid: uid(), key, value: showValue(value) })),
    deps: [...(s.depends_on || [])],
    extra: Object.fromEntries(Object.entries(s).filter(([k]) => !STEP_EDITED.has(k))),
  }));
  // depends_on by step uid, so renaming and reordering keep the connections.
  const byName = new Map(steps.map((s) => [s.name, s.uid]));
  for (const step of steps) {
    step.missing = step.deps.filter((d) => !byName.has(d));
    step.deps = step.deps.filter((d) => byName.has(d)).map((d) => byName.get(d));
  }
  const params = Object.entries(spec.parameters || {}).map(([name, d]) => {
    const decl = d && typeof d === "object" ? d : {};
    const isEnum = Array.isArray(decl.enum);
    return {
      uid: uid(),
      name,
      type: isEnum ? "enum" : PARAM_TYPES.includes(decl.type) ? decl.type : "string",
      required: decl.required === true,
      default: showValue(decl.default),
      options: isEnum ? decl.enum.map(showValue).join(", ") : "",
      description: decl.description || "",
      extra: Object.fromEntries(Object.entries(decl).filter(([k]) => !["type", "required", "default", "enum", "description"].includes(k))),
    };
  });
  return {
    name: spec.name || "",
    description: spec.description || "",
    timeout: spec.timeout === undefined ? "" : String(spec.timeout),
    max_parallel: spec.max_parallel === undefined ? "" : String(spec.max_parallel),
    kind: spec.kind,
    params,
    steps,
    extra,
  };
}

/** The default of a parameter, typed. */
function typedDefault(p) {
  if (p.default === "") return undefined;
  if (p.type === "boolean") return p.default === "true";
  if (p.type === "number" || p.type === "integer") return Number.isNaN(Number(p.default)) ? p.default : Number(p.default);
  return p.default;
}

/** The manifest (JSON) the state stands for. */
function toManifest(state) {
  const m = {};
  if (state.kind) m.kind = state.kind;
  m.name = state.name;
  if (state.description) m.description = state.description;
  if (state.extra.labels) m.labels = state.extra.labels;
  if (state.timeout !== "") m.timeout = /^\d+$/.test(state.timeout.trim()) ? Number(state.timeout) : state.timeout;
  if (state.max_parallel !== "") m.max_parallel = Number.isNaN(Number(state.max_parallel)) ? state.max_parallel : Number(state.max_parallel);
  if (state.params.length) {
    m.parameters = {};
    for (const p of state.params) {
      const decl = { type: p.type === "enum" ? "string" : p.type };
      if (p.type === "enum") decl.enum = p.options.split(",").map((o) => o.trim()).filter(Boolean);
      if (p.required) decl.required = true;
      const value = typedDefault(p);
      if (value !== undefined) decl.default = value;
      if (p.description) decl.description = p.description;
      m.parameters[p.name] = Object.assign(decl, p.extra);
    }
  }
  const names = new Map(state.steps.map((s) => [s.uid, s.name]));
  const steps = state.steps.map((s) => {
    const step = { name: s.name };
    if (s.agent) step.agent = s.agent;
    if (s.agent && s.action) step.action = s.action;
    if (s.command.trim() !== "") {
      const text = s.command.trim();
      step.command = text.startsWith("[") ? parseValue(text) : s.command;
    }
    if (s.params.length) step.parameters = Object.fromEntries(s.params.filter((p) => p.key).map((p) => [p.key, parseValue(p.value)]));
    const deps = [...s.deps.map((d) => names.get(d)).filter((n) => n !== undefined), ...(s.missing || [])];
    if (deps.length) step.depends_on = deps;
    return Object.assign(step, s.extra);
  });
  // A workflow made from a template may have no steps of its own.
  if (steps.length || !state.extra.template) m.steps = steps;
  for (const [k, v] of Object.entries(state.extra)) if (k !== "labels") m[k] = v;
  return m;
}

/**
 * The actions of an agent of `GET /api/agents`: those it declares, or those of its built-in
 * type (`GET /api/agent-types`).
 */
function actionsOf(agents, types, name) {
  const agent = agents.find((a) => a.name === name);
  if (!agent) return [];
  if (Array.isArray(agent.actions) && agent.actions.length) return agent.actions;
  const type = types.find((t) => t.name === (agent.type || agent.name));
  return (type && type.actions) || [];
}

export async function render(ctx) {
  const { api, root } = ctx;
  const id = ctx.params[0] || null;
  const [status, agentList, typeList, workflow] = await Promise.all([
    api.get("/api/status", { signal: ctx.signal }),
    api.get("/api/agents", { signal: ctx.signal }),
    api.get("/api/agent-types", { signal: ctx.signal }),
    id ? api.get(`/api/workflows/${encodeURIComponent(id)}`, { signal: ctx.signal }) : null,
  ]);
  const agents = agentList.agents || [];
  const types = typeList.agent_types || [];
  const gitMode = (status.source || {}).kind === "git";
  const state = fromSpec(
    workflow
      ? workflow.spec || {}
      : { name: "", steps: [] },
  );
  const { form, part, refresh: preview, validateNow } = manifestEditor(ctx, {
    kind: "Workflow",
    id: workflow ? workflow.id : undefined,
    title: workflow ? `Edit ${workflow.name}` : "New workflow",
    crumb: html`<a href="#/workflows">Workflows</a>${workflow ? html` / <a href="${href("workflows", workflow.id)}" class="mono">${workflow.id}</a>` : ""}`,
    subtitle: "Saved as a manifest in the project, validated first, then applied.",
    gitMode,
    notice:
      workflow && workflow.spec && workflow.spec.template
        ? html`<div class="notice" data-section="template-note"><p>This workflow expands the template <strong>${workflow.spec.template}</strong>: its steps come from there. Steps added here are written beside the template reference.</p></div>`
        : "",
    form: "editor",
    sections: ["basics", "parameters", "steps"],
    aside: html`<section class="card" data-section="graph"><h2>Step graph</h2><div data-graph></div></section>`,
    manifest: () => toManifest(state),
    cancel: workflow ? href("workflows", workflow.id) : "#/workflows",
    afterSave: (saved) => href("workflows", saved.id),
    defaultFile: "workflow.yaml",
    messages: { unchecked: "The manifest could not be checked", problems: "Not saved: the manifest has problems", unsaved: "The workflow was not saved" },
  });

  // ---- the form --------------------------------------------------------------------------
  function renderBasics() {
    const box = part("basics");
    box.replaceChildren(
      el("h2", {}, "Workflow"),
      fieldBox("Name", input({ "data-bind": "name", required: true, placeholder: "Nightly API tests" }, state.name), "/name", "The id is derived from it"),
      fieldBox("Description", input({ "data-bind": "description" }, state.description), "/description"),
      el(
        "div",
        { class: "editor-row" },
        fieldBox("Timeout", input({ "data-bind": "timeout", placeholder: "30m" }, state.timeout), "/timeout", "Seconds, or 90s, 5m, 1h30m"),
        fieldBox("Max parallel steps", input({ "data-bind": "max_parallel", type: "number", min: "1", max: "256", step: "1" }, state.max_parallel), "/max_parallel"),
      ),
    );
  }

  function renderParameters() {
    const box = part("parameters");
    const rows = state.params.map((p, i) => {
      const pointer = `/parameters/${seg(p.name)}`;
      const type = el("select", { "data-param": i, "data-key": "type", "aria-label": `Type of parameter ${i + 1}` });
      for (const t of PARAM_TYPES) type.append(el("option", { value: t, selected: t === p.type }, t));
      let defaultControl;
      if (p.type === "boolean") {
        defaultControl = el("select", { "data-param": i, "data-key": "default" });
        for (const [v, label] of [["", "(none)"], ["true", "true"], ["false", "false"]]) defaultControl.append(el("option", { value: v, selected: p.default === v }, label));
      } else {
        defaultControl = input({ "data-param": i, "data-key": "default", type: p.type === "number" || p.type === "integer" ? "number" : "text" }, p.default);
      }
      const required = el("input", { type: "checkbox", "data-param": i, "data-key": "required" });
      required.checked = p.required;
      return el(
        "fieldset",
        { class: "editor-item", "data-param-row": i },
        el("legend", {}, `Parameter ${i + 1}`),
        el(
          "div",
          { class: "editor-row" },
          fieldBox("Name", input({ "data-param": i, "data-key": "name", placeholder: "environment" }, p.name), pointer),
          fieldBox("Type", type, `${pointer}/type`),
          fieldBox("Default", defaultControl, `${pointer}/default`),
        ),
        p.type === "enum" ? fieldBox("Options", input({ "data-param": i, "data-key": "options", placeholder: "staging, production" }, p.options), `${pointer}/enum`, "Comma-separated") : null,
        fieldBox("Description", input({ "data-param": i, "data-key": "description" }, p.description), `${pointer}/description`),
        el(
          "div",
          { class: "editor-item-actions" },
          el("label", { class: "check" }, required, " Required"),
          el("button", { type: "button", class: "danger", "data-op": "remove-param", "data-index": i }, "Remove parameter"),
        ),
      );
    });
    box.replaceChildren(
      el("h2", {}, "Parameters"),
      ...(rows.length ? rows : [el("p", { class: "muted" }, "No parameters: runs take none.")]),
      el("button", { type: "button", "data-op": "add-param" }, "Add parameter"),
    );
  }

  function stepCard(step, i) {
    const pointer = `/steps/${i}`;
    const agentSelect = el("select", { "data-step": i, "data-key": "agent" });
    agentSelect.append(el("option", { value: "" }, "shell: run a command"));
    for (const a of agents.filter((a) => a.name !== "shell")) {
      agentSelect.append(el("option", { value: a.name, selected: a.name === step.agent }, a.builtin ? a.name : `${a.name} (${a.type || "agent"})`));
    }
    if (step.agent && !agents.some((a) => a.name === step.agent)) agentSelect.append(el("option", { value: step.agent, selected: true }, `${step.agent} (unknown)`));
    const actions = step.agent ? actionsOf(agents, types, step.agent) : [];
    let actionField = null;
    if (step.agent) {
      const actionSelect = el("select", { "data-step": i, "data-key": "action" });
      actionSelect.append(el("option", { value: "" }, actions.length ? `(default: ${actions[0]})` : "(default)"));
      for (const a of actions) actionSelect.append(el("option", { value: a, selected: a === step.action }, a));
      if (step.action && !actions.includes(step.action)) actionSelect.append(el("option", { value: step.action, selected: true }, `${step.action} (unknown)`));
      actionField = fieldBox("Action", actionSelect, `${pointer}/action`);
    }
    const others = state.steps.filter((s) => s.uid !== step.uid);
    const deps = el(
      "fieldset",
      { class: "deps", "data-pointer": `${pointer}/depends_on` },
      el("legend", {}, "Runs after"),
      ...(others.length
        ? others.map((o) => {
            const box = el("input", { type: "checkbox", "data-step": i, "data-dep": o.uid });
            box.checked = step.deps.includes(o.uid);
            return el("label", { class: "check" }, box, " ", el("span", { "data-dep-name": o.uid }, o.name || "(unnamed)"));
          })
        : [el("span", { class: "muted" }, "No other step yet.")]),
      ...(step.missing || []).map((m) => el("span", { class: "badge s-invalid" }, `unknown step ${m}`)),
    );
    const params = step.params.map((p, j) =>
      el(
        "div",
        { class: "editor-row kv", "data-pointer": `${pointer}/parameters/${seg(p.key)}` },
        input({ "data-step": i, "data-sparam": j, "data-key": "key", placeholder: "name", "aria-label": `Parameter name ${j + 1} of step ${i + 1}` }, p.key),
        input({ "data-step": i, "data-sparam": j, "data-key": "value", placeholder: "value", "aria-label": `Parameter value ${j + 1} of step ${i + 1}` }, p.value),
        el("button", { type: "button", class: "icon-button", "data-op": "remove-sparam", "data-index": i, "data-sub": j, "aria-label": `Remove parameter ${p.key || j + 1}` }, "✕"),
      ),
    );
    return el(
      "fieldset",
      { class: "editor-item step-card", "data-step-card": i, "data-pointer": pointer },
      el("legend", {}, `Step ${i + 1}`),
      el(
        "div",
        { class: "editor-row" },
        fieldBox("Name", input({ "data-step": i, "data-key": "name", placeholder: "run-tests" }, step.name), `${pointer}/name`),
        fieldBox("Agent", agentSelect, `${pointer}/agent`),
        actionField,
      ),
      step.agent ? null : fieldBox("Command", input({ "data-step": i, "data-key": "command", placeholder: 'make test, or ["pytest", "-q"]' }, step.command), `${pointer}/command`, 'A string runs with sh -c; a JSON array runs without a shell'),
      el("div", { class: "field", "data-pointer": `${pointer}/parameters` }, el("span", { class: "label" }, "Parameters"), ...params, el("div", {}, el("button", { type: "button", "data-op": "add-sparam", "data-index": i }, "Add step parameter"))),
      deps,
      el(
        "div",
        { class: "editor-item-actions" },
        el("button", { type: "button", "data-op": "up", "data-index": i, disabled: i === 0, "aria-label": `Move step ${i + 1} up` }, "↑ Up"),
        el("button", { type: "button", "data-op": "down", "data-index": i, disabled: i === state.steps.length - 1, "aria-label": `Move step ${i + 1} down` }, "↓ Down"),
        el("button", { type: "button", class: "danger", "data-op": "remove-step", "data-index": i }, "Remove step"),
      ),
    );
  }

  function renderSteps() {
    part("steps").replaceChildren(
      el("h2", {}, "Steps"),
      ...state.steps.map(stepCard),
      el("button", { type: "button", "data-op": "add-step" }, "Add step"),
    );
  }

  function renderAll() {
    renderBasics();
    renderParameters();
    renderSteps();
    refresh();
  }

  // ---- the step graph, beside the YAML -----------------------------------------------------
  function refresh() {
    const names = new Map(state.steps.map((s) => [s.uid, s.name]));
    const dagSteps = state.steps
      .filter((s) => s.name)
      .map((s) => ({ name: s.name, agent: s.agent || undefined, action: s.action || undefined, command: s.command || undefined, depends_on: s.deps.map((d) => names.get(d)) }));
    setHTML(root.querySelector("[data-graph]"), dagSvg(dagSteps, {}, { label: `Steps of ${state.name || "the new workflow"}` }));
    preview();
  }

  // ---- events ----------------------------------------------------------------------------
  form.addEventListener("input", (event) => {
    const t = event.target;
    const key = t.dataset.key;
    if (t.dataset.bind) {
      state[t.dataset.bind] = t.value;
    } else if (t.dataset.param !== undefined) {
      const p = state.params[Number(t.dataset.param)];
      if (key === "required") p.required = t.checked;
      else if (key !== "type") p[key] = t.value;
      if (key === "name") {
        // Diagnostics point at parameters by name: keep the fields' pointers current.
        for (const n of t.closest("[data-param-row]").querySelectorAll("[data-pointer]")) {
          n.dataset.pointer = n.dataset.pointer.replace(/^\/parameters\/[^/]*/, `/parameters/${seg(t.value)}`);
        }
      }
    } else if (t.dataset.sparam !== undefined) {
      state.steps[Number(t.dataset.step)].params[Number(t.dataset.sparam)][key] = t.value;
      if (key === "key") t.closest(".kv").dataset.pointer = `/steps/${t.dataset.step}/parameters/${seg(t.value)}`;
    } else if (t.dataset.dep !== undefined) {
      const step = state.steps[Number(t.dataset.step)];
      const dep = Number(t.dataset.dep);
      step.deps = t.checked ? [...step.deps.filter((d) => d !== dep), dep] : step.deps.filter((d) => d !== dep);
    } else if (t.dataset.step !== undefined && (key === "name" || key === "command")) {
      const step = state.steps[Number(t.dataset.step)];
      step[key] = t.value;
      if (key === "name") for (const label of form.querySelectorAll(`[data-dep-name="${step.uid}"]`)) label.textContent = t.value || "(unnamed)";
    } else return;
    refresh();
  });
  form.addEventListener("change", (event) => {
    const t = event.target;
    if (t.dataset.param !== undefined && t.dataset.key === "type") {
      const p = state.params[Number(t.dataset.param)];
      p.type = t.value;
      if (p.type === "boolean" && !["", "true", "false"].includes(p.default)) p.default = "";
      renderParameters();
      refresh();
    } else if (t.dataset.param !== undefined && t.dataset.key === "default" && t.tagName === "SELECT") {
      state.params[Number(t.dataset.param)].default = t.value;
      refresh();
    } else if (t.dataset.step !== undefined && t.dataset.key === "agent") {
      const step = state.steps[Number(t.dataset.step)];
      step.agent = t.value;
      step.action = "";
      if (step.agent) step.command = "";
      renderSteps();
      refresh();
      form.querySelector(`[data-step="${t.dataset.step}"][data-key="agent"]`)?.focus();
    } else if (t.dataset.step !== undefined && t.dataset.key === "action") {
      state.steps[Number(t.dataset.step)].action = t.value;
      refresh();
    }
  });
  form.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-op]");
    if (!button) return;
    const i = Number(button.dataset.index);
    const op = button.dataset.op;
    let focus = null;
    if (op === "add-step") {
      const taken = new Set(state.steps.map((s) => s.name));
      let n = state.steps.length + 1;
      while (taken.has(`step-${n}`)) n++;
      state.steps.push({ uid: uid(), name: `step-${n}`, agent: "", action: "", command: "", params: [], deps: [], missing: [], extra: {} });
      focus = `[data-step="${state.steps.length - 1}"][data-key="name"]`;
    } else if (op === "remove-step") {
      const [gone] = state.steps.splice(i, 1);
      for (const s of state.steps) s.deps = s.deps.filter((d) => d !== gone.uid);
      focus = state.steps.length ? `[data-step="${Math.min(i, state.steps.length - 1)}"][data-key="name"]` : '[data-op="add-step"]';
    } else if (op === "up" || op === "down") {
      const j = op === "up" ? i - 1 : i + 1;
      [state.steps[i], state.steps[j]] = [state.steps[j], state.steps[i]];
      focus = `[data-op="${op}"][data-index="${j}"]`;
    } else if (op === "add-sparam") {
      state.steps[i].params.push({ uid: uid(), key: "", value: "" });
      focus = `[data-step="${i}"][data-sparam="${state.steps[i].params.length - 1}"][data-key="key"]`;
    } else if (op === "remove-sparam") {
      state.steps[i].params.splice(Number(button.dataset.sub), 1);
      focus = `[data-op="add-sparam"][data-index="${i}"]`;
    } else if (op === "add-param") {
      const taken = new Set(state.params.map((p) => p.name));
      let n = state.params.length + 1;
      while (taken.has(`param${n}`)) n++;
      state.params.push({ uid: uid(), name: `param${n}`, type: "string", required: false, default: "", options: "", description: "", extra: {} });
      focus = `[data-param="${state.params.length - 1}"][data-key="name"]`;
    } else if (op === "remove-param") {
      state.params.splice(i, 1);
      focus = '[data-op="add-param"]';
    }
    if (op.endsWith("param") && op !== "add-sparam" && op !== "remove-sparam") renderParameters();
    else renderSteps();
    refresh();
    const next = focus && form.querySelector(focus);
    if (next && !next.disabled) next.focus();
  });

  renderAll();
  await validateNow();
}

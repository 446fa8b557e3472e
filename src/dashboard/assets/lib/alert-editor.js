// The alert rule editor of the Alerts page: `#/alerts/new` creates a rule, `#/alerts/<id>/edit`
// edits one. Name, description, condition, duration (`for`), severity, labels and the
// channels to notify (those the running configuration defines, from
// `GET /api/notification-channels`); every other field of an edited manifest is kept as it
// was. The condition is checked by the server as you type (`POST /api/validate/condition`:
// its message, and a caret under its column), and the whole manifest too
// (`POST /api/validate`, debounced), each problem shown at its field. Saving goes through
// `POST /api/manifests` as an `Alert` manifest in `alerts/` (or the file the rule already
// lives in), exactly like the workflow editor: nothing is written while it is invalid; a
// server that follows a git repository writes nothing, so the YAML is offered to copy or
// download for a commit instead; a rule declared in a file that saving would rewrite (JSON,
// `{"alerts": [...]}`, several documents) is shown with the reason and not saved.

import { html, setHTML, el, href, errorBox, toast, pageHeader, debounce, copyText, downloadText, fieldFor } from "./ui.js";
import { seg } from "./api.js";
import { toYaml } from "./yaml.js";

const SEVERITIES = ["info", "warning", "critical"];
/** Fields of the manifest the form edits; anything else is kept as it was. */
const EDITED = new Set(["kind", "name", "description", "condition", "duration", "severity", "labels", "actions"]);

let uids = 0;
const uid = () => ++uids;

/** JSON pointer segment escaping. */
const ptr = (text) => String(text).replace(/~/g, "~0").replace(/\//g, "~1");

/** The editor's state from an Alert manifest. */
function fromSpec(spec = {}) {
  return {
    kind: spec.kind,
    name: spec.name || "",
    description: spec.description || "",
    condition: spec.condition || "",
    duration: spec.duration === undefined ? "" : String(spec.duration),
    severity: SEVERITIES.includes(spec.severity) ? spec.severity : "",
    labels: Object.entries(spec.labels || {}).map(([key, value]) => ({ uid: uid(), key, value: String(value) })),
    actions: Array.isArray(spec.actions) ? [...spec.actions] : [],
    extra: Object.fromEntries(Object.entries(spec).filter(([k]) => !EDITED.has(k))),
  };
}

/** The manifest (JSON) the state stands for. */
function toManifest(state) {
  const m = {};
  if (state.kind) m.kind = state.kind;
  m.name = state.name;
  if (state.description) m.description = state.description;
  m.condition = state.condition;
  const duration = state.duration.trim();
  if (duration !== "") m.duration = /^\d+$/.test(duration) ? Number(duration) : duration;
  if (state.severity) m.severity = state.severity;
  const labels = state.labels.filter((l) => l.key !== "");
  if (labels.length) m.labels = Object.fromEntries(labels.map((l) => [l.key, l.value]));
  if (state.actions.length) m.actions = [...state.actions];
  return Object.assign(m, state.extra);
}

/**
 * Renders the editor into `ctx.root`: a new rule when `id` is null, else the rule `id`.
 */
export async function renderAlertEditor(ctx, id) {
  const { api, root } = ctx;
  const [status, channelList, loaded] = await Promise.all([
    api.get("/api/status", { signal: ctx.signal }),
    api.get("/api/notification-channels", { signal: ctx.signal }),
    id ? api.get(`/api/alerts/${seg(id)}/manifest`, { signal: ctx.signal }) : null,
  ]);
  const gitMode = (status.source || {}).kind === "git";
  const channels = channelList.channels || [];
  const ruleId = loaded ? loaded.id : null;
  // A rule whose file saving would rewrite whole is shown, not saved (git mode: copied).
  const locked = Boolean(loaded && !loaded.editable && !gitMode);
  const state = fromSpec(loaded ? loaded.manifest || {} : {});
  const title = loaded ? `Edit ${loaded.name}` : "New alert rule";
  ctx.setTitle(title);
  setHTML(
    root,
    html`${pageHeader(title, {
      crumb: html`<a href="#/alerts">Alerts</a>${loaded ? html` / <a href="${href("alerts", loaded.id)}" class="mono">${loaded.id}</a>` : ""}`,
      subtitle: gitMode
        ? "This server follows a git repository: the editor gives you the YAML to commit."
        : "Saved as an Alert manifest in the project, validated first, then applied.",
    })}
    ${locked ? html`<div class="notice" data-section="locked" role="note"><p><strong>This rule cannot be saved from here.</strong> ${loaded.reason}</p><p>The YAML beside the form can be copied into a file of its own.</p></div>` : ""}
    <div class="editor-layout">
      <form class="editor-form" data-form="alert-editor" novalidate>
        <section class="card" data-section="rule"></section>
        <section class="card" data-section="labels"></section>
        <section class="card" data-section="channels"></section>
      </form>
      <aside class="editor-side">
        <section class="card" data-section="problems" aria-live="polite"></section>
        <section class="card" data-section="yaml"><h2>YAML</h2><p class="muted" data-file></p><pre class="code" data-yaml></pre></section>
      </aside>
    </div>`,
  );
  const part = (name) => root.querySelector(`[data-section="${name}"]`);
  const form = root.querySelector('[data-form="alert-editor"]');
  const actions = root.querySelector("[data-actions]");
  let lastValidation = null;

  // ---- header actions --------------------------------------------------------------------
  const saveButton = el("button", { type: "button", class: "primary", "data-action": "save" }, loaded ? "Save" : "Create");
  const copyButton = el("button", { type: "button", "data-action": "copy" }, "Copy YAML");
  const downloadButton = el("button", { type: "button", "data-action": "download" }, "Download");
  if (gitMode || locked) actions.append(copyButton, downloadButton);
  else actions.append(saveButton, copyButton);
  actions.append(el("a", { class: "button", href: loaded ? href("alerts", loaded.id) : "#/alerts" }, "Cancel"));

  // ---- the form --------------------------------------------------------------------------
  const input = (attrs, value) => {
    const node = el("input", { type: "text", autocomplete: "off", ...attrs });
    node.value = value ?? "";
    return node;
  };
  const fieldBox = (label, control, pointer, hint, ...more) => {
    const fid = control.id || `a-${uid()}`;
    control.id = fid;
    return el("div", { class: "field", "data-pointer": pointer }, el("label", { for: fid }, label), control, hint ? el("span", { class: "hint" }, hint) : null, ...more);
  };

  function renderRule() {
    const severity = el("select", { "data-bind": "severity" });
    severity.append(el("option", { value: "" }, "(default: warning)"));
    for (const s of SEVERITIES) severity.append(el("option", { value: s, selected: s === state.severity }, s));
    const condition = el("textarea", { "data-bind": "condition", rows: "2", spellcheck: "false", autocomplete: "off", class: "mono", placeholder: "system.cpu_percent > 80 and system.memory_percent > 90" });
    condition.value = state.condition;
    part("rule").replaceChildren(
      el("h2", {}, "Rule"),
      fieldBox("Name", input({ "data-bind": "name", required: true, placeholder: "High CPU usage" }, state.name), "/name", "The id is derived from it"),
      fieldBox("Description", input({ "data-bind": "description" }, state.description), "/description"),
      fieldBox(
        "Condition",
        condition,
        "/condition",
        "<metric> <op> <number>, joined by and/or, with parentheses: system.*, workflow.*, tests.*, agent.*",
        el("div", { class: "condition-check", "data-condition-check": "", "aria-live": "polite" }),
      ),
      el(
        "div",
        { class: "editor-row" },
        fieldBox("For", input({ "data-bind": "duration", placeholder: "5m" }, state.duration), "/duration", "How long it must hold before firing: seconds, or 90s, 5m, 1h"),
        fieldBox("Severity", severity, "/severity", "How bad it is when it fires"),
      ),
    );
  }

  function renderLabels() {
    const rows = state.labels.map((l, i) =>
      el(
        "div",
        { class: "editor-row kv", "data-pointer": `/labels/${ptr(l.key)}` },
        input({ "data-label": i, "data-key": "key", placeholder: "team", "aria-label": `Label name ${i + 1}` }, l.key),
        input({ "data-label": i, "data-key": "value", placeholder: "qa", "aria-label": `Label value ${i + 1}` }, l.value),
        el("button", { type: "button", class: "icon-button", "data-op": "remove-label", "data-index": i, "aria-label": `Remove label ${l.key || i + 1}` }, "✕"),
      ),
    );
    part("labels").replaceChildren(
      el("h2", {}, "Labels"),
      el("div", { class: "field", "data-pointer": "/labels" }, ...(rows.length ? rows : [el("p", { class: "muted" }, "No labels: silences can still match the alert's name and severity.")])),
      el("button", { type: "button", "data-op": "add-label" }, "Add label"),
    );
  }

  function renderChannels() {
    const unknown = state.actions.filter((a) => !channels.some((c) => c.name === a));
    const box = (name, label) => {
      const check = el("input", { type: "checkbox", "data-channel": name });
      check.checked = state.actions.includes(name);
      return el("label", { class: "check" }, check, " ", label);
    };
    part("channels").replaceChildren(
      el("h2", {}, "Notify"),
      el(
        "fieldset",
        { class: "deps", "data-pointer": "/actions" },
        el("legend", {}, "Channels"),
        ...channels.map((c) => box(c.name, el("span", {}, c.name, c.type && c.type !== c.name ? el("span", { class: "muted" }, ` (${c.type})`) : null))),
        ...unknown.map((name) => box(name, el("span", {}, name, el("span", { class: "badge s-invalid" }, "not configured")))),
        channels.length || unknown.length ? null : el("span", { class: "muted", "data-no-channels": "" }, `No channel is configured in ${channelList.environment || "this environment"}: add one under notifications: in its configuration file. The rule still fires and shows here.`),
      ),
    );
  }

  // ---- the condition, checked by the server as it is typed -------------------------------
  let conditionCall = null;
  async function checkCondition() {
    if (conditionCall) conditionCall.abort();
    conditionCall = new AbortController();
    const text = state.condition;
    const out = root.querySelector("[data-condition-check]");
    const control = form.querySelector('[data-bind="condition"]');
    if (text.trim() === "") {
      out.dataset.valid = "";
      setHTML(out, html`<span class="muted">A condition is required.</span>`);
      return;
    }
    try {
      const answer = await api.post("/api/validate/condition", { condition: text }, { signal: conditionCall.signal });
      if (answer.condition !== state.condition) return;
      out.dataset.valid = String(answer.valid);
      if (answer.valid) {
        control.removeAttribute("aria-invalid");
        setHTML(out, html`<span class="ok">✓</span> <span class="muted">reads ${answer.metrics.join(", ")}</span>`);
      } else {
        control.setAttribute("aria-invalid", "true");
        // The caret under the column (1-based, in characters).
        const caret = `${" ".repeat(Math.max(0, answer.column - 1))}^`;
        setHTML(out, html`<p class="field-error" data-condition-error data-column="${answer.column}">${answer.message}</p><pre class="code condition-caret" aria-hidden="true">${text}\n${caret}</pre>`);
      }
    } catch (err) {
      if (err && err.name === "AbortError") return;
      setHTML(out, errorBox(err, "The condition could not be checked"));
    }
  }
  const checkConditionSoon = debounce(checkCondition, 200);

  // ---- preview and validation ------------------------------------------------------------
  function refresh() {
    root.querySelector("[data-yaml]").textContent = toYaml(toManifest(state));
    validateSoon();
  }

  function showDiagnostics(diagnostics) {
    for (const node of form.querySelectorAll(".field-error:not([data-condition-error])")) node.remove();
    for (const node of form.querySelectorAll("[data-invalid]")) node.removeAttribute("data-invalid");
    for (const c of form.querySelectorAll("[aria-invalid]:not([data-bind='condition'])")) c.removeAttribute("aria-invalid");
    const errors = diagnostics.filter((d) => d.severity !== "warning");
    const unplaced = [];
    for (const d of diagnostics) {
      const target = fieldFor(form, d.pointer || "");
      if (!target || target === form) {
        unplaced.push(d);
        continue;
      }
      target.dataset.invalid = d.severity === "warning" ? "warning" : "error";
      // The condition's own check shows its message at the field already.
      if (d.pointer === "/condition") continue;
      const control = target.querySelector("input, select, textarea");
      if (control && d.severity !== "warning") control.setAttribute("aria-invalid", "true");
      target.append(el("p", { class: `field-error ${d.severity === "warning" ? "warning" : ""}`, "data-diagnostic": d.pointer || "" }, d.message));
    }
    const file = lastValidation ? lastValidation.file : "";
    setHTML(
      part("problems"),
      html`<h2>Validation</h2>${
        !diagnostics.length
          ? html`<p class="ok" data-valid="true">✓ Valid — ready to ${gitMode ? "commit" : "save"}</p>`
          : html`<p class="${errors.length ? "form-error" : "muted"}" data-valid="${errors.length ? "false" : "true"}">${errors.length} error${errors.length === 1 ? "" : "s"}, ${diagnostics.length - errors.length} warning${diagnostics.length - errors.length === 1 ? "" : "s"}</p>
          <ul class="diagnostics">${diagnostics.map(
            (d) => html`<li data-severity="${d.severity}"><span class="mono">${file ? `${file}:` : ""}${d.line}:${d.column}</span> <code>${d.pointer || "/"}</code> ${d.message}${unplaced.includes(d) ? "" : html` <span class="muted">(shown at its field)</span>`}</li>`,
          )}</ul>`
      }`,
    );
  }

  let validation = null;
  async function validateNow() {
    if (locked) {
      setHTML(part("problems"), html`<h2>Validation</h2><p class="muted" data-valid="locked">${loaded.reason}</p>`);
      root.querySelector("[data-file]").textContent = `Declared in ${loaded.file}`;
      return;
    }
    if (validation) validation.abort();
    validation = new AbortController();
    try {
      const manifest = toManifest(state);
      const answer = await api.post("/api/validate", { kind: "Alert", id: ruleId || undefined, manifest }, { signal: validation.signal });
      lastValidation = { ...answer, of: JSON.stringify(manifest) };
      root.querySelector("[data-file]").textContent = gitMode ? `Commit as ${answer.file} in the repository` : `Saved as ${answer.file}`;
      showDiagnostics(answer.diagnostics || []);
      root.dataset.validated = String(Date.now());
    } catch (err) {
      if (err && err.name === "AbortError") return;
      setHTML(part("problems"), html`<h2>Validation</h2>${errorBox(err, "The rule could not be checked")}`);
    }
  }
  const validateSoon = debounce(validateNow, 350);
  ctx.onLeave(() => {
    validateSoon.cancel();
    checkConditionSoon.cancel();
    if (validation) validation.abort();
    if (conditionCall) conditionCall.abort();
  });

  // ---- events ----------------------------------------------------------------------------
  form.addEventListener("submit", (e) => e.preventDefault());
  form.addEventListener("input", (event) => {
    const t = event.target;
    if (t.dataset.bind && t.tagName !== "SELECT") {
      state[t.dataset.bind] = t.value;
      if (t.dataset.bind === "condition") checkConditionSoon();
    } else if (t.dataset.label !== undefined) {
      const label = state.labels[Number(t.dataset.label)];
      label[t.dataset.key] = t.value;
      if (t.dataset.key === "key") t.closest(".kv").dataset.pointer = `/labels/${ptr(t.value)}`;
    } else return;
    refresh();
  });
  form.addEventListener("change", (event) => {
    const t = event.target;
    if (t.dataset.bind === "severity") {
      state.severity = t.value;
    } else if (t.dataset.channel !== undefined) {
      const name = t.dataset.channel;
      state.actions = t.checked ? [...state.actions.filter((a) => a !== name), name] : state.actions.filter((a) => a !== name);
    } else return;
    refresh();
  });
  form.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-op]");
    if (!button) return;
    let focus;
    if (button.dataset.op === "add-label") {
      state.labels.push({ uid: uid(), key: "", value: "" });
      focus = `[data-label="${state.labels.length - 1}"][data-key="key"]`;
    } else if (button.dataset.op === "remove-label") {
      state.labels.splice(Number(button.dataset.index), 1);
      focus = '[data-op="add-label"]';
    } else return;
    renderLabels();
    refresh();
    form.querySelector(focus)?.focus();
  });

  // ---- save, copy, download --------------------------------------------------------------
  // The server's text (with its header comment) when it is of the manifest as it is now.
  const yamlText = () => {
    const manifest = toManifest(state);
    return lastValidation && lastValidation.of === JSON.stringify(manifest) ? lastValidation.text : toYaml(manifest);
  };
  saveButton.addEventListener("click", async () => {
    saveButton.disabled = true;
    validateSoon.cancel();
    try {
      const saved = await api.post("/api/manifests", { kind: "Alert", id: ruleId || undefined, manifest: toManifest(state) });
      toast(`${saved.created ? "Created" : "Saved"} ${saved.id} in ${saved.file}`, "success");
      ctx.navigate("#/alerts");
    } catch (err) {
      if (err && err.details && Array.isArray(err.details.diagnostics)) {
        showDiagnostics(err.details.diagnostics);
        toast("Not saved: the rule has problems", "error");
      } else {
        setHTML(part("problems"), html`<h2>Validation</h2>${errorBox(err, "The rule was not saved")}`);
      }
    } finally {
      saveButton.disabled = false;
    }
  });
  copyButton.addEventListener("click", () => copyText(yamlText(), root.querySelector("[data-yaml]")));
  downloadButton.addEventListener("click", () => downloadText((lastValidation ? lastValidation.file : "alert.yaml").split("/").pop(), yamlText()));

  renderRule();
  renderLabels();
  renderChannels();
  refresh();
  validateSoon.cancel();
  await Promise.all([validateNow(), checkCondition()]);
}

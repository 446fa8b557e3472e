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
// `{"alerts": [...]}`, several documents) is shown with the reason and not saved. The page,
// the validation, the save and the copy and download are those of every manifest editor
// (`manifest-editor.js`); this module is the form and the condition's own check.

import { html, setHTML, el, href, errorBox, debounce } from "./ui.js";
import { seg } from "./api.js";
import { manifestEditor, uid, pointerSegment as ptr, textInput as input, fieldBox } from "./manifest-editor.js";

const SEVERITIES = ["info", "warning", "critical"];
/** Fields of the manifest the form edits; anything else is kept as it was. */
const EDITED = new Set(["kind", "name", "description", "condition", "duration", "severity", "labels", "actions"]);

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
  // A rule whose file saving would rewrite whole is shown, not saved (git mode: copied).
  const locked = Boolean(loaded && !loaded.editable && !gitMode);
  const state = fromSpec(loaded ? loaded.manifest || {} : {});
  const { form, part, refresh, validateNow, validateSoon } = manifestEditor(ctx, {
    kind: "Alert",
    id: loaded ? loaded.id : undefined,
    title: loaded ? `Edit ${loaded.name}` : "New alert rule",
    crumb: html`<a href="#/alerts">Alerts</a>${loaded ? html` / <a href="${href("alerts", loaded.id)}" class="mono">${loaded.id}</a>` : ""}`,
    subtitle: "Saved as an Alert manifest in the project, validated first, then applied.",
    gitMode,
    locked: locked ? { reason: loaded.reason, file: loaded.file } : null,
    notice: locked ? html`<div class="notice" data-section="locked" role="note"><p><strong>This rule cannot be saved from here.</strong> ${loaded.reason}</p><p>The YAML beside the form can be copied into a file of its own.</p></div>` : "",
    form: "alert-editor",
    sections: ["rule", "labels", "channels"],
    manifest: () => toManifest(state),
    cancel: loaded ? href("alerts", loaded.id) : "#/alerts",
    afterSave: () => "#/alerts",
    defaultFile: "alert.yaml",
    messages: { unchecked: "The rule could not be checked", problems: "Not saved: the rule has problems", unsaved: "The rule was not saved" },
    // The condition's own check shows its message and marks its control.
    keep: { pointers: ["/condition"], errors: "[data-condition-error]", controls: "[data-bind='condition']" },
  });

  // ---- the form --------------------------------------------------------------------------
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

  ctx.onLeave(() => {
    checkConditionSoon.cancel();
    if (conditionCall) conditionCall.abort();
  });

  // ---- events ----------------------------------------------------------------------------
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

  renderRule();
  renderLabels();
  renderChannels();
  refresh();
  validateSoon.cancel();
  await Promise.all([validateNow(), checkCondition()]);
}

// What every manifest editor of the dashboard does, whatever the kind it edits (the workflow
// editor, the alert rule editor): the page (header, form, a problems panel and the YAML
// beside it), the header buttons (Save or Create, Copy YAML, Download, Cancel), the live
// validation through `POST /api/validate` (debounced) with each diagnostic shown at the field
// its JSON pointer names and all of them listed in the problems panel, and the save through
// `POST /api/manifests`, whose 422 diagnostics are shown the same way. A server that follows a
// git repository writes nothing: the editor offers the YAML to copy or download for a commit
// instead of saving. An editor keeps only its form and its manifest.

import { html, setHTML, el, errorBox, toast, pageHeader, debounce, copyText, downloadText, fieldFor } from "./ui.js";
import { toYaml } from "./yaml.js";

let uids = 0;
/** A fresh number, for keys of list items and ids of controls. */
export const uid = () => ++uids;

/** JSON pointer segment escaping. */
export const pointerSegment = (text) => String(text).replace(/~/g, "~0").replace(/\//g, "~1");

/** A text box holding `value`. */
export function textInput(attrs, value) {
  const node = el("input", { type: "text", autocomplete: "off", ...attrs });
  node.value = value ?? "";
  return node;
}

/**
 * A labelled field whose diagnostics are those of the JSON `pointer`: `control`, an optional
 * hint and any `more` nodes after it.
 */
export function fieldBox(label, control, pointer, hint, ...more) {
  const id = control.id || `f-${uid()}`;
  control.id = id;
  return el("div", { class: "field", "data-pointer": pointer }, el("label", { for: id }, label), control, hint ? el("span", { class: "hint" }, hint) : null, ...more);
}

/**
 * Renders a manifest editor into `ctx.root` and wires what all of them share. Options:
 * - `kind`, `id`: the manifest's kind and the id it is saved as (undefined: a new one);
 * - `title`, `crumb`, `subtitle`: the header (the subtitle where the server saves);
 * - `gitMode`: the server follows a git repository (copy and download, no save);
 * - `locked`: `{reason, file}` when saving would rewrite a file it should not (shown, not
 *   saved, not validated);
 * - `notice`: markup above the form; `form`: its `data-form`; `sections`: its cards;
 *   `aside`: markup between the problems panel and the YAML;
 * - `manifest()`: the manifest (JSON) the form stands for now;
 * - `cancel`: where Cancel leads; `afterSave(saved)`: where a save leads;
 * - `defaultFile`: the downloaded name before the server named the file;
 * - `messages`: `{unchecked, problems, unsaved}`, what failures say;
 * - `keep`: `{pointers, errors, controls}` for a field that shows its own check: the
 *   diagnostics of those pointers get no message at the field, and the messages (selector)
 *   and invalid controls (selector) of that check stay.
 * Returns `{form, part, refresh, validateNow, validateSoon}`: `refresh()` after every change.
 */
export function manifestEditor(ctx, options) {
  const { api, root } = ctx;
  const { kind, id, gitMode, locked, manifest, messages } = options;
  const keep = options.keep || {};
  const keptPointers = keep.pointers || [];
  ctx.setTitle(options.title);
  setHTML(
    root,
    html`${pageHeader(options.title, {
      crumb: options.crumb,
      subtitle: gitMode ? "This server follows a git repository: the editor gives you the YAML to commit." : options.subtitle,
    })}
    ${options.notice || ""}
    <div class="editor-layout">
      <form class="editor-form" data-form="${options.form}" novalidate>
        ${options.sections.map((name) => html`<section class="card" data-section="${name}"></section>`)}
      </form>
      <aside class="editor-side">
        <section class="card" data-section="problems" aria-live="polite"></section>
        ${options.aside || ""}
        <section class="card" data-section="yaml"><h2>YAML</h2><p class="muted" data-file></p><pre class="code" data-yaml></pre></section>
      </aside>
    </div>`,
  );
  const part = (name) => root.querySelector(`[data-section="${name}"]`);
  const form = root.querySelector(`[data-form="${options.form}"]`);
  const actions = root.querySelector("[data-actions]");
  let lastValidation = null;

  // ---- header actions --------------------------------------------------------------------
  const saveButton = el("button", { type: "button", class: "primary", "data-action": "save" }, id ? "Save" : "Create");
  const copyButton = el("button", { type: "button", "data-action": "copy" }, "Copy YAML");
  const downloadButton = el("button", { type: "button", "data-action": "download" }, "Download");
  if (gitMode || locked) actions.append(copyButton, downloadButton);
  else actions.append(saveButton, copyButton);
  actions.append(el("a", { class: "button", href: options.cancel }, "Cancel"));

  // ---- preview and validation ------------------------------------------------------------
  function refresh() {
    root.querySelector("[data-yaml]").textContent = toYaml(manifest());
    validateSoon();
  }

  function showDiagnostics(diagnostics) {
    const notKept = (selector) => (selector ? `:not(${selector})` : "");
    for (const node of form.querySelectorAll(`.field-error${notKept(keep.errors)}`)) node.remove();
    for (const node of form.querySelectorAll("[data-invalid]")) node.removeAttribute("data-invalid");
    for (const c of form.querySelectorAll(`[aria-invalid]${notKept(keep.controls)}`)) c.removeAttribute("aria-invalid");
    const errors = diagnostics.filter((d) => d.severity !== "warning");
    const unplaced = [];
    for (const d of diagnostics) {
      const target = fieldFor(form, d.pointer || "");
      if (!target || target === form) {
        unplaced.push(d);
        continue;
      }
      target.dataset.invalid = d.severity === "warning" ? "warning" : "error";
      // A field that checks itself shows its message there already.
      if (keptPointers.includes(d.pointer)) continue;
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
      setHTML(part("problems"), html`<h2>Validation</h2><p class="muted" data-valid="locked">${locked.reason}</p>`);
      root.querySelector("[data-file]").textContent = `Declared in ${locked.file}`;
      return;
    }
    if (validation) validation.abort();
    validation = new AbortController();
    try {
      const current = manifest();
      const answer = await api.post("/api/validate", { kind, id, manifest: current }, { signal: validation.signal });
      lastValidation = { ...answer, of: JSON.stringify(current) };
      root.querySelector("[data-file]").textContent = gitMode ? `Commit as ${answer.file} in the repository` : `Saved as ${answer.file}`;
      showDiagnostics(answer.diagnostics || []);
      root.dataset.validated = String(Date.now());
    } catch (err) {
      if (err && err.name === "AbortError") return;
      setHTML(part("problems"), html`<h2>Validation</h2>${errorBox(err, messages.unchecked)}`);
    }
  }
  const validateSoon = debounce(validateNow, 350);
  ctx.onLeave(() => {
    validateSoon.cancel();
    if (validation) validation.abort();
  });

  form.addEventListener("submit", (e) => e.preventDefault());

  // ---- save, copy, download --------------------------------------------------------------
  // The server's text (with its header comment) when it is of the manifest as it is now.
  const yamlText = () => {
    const current = manifest();
    return lastValidation && lastValidation.of === JSON.stringify(current) ? lastValidation.text : toYaml(current);
  };
  saveButton.addEventListener("click", async () => {
    saveButton.disabled = true;
    validateSoon.cancel();
    try {
      const saved = await api.post("/api/manifests", { kind, id, manifest: manifest() });
      toast(`${saved.created ? "Created" : "Saved"} ${saved.id} in ${saved.file}`, "success");
      ctx.navigate(options.afterSave(saved));
    } catch (err) {
      if (err && err.details && Array.isArray(err.details.diagnostics)) {
        showDiagnostics(err.details.diagnostics);
        toast(messages.problems, "error");
      } else {
        setHTML(part("problems"), html`<h2>Validation</h2>${errorBox(err, messages.unsaved)}`);
      }
    } finally {
      saveButton.disabled = false;
    }
  });
  copyButton.addEventListener("click", () => copyText(yamlText(), root.querySelector("[data-yaml]")));
  downloadButton.addEventListener("click", () => downloadText((lastValidation ? lastValidation.file : options.defaultFile).split("/").pop(), yamlText()));

  return { form, part, refresh, validateNow, validateSoon };
}

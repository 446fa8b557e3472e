// Tests: every test case's history (`GET /api/tests`): flaky tests with their flip history
// (the recent results as a strip), new failures, the most failing and the slowest tests, and
// the quarantine list (owners, reasons, expiries). `#/tests/ID` is one test's timeline
// across runs and revisions with its grouped failure messages (`GET /api/tests/{id}`).
// "Quarantine" on a flaky test writes the Quarantine manifest for it: its text to copy and
// commit, or saved into `quarantine/` through `POST /api/manifests` in directory mode, the
// way the workflow editor saves. Live on workflow_completed.

import { html, setHTML, badge, relTime, table, href, pageHeader, debounce, duration, toast, copyText, facts } from "../lib/ui.js";
import { toYaml } from "../lib/yaml.js";

/** The recent results as a strip of letters, oldest first (P passed, F failed, S skipped). */
function strip(recent) {
  const letters = [...(recent || "")];
  if (!letters.length) return html`<span class="muted">—</span>`;
  const word = { P: "passed", F: "failed", S: "skipped" };
  return html`<span class="flip-strip" data-recent="${recent}" role="img" aria-label="Recent results, oldest first: ${letters.map((l) => word[l] || l).join(", ")}">${letters.map(
    (l) => html`<span class="flip f-${l}" title="${word[l] || l}">${l}</span>`,
  )}</span>`;
}

function testName(t) {
  return html`<a href="${href("tests", t.id)}" data-test-link="${t.id}"><strong>${t.name}</strong></a><div class="muted">${[t.suite, t.classname].filter(Boolean).join(" · ")}</div>`;
}

function percent(rate) {
  return `${Math.round((rate || 0) * 100)}%`;
}

function until(q) {
  return html`<span data-until="${q.until}">${q.until}</span>${q.active ? "" : html` ${badge("warning", "expired")}`}`;
}

/** A date `days` from today, as YYYY-MM-DD (UTC). */
function inDays(days) {
  return new Date(Date.now() + days * 86400000).toISOString().slice(0, 10);
}

/** The Quarantine manifest of one test. */
export function quarantineManifest(test, { owner, reason, until: last }) {
  return {
    kind: "Quarantine",
    // The id in the name: two tests of one name (other suites, other workflows) get
    // manifests of their own.
    name: `Quarantine ${test.id} ${test.name}`.slice(0, 200),
    description: `${test.workflow} · ${[test.suite, test.classname, test.name].filter(Boolean).join(" · ")}`,
    entries: [{ test: test.id, reason, owner, until: last }],
  };
}

/** The panel that writes a Quarantine manifest for `test`: owner, reason and expiry in,
 * the YAML out, with copy and (in directory mode) save. */
function quarantinePanel(ctx, panel, test, gitMode) {
  const reason = test.flaky_reason ? `flaky: ${test.flaky_reason}` : `failing: ${test.last_failure_message || test.name}`.split("\n")[0];
  setHTML(
    panel,
    html`<form class="quarantine-form" data-quarantine-form="${test.id}">
      <h3>Quarantine ${test.name}</h3>
      <p class="muted">Its failures will fail no step until the date below; its results are still recorded and shown. ${gitMode ? "This server follows a git repository: commit the file to apply it." : "Saved into quarantine/ and applied, like the workflow editor's manifests."}</p>
      <div class="form-grid">
        <label>Owner <input name="owner" required placeholder="team or person" data-field="owner"></label>
        <label>Reason <input name="reason" required value="${reason}" data-field="reason"></label>
        <label>Until <input name="until" type="date" required value="${inDays(30)}" data-field="until"></label>
      </div>
      <pre class="code" data-quarantine-yaml></pre>
      <div class="actions">
        <button type="button" class="secondary" data-copy>Copy YAML</button>
        ${gitMode ? "" : html`<button type="submit" class="primary" data-save>Save to quarantine/</button>`}
        <button type="button" class="secondary" data-close>Close</button>
      </div>
      <p class="form-error" data-quarantine-error hidden></p>
      <p class="ok" data-quarantine-saved hidden></p>
    </form>`,
  );
  panel.hidden = false;
  const form = panel.querySelector("form");
  const pre = panel.querySelector("[data-quarantine-yaml]");
  const manifest = () =>
    quarantineManifest(test, {
      owner: form.owner.value.trim() || "OWNER",
      reason: form.reason.value.trim() || "REASON",
      until: form.until.value || inDays(30),
    });
  const text = () => `# yaml-language-server: $schema=../schemas/quarantine.json\n${toYaml(manifest())}`;
  const refresh = () => {
    pre.textContent = text();
  };
  refresh();
  form.addEventListener("input", refresh);
  form.querySelector("[data-copy]").addEventListener("click", (e) => copyText(text(), e.currentTarget));
  form.querySelector("[data-close]").addEventListener("click", () => {
    panel.hidden = true;
    setHTML(panel, html``);
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const error = form.querySelector("[data-quarantine-error]");
    const saved = form.querySelector("[data-quarantine-saved]");
    error.hidden = true;
    if (!form.reportValidity()) return;
    const button = form.querySelector("[data-save]");
    button.disabled = true;
    try {
      const answer = await ctx.api.post("/api/manifests", { kind: "Quarantine", manifest: manifest() });
      saved.textContent = `Saved as ${answer.file} and applied`;
      saved.hidden = false;
      toast(`Quarantined ${test.name}`, "success");
    } catch (err) {
      button.disabled = false;
      error.textContent = err.message;
      error.hidden = false;
    }
  });
}

async function gitModeOf(ctx) {
  try {
    const status = await ctx.api.get("/api/status", { signal: ctx.signal });
    return (status.source || {}).kind === "git";
  } catch {
    return false;
  }
}

async function overview(ctx) {
  const { api, root, query } = ctx;
  const workflow = query.get("workflow") || "";
  setHTML(
    root,
    html`${pageHeader("Tests", { subtitle: "Every test case's history: flaky tests, new failures, the most failing and the slowest, and what is quarantined" })}
    <div class="quarantine-panel" data-section="quarantine-panel" hidden></div>
    <h2>Flaky tests</h2><div data-section="flaky"><p class="loading">Loading…</p></div>
    <h2>New failures</h2><div data-section="new"></div>
    <h2>Most failing</h2><div data-section="failing"></div>
    <h2>Slowest</h2><div data-section="slow"></div>
    <h2>Quarantine</h2><div data-section="quarantines"></div>`,
  );
  const part = (name) => root.querySelector(`[data-section="${name}"]`);
  const opts = { signal: ctx.signal };
  const gitMode = await gitModeOf(ctx);
  let lists = {};
  const ask = (status, limit = 20) =>
    api.get(`/api/tests?status=${status}&limit=${limit}${workflow ? `&workflow=${encodeURIComponent(workflow)}` : ""}`, opts);

  function show() {
    const rowAttrs = (t) => ({ "data-test": t.id, "data-flaky": String(t.flaky) });
    setHTML(
      part("flaky"),
      table(
        [
          { label: "Test", render: testName },
          { label: "Workflow", render: (t) => html`<a href="${href("workflows", t.workflow)}">${t.workflow}</a>`, class: "hide-narrow" },
          { label: "Flip history", render: (t) => strip(t.recent) },
          { label: "Flips", render: (t) => String(t.flips), num: true },
          { label: "Why", render: (t) => html`<span data-flaky-reason>${t.flaky_reason || ""}</span>` },
          {
            label: "",
            render: (t) =>
              t.quarantine
                ? html`<span class="muted" data-quarantined>quarantined until ${t.quarantine.until}</span>`
                : html`<button type="button" class="secondary" data-quarantine="${t.id}" aria-label="Quarantine ${t.name}">Quarantine</button>`,
          },
        ],
        lists.flaky.tests,
        { empty: "No flaky test: none passed and failed on one revision or flips often.", caption: "Flaky tests", rowAttrs },
      ),
    );
    setHTML(
      part("new"),
      table(
        [
          { label: "Test", render: testName },
          { label: "Workflow", render: (t) => t.workflow, class: "hide-narrow" },
          { label: "Run", render: (t) => html`<a href="${href("runs", t.last_run)}" class="mono">${t.last_run}</a>` },
          { label: "Failure", render: (t) => html`<span class="muted">${(t.last_failure_message || "").split("\n")[0]}</span>` },
        ],
        lists.new.tests,
        { empty: "No new failures.", caption: "New failures", rowAttrs },
      ),
    );
    setHTML(
      part("failing"),
      table(
        [
          { label: "Test", render: testName },
          { label: "Recent", render: (t) => strip(t.recent) },
          { label: "Failed", render: (t) => `${t.failures} of ${t.results}`, num: true },
          { label: "Rate", render: (t) => percent(t.failure_rate), num: true },
          { label: "Last", render: (t) => badge(t.last_class) },
        ],
        lists.failing.tests,
        { empty: "No test is failing.", caption: "Most failing", rowAttrs },
      ),
    );
    setHTML(
      part("slow"),
      table(
        [
          { label: "Test", render: testName },
          { label: "Workflow", render: (t) => t.workflow, class: "hide-narrow" },
          { label: "Mean", render: (t) => duration(t.mean_duration_ms), num: true },
          { label: "Last", render: (t) => duration(t.last_duration_ms), num: true },
        ],
        lists.slow.tests,
        { empty: "No test results yet.", caption: "Slowest tests", rowAttrs },
      ),
    );
    setHTML(
      part("quarantines"),
      table(
        [
          { label: "Manifest", render: (q) => html`<span class="mono">${q.manifest}</span>` },
          { label: "Covers", render: (q) => html`<code>${q.covers}</code>` },
          { label: "Owner", render: (q) => q.owner },
          { label: "Reason", render: (q) => q.reason },
          { label: "Until", render: until },
          { label: "Tests", render: (q) => String(q.tests), num: true },
        ],
        lists.slow.quarantines,
        {
          empty: "Nothing is quarantined. A Quarantine manifest in quarantine/ (or “Quarantine” on a flaky test) keeps a test's failures from failing its step.",
          caption: "Quarantine entries",
          rowAttrs: (q) => ({ "data-quarantine-entry": `${q.manifest}/${q.index}`, "data-active": String(q.active) }),
        },
      ),
    );
  }

  async function load() {
    const [flaky, fresh, failing, slow] = await Promise.all([ask("flaky"), ask("new"), ask("failing"), ask("slow")]);
    lists = { flaky, new: fresh, failing, slow };
    show();
  }

  part("flaky").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-quarantine]");
    if (!button) return;
    const test = lists.flaky.tests.find((t) => t.id === button.dataset.quarantine);
    if (test) quarantinePanel(ctx, part("quarantine-panel"), test, gitMode);
  });

  await load();
  const soon = debounce(() => load().catch(() => {}), 300);
  for (const type of ["workflow_completed", "manifest_applied", "resync"]) ctx.on(type, soon);
}

async function detail(ctx, id) {
  const { api, root } = ctx;
  const [data, gitMode] = await Promise.all([api.get(`/api/tests/${encodeURIComponent(id)}?limit=200`, { signal: ctx.signal }), gitModeOf(ctx)]);
  const t = data.test;
  ctx.setTitle(`Test ${t.name}`);
  const q = data.quarantine;
  setHTML(
    root,
    html`${pageHeader(t.name, { crumb: html`<a href="#/tests">Tests</a> / <span class="mono">${t.id}</span>` })}
    <div class="card" data-section="test">${facts([
      ["Workflow", html`<a href="${href("workflows", t.workflow)}">${t.workflow}</a>`],
      ["Suite", t.suite || "—"],
      ["Class", t.classname || "—"],
      ["Last result", html`${badge(t.last_status)} ${badge(t.last_class)} in <a href="${href("runs", t.last_run)}" class="mono">${t.last_run}</a> at <span class="mono">${t.last_revision}</span>`],
      ["Flip history", html`${strip(t.recent)} <span class="muted">${String(data.flips)} flip(s)</span>`],
      ["Flaky", t.flaky ? html`${badge("flaky")} <span data-flaky-reason>${t.flaky_reason || ""}</span>` : "no"],
      ["Failures", `${t.failures} of ${t.results} (${percent(data.failure_rate)})`],
      ["Duration", `mean ${duration(t.mean_duration_ms)}, last ${duration(t.last_duration_ms)}`],
      ["Quarantine", q ? html`<span data-quarantine-of="${q.manifest}">${q.manifest}: ${q.reason} · owner ${q.owner} · until ${until(q)}</span>` : "none"],
    ])}
    ${q ? "" : html`<div class="actions"><button type="button" class="secondary" data-quarantine="${t.id}">Quarantine</button></div>`}
    </div>
    <div class="quarantine-panel" data-section="quarantine-panel" hidden></div>
    <h2>Timeline</h2><div data-section="timeline">${table(
      [
        { label: "Run", render: (r) => html`<a href="${href("runs", r.run_id)}" class="mono">${r.run_id}</a>${r.attempt > 1 ? html` <span class="muted">attempt ${String(r.attempt)}</span>` : ""}<div class="muted">${relTime(r.at)}</div>` },
        { label: "Revision", render: (r) => html`<span class="mono">${r.revision}</span>` },
        { label: "Worker", render: (r) => (r.worker ? html`<a href="${href("workers", r.worker)}">${r.worker}</a>` : html`<span class="muted">this machine</span>`), class: "hide-narrow" },
        { label: "Status", render: (r) => badge(r.status) },
        { label: "Class", render: (r) => html`<span data-class="${r.class}">${badge(r.class)}</span>` },
        { label: "Duration", render: (r) => duration(r.duration_ms), num: true },
        { label: "Failure", render: (r) => (r.failure_message ? html`<span class="muted" data-failure-group="${r.failure}">${r.failure_message.split("\n")[0]}</span>` : "") },
      ],
      data.timeline,
      { empty: "No stored results.", caption: "Timeline, newest first", rowAttrs: (r) => ({ "data-result": `${r.run_id}/${r.attempt}`, "data-revision": r.revision }) },
    )}</div>
    <h2>Failure groups</h2><div data-section="groups">${
      data.failure_groups.length
        ? html`${data.failure_groups.map(
            (g) => html`<details class="test-case" data-group="${g.digest}"><summary><strong>×${String(g.count)}</strong> <span>${g.normalised.split("\n")[0]}</span></summary><div class="body"><p class="muted">Normalised (numbers, addresses and temporary paths taken out):</p><pre class="code">${g.normalised}</pre><p class="muted">First seen as:</p><pre class="code">${g.example}</pre></div></details>`,
          )}`
        : html`<p class="muted">No failures in its stored results.</p>`
    }</div>`,
  );
  const button = root.querySelector("button[data-quarantine]");
  if (button) button.addEventListener("click", () => quarantinePanel(ctx, root.querySelector('[data-section="quarantine-panel"]'), { ...t, flaky_reason: t.flaky_reason }, gitMode));
  const soon = debounce(() => ctx.refresh(), 500);
  ctx.on("workflow_completed", soon);
}

export async function render(ctx) {
  const id = ctx.params && ctx.params[0];
  if (id) return detail(ctx, id);
  return overview(ctx);
}

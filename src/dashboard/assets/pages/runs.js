// Runs: the list (filters by workflow and status, paged) and one run (live step states,
// the log tail of each step over /ws, test cases with failures expanded, duration bars,
// artifacts, cancel, re-run and re-run from failed).

import { html, setHTML, el, badge, relTime, duration, elapsed, table, href, durationBar, facts, debounce, toast, pageHeader } from "../lib/ui.js";
import { dagSvg, setNodeStatus } from "../lib/dag.js";
import { qs } from "../lib/api.js";

const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled", "timed_out", "skipped", "interrupted"];
const PAGE = 50;
/** The most characters a log pane keeps: older text is cut from its top as new text comes. */
export const LOG_LIMIT = 200_000;
/** The most chunks kept for a step whose log pane does not exist yet. */
const EARLY_LIMIT = 500;
const finished = (status) => status && status !== "queued" && status !== "running";

export async function render(ctx) {
  if (ctx.params[0]) return detail(ctx, ctx.params[0]);
  return list(ctx);
}

/** The workers a step's attempts ran on, each a link to the Workers page, attempt by
 * attempt (`w1 → w2` when a retry moved it); "this machine" for a local step. */
function workersOf(step) {
  const names = (step.attempts || []).map((a) => a.worker).filter(Boolean);
  if (!names.length) return html`<span class="muted" data-worker="">${(step.attempts || []).length ? "this machine" : "—"}</span>`;
  return html`<span data-worker="${names[names.length - 1]}">${names.map((n, i) => html`${i ? " → " : ""}<a href="${href("workers", n)}">${n}</a>`)}</span>`;
}

/** A test's id, as the store computes it: `tc_` and the first 8 bytes, in hex, of the
 * SHA-256 of its workflow, suite, classname and name joined by NUL bytes. Null where the
 * page is no secure context (no `crypto.subtle`). */
async function testId(workflow, t) {
  if (!globalThis.crypto || !crypto.subtle) return null;
  const bytes = new TextEncoder().encode([workflow, t.suite || "", t.classname || "", t.name].join("\0"));
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return "tc_" + [...digest.slice(0, 8)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** Links each test case of the run page to its history on the Tests page. */
async function linkHistories(part, workflow, cases) {
  const rows = part.querySelectorAll("details.test-case > summary");
  await Promise.all(
    cases.map(async (t, i) => {
      const id = await testId(workflow, t).catch(() => null);
      if (!id || !rows[i] || rows[i].querySelector("a[data-history]")) return;
      rows[i].append(" ", el("a", { href: href("tests", id), "data-history": id, title: "This test's history across runs" }, "history"));
    }),
  );
}

function testsText(tests) {
  if (!tests || !tests.total) return "—";
  const bad = (tests.failed || 0) + (tests.errors || 0);
  const classes = [
    [tests.new_failures, "new failure", "new failures"],
    [tests.still_failing, "still failing", "still failing"],
    [tests.flaky, "flaky", "flaky"],
    [tests.quarantined, "quarantined", "quarantined"],
  ]
    .filter(([n]) => n > 0)
    .map(([n, one, many]) => `${n} ${n === 1 ? one : many}`);
  const head = bad ? `${bad} of ${tests.total} failed` : `${tests.passed}/${tests.total} passed`;
  return classes.length ? `${head} (${classes.join(", ")})` : head;
}

async function list(ctx) {
  const { api, root, query } = ctx;
  const filters = { workflow: query.get("workflow") || "", status: query.get("status") || "", offset: Number(query.get("offset") || 0) };
  const workflows = await api.get("/api/workflows?limit=1000", { signal: ctx.signal });
  setHTML(
    root,
    html`${pageHeader("Runs", { subtitle: "Every run, newest first" })}
    <form class="filters" data-form="filters" role="search" aria-label="Filter runs">
      <label>Workflow<select name="workflow"><option value="">All workflows</option>${workflows.workflows.map(
        (w) => html`<option value="${w.id}" ${w.id === filters.workflow ? html`selected` : ""}>${w.name}</option>`,
      )}</select></label>
      <label>Status<select name="status"><option value="">Any status</option>${STATUSES.map(
        (s) => html`<option value="${s}" ${s === filters.status ? html`selected` : ""}>${s.replace("_", " ")}</option>`,
      )}</select></label>
      <button type="submit">Apply</button>
    </form>
    <div data-section="list"><p class="loading">Loading…</p></div>
    <div class="pager" data-section="pager"></div>`,
  );
  const form = root.querySelector('[data-form="filters"]');
  const go = (offset) => ctx.navigate(`#/runs${qs({ workflow: form.workflow.value, status: form.status.value, offset: offset || "" })}`);
  form.addEventListener("submit", (e) => (e.preventDefault(), go(0)));
  form.addEventListener("change", () => go(0));

  async function load() {
    const page = await api.get(`/api/runs${qs({ workflow: filters.workflow, status: filters.status, limit: PAGE, offset: filters.offset })}`, { signal: ctx.signal });
    const max = Math.max(1, ...page.runs.map((r) => r.duration_ms || elapsed(r.started_at) || 0));
    setHTML(
      root.querySelector('[data-section="list"]'),
      table(
        [
          { label: "Run", render: (r) => html`<a href="${href("runs", r.id)}" class="mono">${r.id}</a>${r.rerun_of ? html`<div class="muted">re-run of ${r.rerun_of}</div>` : ""}` },
          { label: "Workflow", render: (r) => html`<a href="${href("workflows", r.workflow_id)}">${r.workflow_name}</a>` },
          { label: "Status", render: (r) => badge(r.status) },
          { label: "Trigger", render: (r) => (r.trigger && r.trigger.kind) || "—", class: "hide-narrow" },
          { label: "Created", render: (r) => relTime(r.created_at) },
          { label: "Duration", render: (r) => { const ms = r.duration_ms ?? elapsed(r.started_at); return html`${durationBar(ms, max, { status: r.status })} <span class="muted nowrap">${duration(ms)}</span>`; } },
          { label: "Tests", render: (r) => testsText(r.tests) },
        ],
        page.runs,
        { empty: filters.workflow || filters.status ? "No run matches these filters." : "No runs yet: run a workflow from the Workflows page.", rowAttrs: (r) => ({ "data-run": r.id, "data-status": r.status }) },
      ),
    );
    const pager = root.querySelector('[data-section="pager"]');
    setHTML(pager, html`<span class="muted">${page.total ? `${page.offset + 1}–${page.offset + page.runs.length} of ${page.total}` : ""}</span>`);
    if (page.offset > 0) pager.append(el("button", { type: "button", onclick: () => go(Math.max(0, page.offset - PAGE)) }, "Newer"));
    if (page.offset + page.runs.length < page.total) pager.append(el("button", { type: "button", onclick: () => go(page.offset + PAGE) }, "Older"));
  }
  await load();
  const soon = debounce(() => load().catch(() => {}), 250);
  for (const type of ["workflow_started", "workflow_completed", "step_completed", "resync"]) ctx.on(type, soon);
}

/**
 * Where `GET /api/runs/{id}/artifacts/{path}` serves a recorded file, or null for a path it
 * refuses (absolute, `..`, empty segments).
 */
export function artifactUrl(runId, path) {
  const parts = String(path).split("/");
  if (!path || path.startsWith("/") || path.includes("\\") || parts.some((p) => p === "" || p === "." || p === "..")) return null;
  return `/api/runs/${encodeURIComponent(runId)}/artifacts/${parts.map(encodeURIComponent).join("/")}`;
}

/** Keeps a log pane to its last LOG_LIMIT characters (a note says the top was cut). */
function trim(pre) {
  const text = pre.textContent;
  if (text.length <= LOG_LIMIT) return;
  const cut = text.indexOf("\n", text.length - LOG_LIMIT);
  pre.textContent = `[… earlier lines not shown: the whole log is at GET ${pre.dataset.logUrl || "the run's logs route"}]\n${text.slice(cut < 0 ? text.length - LOG_LIMIT : cut + 1)}`;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const byteLength = (text) => encoder.encode(text).length;

/**
 * The part of a streamed log chunk not shown yet. `shown` is how many bytes of the step's
 * log file the page shows; the chunk starts at byte `offset` of that file (a chunk the
 * file read already had is dropped, one that overlaps it is cut).
 */
export function unseen(shown, chunk) {
  if (typeof chunk.offset !== "number") return chunk.text;
  const bytes = encoder.encode(chunk.text);
  if (chunk.offset + bytes.length <= shown) return "";
  if (chunk.offset >= shown) return chunk.text;
  return decoder.decode(bytes.slice(shown - chunk.offset));
}

/** What was reported to the run's GitHub commit (`report_to`): the newest state, sent or
 * why not. */
function commitStatus(report) {
  const last = report.updates[report.updates.length - 1];
  const where = html`<span class="mono">${report.context}</span> <span class="muted">${report.repository}@${report.sha.slice(0, 7)}</span>`;
  if (!last) return html`<span data-commit-status="none">${where}: nothing sent yet</span>`;
  if (last.delivered) return html`<span data-commit-status="${last.state}">${where}: ${last.state} sent</span>`;
  if (!last.error) return html`<span data-commit-status="sending">${where}: ${last.state} being sent</span>`;
  return html`<span data-commit-status="error">${where}: ${last.state} not sent after ${last.attempts} attempt${last.attempts === 1 ? "" : "s"}: ${last.error}</span>`;
}

async function detail(ctx, id) {
  const { api, root } = ctx;
  const path = `/api/runs/${encodeURIComponent(id)}`;
  // Log lines are streamed only to clients that ask; ask before reading the files.
  ctx.want("run_log");
  const logs = new Map(); // step -> {pre, pending: [] | null}
  const early = new Map(); // step -> chunks heard before its log panel exists
  ctx.on("run_log", (p) => {
    if (!p || p.run_id !== id) return;
    const log = logs.get(p.step);
    if (!log) early.set(p.step, [...(early.get(p.step) || []).slice(1 - EARLY_LIMIT), p]);
    else if (log.pending) log.pending.push(p);
    else append(log, p);
  });

  let data = await api.get(path, { signal: ctx.signal });
  ctx.setTitle(`Run ${id}`);
  setHTML(
    root,
    html`${pageHeader(`Run ${id}`, { crumb: html`<a href="#/runs">Runs</a> / <a href="${href("workflows", data.run.workflow_id)}">${data.run.workflow_name}</a>` })}
    <div data-section="summary" class="grid cols-2"></div>
    <h2>Steps</h2><div data-section="graph" class="card"></div>
    <div data-section="steps"></div>
    <h2>Tests</h2><div data-section="tests"></div>
    <h2>Logs</h2><div data-section="logs"></div>
    <div data-section="artifacts"></div>`,
  );
  const part = (name) => root.querySelector(`[data-section="${name}"]`);
  const actions = root.querySelector("[data-actions]");
  const cancel = el("button", { type: "button", class: "danger", "data-action": "cancel" }, "Cancel");
  const rerun = el("button", { type: "button", "data-action": "rerun" }, "Re-run");
  const rerunFailed = el("button", { type: "button", "data-action": "rerun-failed" }, "Re-run from failed");
  actions.append(cancel, rerun, rerunFailed);
  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try {
      await api.post(`${path}/cancel`);
      toast("Cancelling…");
    } catch (err) {
      toast(`${err.code || "error"}: ${err.message}`, "error", 8000);
      cancel.disabled = false;
    }
  });
  const startRerun = async (fromFailed) => {
    try {
      const accepted = await api.post(`${path}/rerun`, { from_failed: fromFailed });
      toast(`Started ${accepted.run_id}`, "success");
      ctx.navigate(href("runs", accepted.run_id));
    } catch (err) {
      toast(`${err.code || "error"}: ${err.message}`, "error", 8000);
    }
  };
  rerun.addEventListener("click", () => startRerun(false));
  rerunFailed.addEventListener("click", () => startRerun(true));

  const workflowSteps = () => (data.run.workflow && data.run.workflow.steps) || data.steps.map((s) => ({ name: s.name, agent: s.agent, action: s.action }));
  const states = () => Object.fromEntries(data.steps.map((s) => [s.name, s.status]));

  function showSummary() {
    const run = data.run;
    const params = Object.entries(run.parameters || {});
    setHTML(
      part("summary"),
      html`<div class="card">${facts([
        ["Status", html`<span data-run-status="${run.status}">${badge(run.status)}</span>`],
        ["Workflow", html`<a href="${href("workflows", run.workflow_id)}">${run.workflow_name}</a> <span class="muted mono">${run.workflow_id}</span>`],
        ["Trigger", (run.trigger && run.trigger.kind) || "—"],
        ["Created", relTime(run.created_at)],
        ["Started", relTime(run.started_at)],
        ["Finished", relTime(run.finished_at)],
        ["Duration", duration(run.duration_ms ?? elapsed(run.started_at))],
        run.message ? ["Message", run.message] : null,
        run.rerun_of ? ["Re-run of", html`<a href="${href("runs", run.rerun_of)}">${run.rerun_of}</a>`] : null,
        data.commit_status ? ["Commit status", commitStatus(data.commit_status)] : null,
      ])}</div>
      <div class="card"><h3>Parameters</h3>${params.length ? facts(params.map(([k, v]) => [k, html`<code>${typeof v === "string" ? v : JSON.stringify(v)}</code>`])) : html`<p class="muted">None.</p>`}
      <h3>Tests</h3><p data-tests-summary>${testsText(run.tests)}</p></div>`,
    );
    const done = finished(run.status);
    cancel.hidden = done;
    cancel.disabled = false;
    rerun.hidden = !done;
    rerunFailed.hidden = !done || run.status === "succeeded";
  }

  function showSteps() {
    const run = data.run;
    const start = run.started_at ? new Date(run.started_at).getTime() : null;
    const spans = data.steps.map((s) => {
      const from = s.started_at ? new Date(s.started_at).getTime() : null;
      const ms = s.duration_ms ?? (from ? Date.now() - from : null);
      return { s, offset: from && start ? from - start : 0, ms };
    });
    const total = Math.max(1, run.duration_ms ?? 0, ...spans.map((x) => x.offset + (x.ms || 0)));
    setHTML(
      part("steps"),
      table(
        [
          { label: "Step", render: ({ s }) => html`<strong>${s.name}</strong>` },
          { label: "Agent", render: ({ s }) => html`${s.agent}${s.action ? html` <span class="muted">· ${s.action}</span>` : ""}`, class: "hide-narrow" },
          { label: "Status", render: ({ s }) => badge(s.status) },
          { label: "Timeline", render: ({ s, offset, ms }) => durationBar(ms, total, { offset, status: s.status, width: 180, label: `${s.name}: ${duration(ms)}` }) },
          { label: "Duration", render: ({ ms }) => duration(ms), num: true },
          { label: "Attempts", render: ({ s }) => String((s.attempts || []).length), num: true, class: "hide-narrow" },
          { label: "Worker", render: ({ s }) => workersOf(s), class: "hide-narrow" },
          { label: "Exit", render: ({ s }) => (s.exit_code ?? "—").toString(), num: true },
          { label: "Message", render: ({ s }) => s.message || "" },
        ],
        spans,
        { empty: "No steps.", rowAttrs: ({ s }) => ({ "data-step": s.name, "data-status": s.status }) },
      ),
    );
  }

  function showGraph() {
    setHTML(part("graph"), dagSvg(workflowSteps(), states(), { label: `Steps of run ${id}` }));
  }

  function showTests() {
    const cases = data.steps.flatMap((s) => (s.tests || []).map((t) => ({ ...t, step: s.name })));
    if (!cases.length) {
      setHTML(part("tests"), html`<p class="muted" data-tests="none">${finished(data.run.status) ? "No test results were reported." : "No test results yet."}</p>`);
      return;
    }
    const bad = (t) => t.status === "failed" || t.status === "error";
    const order = (t) => (bad(t) ? 0 : t.status === "skipped" ? 2 : 1);
    cases.sort((a, b) => order(a) - order(b));
    setHTML(
      part("tests"),
      html`<div data-tests="${cases.length}">${cases.map(
        (t) => html`<details class="test-case" data-test="${t.name}" data-test-status="${t.status}" data-class="${t.class || ""}" ${bad(t) ? html`open` : ""}>
          <summary>${badge(t.status)}${t.class && t.class !== t.status ? html` <span data-test-class="${t.class}">${badge(t.class)}</span>` : ""} <strong>${t.name}</strong> <span class="muted">${[t.suite, t.classname].filter(Boolean).join(" · ")} · ${t.step}</span>
          <span class="muted">${duration((t.time_seconds || 0) * 1000)}</span></summary>
          <div class="body">${t.message ? html`<p>${t.message}</p>` : ""}${t.details ? html`<pre class="code">${t.details}</pre>` : ""}${t.output ? html`<pre class="code">${t.output}</pre>` : ""}${!t.message && !t.details && !t.output ? html`<p class="muted">No details.</p>` : ""}</div>
        </details>`,
      )}</div>`,
    );
    linkHistories(part("tests"), data.run.workflow_id, cases);
  }

  function showArtifacts() {
    const files = data.steps.flatMap((s) => (s.artifacts || []).map((a) => ({ step: s.name, path: a, url: artifactUrl(id, a) })));
    setHTML(
      part("artifacts"),
      files.length
        ? html`<h2>Artifacts</h2>${table(
            [
              {
                label: "File",
                render: (f) => (f.url ? html`<a href="${f.url}" target="_blank" rel="noopener" data-artifact="${f.path}"><code>${f.path}</code></a>` : html`<code>${f.path}</code>`),
              },
              { label: "Step", render: (f) => f.step },
            ],
            files,
          )}<p class="muted">Paths are relative to the project directory; files under reports/ and the run's log directory open here.</p>`
        : "",
    );
  }

  function append(log, chunk) {
    const text = unseen(log.shown, chunk);
    log.shown = Math.max(log.shown, (chunk.offset ?? log.shown) + byteLength(chunk.text));
    if (!text) return;
    const pre = log.pre;
    const follow = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
    pre.append(text);
    trim(pre);
    if (follow) pre.scrollTop = pre.scrollHeight;
    pre.closest("details")?.setAttribute("data-has-log", "true");
  }

  async function fetchLog(name) {
    const log = logs.get(name);
    log.pending = [...(early.get(name) || [])];
    early.delete(name);
    try {
      const text = await api.getText(`${path}/logs/${encodeURIComponent(name)}`, { signal: ctx.signal });
      log.pre.textContent = text;
      trim(log.pre);
      log.shown = byteLength(text);
    } catch (err) {
      if (err.name !== "AbortError") log.pre.textContent = `(the log could not be read: ${err.message})`;
    }
    const heard = log.pending;
    log.pending = null;
    heard.forEach((chunk) => append(log, chunk));
    log.fetched = true;
    if (log.pre.textContent) log.pre.closest("details")?.setAttribute("data-has-log", "true");
  }

  function ensureLogPanels() {
    for (const s of data.steps) {
      let log = logs.get(s.name);
      if (!log) {
        const pre = el("pre", { class: "log", "data-log": s.name, "data-log-url": `${path}/logs/${encodeURIComponent(s.name)}`, tabindex: "0", "aria-label": `Log of ${s.name}` });
        const details = el("details", { class: "step-log", "data-step-log": s.name }, el("summary", {}, el("strong", {}, s.name), el("span", { "data-log-status": "" })), pre);
        part("logs").append(details);
        log = { pre, details, pending: null, fetched: false, shown: 0 };
        logs.set(s.name, log);
      }
      setHTML(log.details.querySelector("[data-log-status]"), badge(s.status));
      const active = s.status !== "queued" && s.status !== "skipped";
      if (active && !log.fetched && !log.pending) fetchLog(s.name);
      if ((s.status === "running" || s.status === "failed" || s.status === "timed_out") && !log.opened) {
        log.details.open = true;
        log.opened = true;
      }
    }
    // A short run: open the first log so there is something to read.
    if (![...logs.values()].some((l) => l.details.open) && logs.size) [...logs.values()][0].details.open = true;
  }

  function showAll() {
    showSummary();
    showGraph();
    showSteps();
    showTests();
    showArtifacts();
    ensureLogPanels();
    root.dataset.runStatus = data.run.status;
  }
  showAll();

  const reload = debounce(async () => {
    try {
      data = await api.get(path, { signal: ctx.signal });
      showAll();
    } catch {
      /* left, or the server is away: the next event or resync tries again */
    }
  }, 120);
  ctx.onLeave(() => reload.cancel());
  const onStep = (p) => {
    if (!p || p.run_id !== id) return;
    const step = data.steps.find((s) => s.name === p.name);
    if (step) Object.assign(step, { status: p.status, started_at: p.started_at, finished_at: p.finished_at, duration_ms: p.duration_ms, exit_code: p.exit_code, message: p.message });
    setNodeStatus(part("graph"), p.name, p.status);
    showSteps();
    ensureLogPanels();
    reload();
  };
  ctx.on("step_started", onStep);
  ctx.on("step_completed", onStep);
  ctx.on("step_retrying", onStep);
  ctx.on("workflow_started", (run) => run && run.id === id && reload());
  ctx.on("workflow_completed", (run) => run && run.id === id && reload());
  ctx.on("resync", reload);
  // Running durations and bars move while nothing else happens.
  const ticker = setInterval(() => {
    if (!finished(data.run.status)) showSteps();
  }, 1000);
  ctx.onLeave(() => clearInterval(ticker));
}

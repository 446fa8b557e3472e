// Schedules: every cron schedule with its expression, time zone, workflow, next fire times
// (in this browser's time and in UTC), last run, concurrency policy and state (active,
// paused at run time, or suspended by its manifest); pause and resume; a form that creates
// a schedule through POST /api/scheduler/jobs, its 422 diagnostics shown inline.

import { html, setHTML, el, badge, relTime, table, href, errorBox, debounce, toast, pageHeader } from "../lib/ui.js";

/** The state of a schedule as one word: suspended (manifest) wins over paused (run time). */
function stateOf(job) {
  if (job.suspend === true) return "suspended";
  if (job.paused) return "paused";
  return "active";
}

/** An instant in this browser's time zone (seconds for expressions with a seconds field). */
function localTime(iso, seconds) {
  const at = new Date(iso);
  return at.toLocaleString([], { weekday: "short", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: seconds ? "2-digit" : undefined });
}

/** An instant in UTC, `2026-05-01 02:00 UTC`. */
function utcTime(iso, seconds) {
  return `${new Date(iso).toISOString().slice(0, seconds ? 19 : 16).replace("T", " ")} UTC`;
}

/** Whether a cron expression has a seconds field (six fields or more). */
function hasSeconds(job) {
  return String(job.schedule || "").trim().split(/\s+/).length >= 6;
}

function nextFires(job) {
  const fires = job.next_fires || (job.next_fire ? [job.next_fire] : []);
  if (!fires.length) {
    const state = stateOf(job);
    return html`<span class="muted">${state === "active" ? "never" : `none while ${state}`}</span>`;
  }
  const [first, ...rest] = fires;
  const seconds = hasSeconds(job);
  const line = (iso) => html`<div class="fire"><span data-local>${localTime(iso, seconds)}</span> · <span class="muted mono" data-utc>${utcTime(iso, seconds)}</span></div>`;
  return html`<div class="next-fires" data-next-fires>${line(first)}<div class="muted">${relTime(first)}</div>${
    rest.length ? html`<details><summary>${rest.length} more</summary>${rest.map(line)}</details>` : ""
  }</div>`;
}

export async function render(ctx) {
  const { api, root } = ctx;
  setHTML(
    root,
    html`${pageHeader("Schedules", { subtitle: html`Cron schedules; times in your time zone (<span class="mono">${Intl.DateTimeFormat().resolvedOptions().timeZone}</span>) and in UTC` })}
    <div class="card" data-section="create" hidden></div>
    <div data-section="list"><p class="loading">Loading…</p></div>`,
  );
  const part = (name) => root.querySelector(`[data-section="${name}"]`);
  const newButton = el("button", { type: "button", class: "primary", "data-action": "new", "aria-expanded": "false", "aria-controls": "schedule-form" }, "New schedule…");
  root.querySelector("[data-actions]").append(newButton);
  let workflows = [];
  let refillWorkflows = null;

  async function load() {
    const [jobs, wfs] = await Promise.all([
      api.get("/api/scheduler/jobs", { signal: ctx.signal }),
      api.get("/api/workflows?limit=10000", { signal: ctx.signal }),
    ]);
    workflows = wfs.workflows || [];
    if (refillWorkflows) refillWorkflows();
    const names = new Map(workflows.map((w) => [w.id, w.name]));
    setHTML(
      part("list"),
      table(
        [
          { label: "Schedule", render: (j) => html`<strong>${j.name}</strong><div class="muted mono">${j.id}</div>` },
          { label: "Cron", render: (j) => html`<code>${j.schedule ?? "—"}</code><div class="muted">${j.timezone}</div>` },
          {
            label: "Workflow",
            render: (j) =>
              j.workflow_id
                ? html`<a href="${href("workflows", j.workflow_id)}">${names.get(j.workflow_id) || j.workflow_id}</a>${names.has(j.workflow_id) ? "" : html` <span class="muted">(not found)</span>`}`
                : "—",
          },
          { label: "Next fires (local · UTC)", render: nextFires },
          {
            label: "Last run",
            render: (j) =>
              j.last_run
                ? html`${badge(j.last_run.status || "unknown")} <a href="${href("runs", j.last_run.id)}">${j.last_run.id}</a><div class="muted">${relTime(j.last_fired)}</div>`
                : html`<span class="muted">none yet</span>`,
          },
          {
            label: "Policy",
            class: "hide-narrow",
            render: (j) =>
              html`<span title="concurrency_policy">${j.concurrency_policy}</span><div class="muted nowrap">catch-up ${j.catchup}</div><div class="muted nowrap">${j.fires} fire${j.fires === 1 ? "" : "s"}${j.skipped ? html`, <span title="${j.last_skip || ""}">${j.skipped} skipped</span>` : ""}</div>`,
          },
          {
            label: "State",
            render: (j) => {
              const state = stateOf(j);
              const note = state === "suspended" ? "suspend: true in its manifest" : state === "paused" ? `paused ${j.paused_at ? new Date(j.paused_at).toLocaleString() : ""}` : "";
              return html`<span title="${note}">${badge(state)}</span>${j.paused && state === "suspended" ? html`<div class="muted">and paused</div>` : ""}${j.status && j.status !== "applied" ? html` ${badge(j.status)}` : ""}`;
            },
          },
          {
            label: "",
            render: (j) =>
              j.paused
                ? html`<button type="button" data-action="resume" data-id="${j.id}" aria-label="Resume ${j.name}">Resume</button>`
                : html`<button type="button" data-action="pause" data-id="${j.id}" aria-label="Pause ${j.name}">Pause</button>`,
          },
        ],
        jobs.jobs || [],
        { empty: "No schedules yet: create one, or add a manifest under schedules/.", rowAttrs: (j) => ({ "data-schedule": j.id, "data-state": stateOf(j) }) },
      ),
    );
  }

  part("list").addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    const { action, id } = button.dataset;
    button.disabled = true;
    try {
      await api.post(`/api/scheduler/jobs/${encodeURIComponent(id)}/${action}`);
      toast(`${action === "pause" ? "Paused" : "Resumed"} ${id}`, "success");
      await load();
    } catch (err) {
      button.disabled = false;
      toast(`Could not ${action} ${id}: ${err.message}`, "error");
    }
  });

  const toggle = (open) => {
    part("create").hidden = !open;
    newButton.setAttribute("aria-expanded", String(open));
    if (open) part("create").querySelector("input").focus();
    else if (part("create").contains(document.activeElement)) newButton.focus();
  };
  refillWorkflows = buildForm(
    ctx,
    part("create"),
    () => workflows,
    async (created) => {
      toast(`Created ${created.id} (${created.file})`, "success");
      toggle(false);
      await load();
    },
    () => toggle(false),
  );
  newButton.addEventListener("click", () => toggle(part("create").hidden));

  await load();
  if (ctx.query.get("new")) toggle(true);
  const soon = debounce(() => load().catch(() => {}), 250);
  for (const type of ["schedule_fired", "workflow_completed", "manifest_applied", "manifest_invalid", "sync_completed", "resync"]) ctx.on(type, soon);
}

/** The Create form: name, cron, workflow (picked from the list), time zone, parameters. */
function buildForm(ctx, container, workflows, done, cancel) {
  const zones = typeof Intl.supportedValuesOf === "function" ? Intl.supportedValuesOf("timeZone") : [];
  const zoneList = el("datalist", { id: "schedule-zones" }, ["UTC", ...zones].map((z) => el("option", { value: z })));
  const select = el("select", { id: "schedule-workflow", name: "workflow", required: true });
  const fill = () => {
    const current = select.value;
    select.replaceChildren(el("option", { value: "" }, "Choose a workflow…"), ...workflows().map((w) => el("option", { value: w.id }, `${w.name} (${w.id})`)));
    select.value = current;
  };
  const row = (id, label, control, hint) =>
    el("div", { class: "field" }, el("label", { for: id }, label), control, hint ? el("span", { class: "hint" }, hint) : null);
  const errors = el("div", { "data-section": "form-errors", "aria-live": "polite" });
  const form = el(
    "form",
    { id: "schedule-form", class: "params schedule-form", novalidate: true },
    el("h2", {}, "New schedule"),
    row("schedule-name", "Name", el("input", { id: "schedule-name", name: "name", required: true, autocomplete: "off", placeholder: "Nightly API tests" }), "its id is sch_ and the name's slug"),
    row("schedule-cron", "Cron", el("input", { id: "schedule-cron", name: "cron", required: true, autocomplete: "off", class: "mono", placeholder: "0 2 * * *" }), "minute hour day month weekday (an optional seconds field first)"),
    row("schedule-workflow", "Workflow", select),
    row("schedule-timezone", "Time zone", el("input", { id: "schedule-timezone", name: "timezone", list: "schedule-zones", autocomplete: "off", placeholder: "the server's default" }), "IANA name, e.g. Europe/Berlin"),
    row("schedule-parameters", "Parameters (JSON)", el("textarea", { id: "schedule-parameters", name: "parameters", rows: 3, class: "mono", placeholder: '{"full_suite": true}' })),
    zoneList,
    errors,
    el("div", { class: "actions" }, el("button", { type: "submit", class: "primary" }, "Create schedule"), el("button", { type: "button", "data-action": "cancel" }, "Cancel")),
  );
  container.append(form);
  fill();
  form.querySelector('[data-action="cancel"]').addEventListener("click", cancel);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    setHTML(errors, "");
    const value = (name) => form.elements[name].value.trim();
    const body = { name: value("name"), schedule: value("cron"), workflow_id: value("workflow") };
    if (value("timezone")) body.timezone = value("timezone");
    const missing = [["name", "Name"], ["cron", "Cron"], ["workflow", "Workflow"]].filter(([n]) => !value(n)).map(([, l]) => l);
    if (missing.length) {
      setHTML(errors, html`<div class="form-error" role="alert">Required: ${missing.join(", ")}</div>`);
      return;
    }
    if (value("parameters")) {
      try {
        body.parameters = JSON.parse(value("parameters"));
      } catch (err) {
        setHTML(errors, html`<div class="form-error" role="alert">Parameters: not JSON (${err.message})</div>`);
        return;
      }
      if (!body.parameters || typeof body.parameters !== "object" || Array.isArray(body.parameters)) {
        setHTML(errors, html`<div class="form-error" role="alert">Parameters: expected a JSON object</div>`);
        return;
      }
    }
    const submit = form.querySelector('button[type="submit"]');
    submit.disabled = true;
    try {
      const created = await ctx.api.post("/api/scheduler/jobs", body);
      form.reset();
      await done(created);
    } catch (err) {
      const diagnostics = (err.details && err.details.diagnostics) || [];
      setHTML(
        errors,
        diagnostics.length
          ? html`<div class="error-box" role="alert" data-diagnostics><strong>${err.message}</strong><ul>${diagnostics.map(
              (d) => html`<li><span class="mono">${d.file}:${d.line}:${d.column}</span> ${d.message}</li>`,
            )}</ul></div>`
          : errorBox(err, "The schedule was not created"),
      );
    } finally {
      submit.disabled = false;
    }
  });
  return fill;
}

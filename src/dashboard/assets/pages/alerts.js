// Alerts: every rule in force with its state, since when, its current value and what its
// condition reads now (each metric's value), severity, labels, silences and the last
// delivery on each channel; one alert (`#/alerts/<id>`) with its transition history; the
// silences, created from here (for an alert or by label) and expired from here. Live: an
// `alert_firing` or `alert_resolved` event updates the page and shows a toast; a new or
// changed alert manifest (`manifest_applied`) shows up without a reload. **New rule**
// (`#/alerts/new`) and **Edit** (`#/alerts/<id>/edit`) open the rule editor
// (`lib/alert-editor.js`), which saves Alert manifests under `alerts/`.

import { html, setHTML, el, badge, relTime, facts, table, href, errorBox, toast, pageHeader, debounce, lineChart } from "../lib/ui.js";
import { seg } from "../lib/api.js";
import { renderAlertEditor } from "../lib/alert-editor.js";

const STATES = ["firing", "pending", "resolved", "inactive"];
const DURATIONS = [
  ["30m", "30 minutes"],
  ["1h", "1 hour"],
  ["2h", "2 hours"],
  ["4h", "4 hours"],
  ["12h", "12 hours"],
  ["1d", "1 day"],
  ["7d", "7 days"],
];
/** How often values are refreshed while the page is open (evaluations send no event). */
const REFRESH_MS = 5000;

export async function render(ctx) {
  if (ctx.params[0] === "new" && ctx.params.length === 1) return renderAlertEditor(ctx, null);
  if (ctx.params[0] && ctx.params[1] === "edit") return renderAlertEditor(ctx, ctx.params[0]);
  if (ctx.params[0]) return detail(ctx, ctx.params[0]);
  return list(ctx);
}

const num = (v) => (v === null || v === undefined ? "—" : Number.isInteger(v) ? String(v) : Number(v).toFixed(Math.abs(v) < 10 ? 3 : 1));

/** The state badge, with `silenced`, `no data` and `disabled` beside it. */
function stateBadges(a) {
  return html`${badge(a.state)}${a.silenced ? html` <span class="badge s-silenced" title="${(a.silenced_by || []).join(", ")}">silenced</span>` : ""}${a.no_data ? html` <span class="badge s-nodata" title="A metric of the condition has no value yet">no data</span>` : ""}${a.enabled === false ? html` <span class="badge s-disabled">disabled</span>` : ""}`;
}

/** The condition and what each of its metrics reads now. */
function conditionNow(a) {
  const values = Object.entries(a.values || {});
  return html`<code class="condition">${a.condition}</code>${values.length ? html`<ul class="metric-values">${values.map(
    ([metric, value]) => html`<li data-metric="${metric}"><code>${metric}</code> = <strong>${value === null ? "no data" : num(value)}</strong></li>`,
  )}</ul>` : ""}`;
}

function labelChips(labels, { all = true } = {}) {
  // The list leaves out what its own columns show: the name and the severity.
  const entries = Object.entries(labels || {}).filter(([k]) => all || (k !== "alertname" && k !== "severity"));
  if (!entries.length) return html`<span class="muted">—</span>`;
  return html`<span class="chips">${entries.map(([k, v]) => html`<span class="chip">${k}=${v}</span>`)}</span>`;
}

/** The last delivery on each channel: delivered, failed (with the error) or in flight. */
function deliveries(a) {
  const channels = Object.entries(a.notifications || {});
  if (!channels.length) {
    const last = a.last_notification;
    if (last && last.muted_by && last.muted_by.length) return html`<span class="muted">muted by ${last.muted_by.join(", ")}</span>`;
    return html`<span class="muted">${(a.actions || []).length ? "none yet" : "no channels"}</span>`;
  }
  return html`<ul class="deliveries">${channels.map(([name, d]) => {
    const o = d.outcome;
    const state = !o ? "sending" : o.delivered ? "delivered" : "failed";
    return html`<li data-channel="${name}" data-delivery="${state}"><strong>${name}</strong> ${badge(state === "delivered" ? "ok" : state === "failed" ? "failed" : "running", state)} <span class="muted">${d.status}, ${relTime(o ? o.at : d.queued_at)}${o ? ` · ${o.attempts} attempt${o.attempts === 1 ? "" : "s"}` : ""}</span>${o && o.error ? html`<div class="delivery-error">${o.error}</div>` : ""}</li>`;
  })}</ul>`;
}

function matchersText(s) {
  return (s.matchers || []).map((m) => `${m.name}=${m.value}`).join(", ");
}

/** The silences table, with Expire buttons for those still muting or to come. */
function silencesTable(silences, onExpire) {
  const wrap = el("div");
  setHTML(
    wrap,
    table(
      [
        { label: "Silence", render: (s) => html`<span class="mono">${s.id}</span>` },
        { label: "Matches", render: (s) => html`<code>${matchersText(s)}</code>${s.alerts && s.alerts.length ? html`<div class="muted">${s.alerts.join(", ")}</div>` : html`<div class="muted">no alert in force</div>`}` },
        { label: "State", render: (s) => badge(s.state === "active" ? "silenced" : s.state, s.state) },
        { label: "Ends", render: (s) => relTime(s.ends_at) },
        { label: "Comment", render: (s) => html`${s.comment}<div class="muted">by ${s.created_by}</div>` },
        { label: "", render: (s) => (s.state === "expired" ? "" : html`<button type="button" class="danger" data-expire="${s.id}">Expire</button>`) },
      ],
      silences,
      { empty: "No silences.", rowAttrs: (s) => ({ "data-silence": s.id, "data-state": s.state }) },
    ),
  );
  wrap.querySelectorAll("[data-expire]").forEach((button) => button.addEventListener("click", () => onExpire(button.dataset.expire, button)));
  return wrap;
}

/**
 * The silence form: for one alert or by labels, for a duration, with a comment. The API
 * decides what is valid; its 400 message is shown in the form.
 */
function silenceForm(ctx, rules, { alert, onDone }) {
  const form = el("form", { class: "card silence-form", "data-form": "silence", "aria-labelledby": "silence-title" });
  setHTML(
    form,
    html`<h2 id="silence-title">New silence</h2>
    <fieldset class="choice"><legend>Mute</legend>
      <label><input type="radio" name="target" value="alert" ${alert || rules.length ? html`checked` : ""}> One alert</label>
      <label><input type="radio" name="target" value="labels" ${alert || rules.length ? "" : html`checked`}> Alerts with labels</label>
    </fieldset>
    <div class="field" data-target="alert"><label for="silence-alert">Alert</label>
      <select id="silence-alert" name="alert">${rules.map((r) => html`<option value="${r.id}" ${r.id === alert ? html`selected` : ""}>${r.name} (${r.id})</option>`)}</select></div>
    <div class="field" data-target="labels" hidden><label for="silence-labels">Labels</label>
      <input id="silence-labels" name="labels" placeholder="team=qa, severity=critical" autocomplete="off">
      <span class="hint">name=value pairs, comma separated; every one must match (alertname, alert_id, severity or an alert's label)</span></div>
    <div class="field"><label for="silence-duration">For</label>
      <select id="silence-duration" name="duration">${DURATIONS.map(([v, label]) => html`<option value="${v}" ${v === "2h" ? html`selected` : ""}>${label}</option>`)}<option value="custom">Other…</option></select>
      <input name="custom" aria-label="Other duration" placeholder="90m, 3h, 2d" hidden></div>
    <div class="field"><label for="silence-comment">Comment <span class="required" aria-hidden="true">*</span></label>
      <textarea id="silence-comment" name="comment" aria-required="true" placeholder="Why: known flake, maintenance…"></textarea></div>
    <div class="form-error" data-form-error role="alert"></div>
    <div class="actions"><button type="submit" class="primary">Create silence</button> <button type="button" data-cancel>Cancel</button></div>`,
  );
  const showTarget = () => {
    const target = form.elements.target.value;
    form.querySelectorAll("[data-target]").forEach((node) => (node.hidden = node.dataset.target !== target));
  };
  showTarget();
  form.addEventListener("change", (event) => {
    if (event.target.name === "target") showTarget();
    if (event.target.name === "duration") {
      form.elements.custom.hidden = form.elements.duration.value !== "custom";
      if (!form.elements.custom.hidden) form.elements.custom.focus();
    }
  });
  form.querySelector("[data-cancel]").addEventListener("click", () => onDone(null));
  const error = form.querySelector("[data-form-error]");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    setHTML(error, "");
    const body = { comment: form.elements.comment.value.trim() };
    const duration = form.elements.duration.value === "custom" ? form.elements.custom.value.trim() : form.elements.duration.value;
    if (duration) body.duration = duration;
    if (form.elements.target.value === "alert") {
      body.alert = form.elements.alert.value;
    } else {
      const labels = {};
      for (const pair of form.elements.labels.value.split(",").map((p) => p.trim()).filter(Boolean)) {
        const at = pair.indexOf("=");
        if (at <= 0) {
          setHTML(error, html`<strong>Labels:</strong> \`${pair}\` is not name=value`);
          form.elements.labels.focus();
          return;
        }
        labels[pair.slice(0, at).trim()] = pair.slice(at + 1).trim();
      }
      body.labels = labels;
    }
    const submit = form.querySelector("button[type=submit]");
    submit.disabled = true;
    try {
      const silence = await ctx.api.post("/api/silences", body);
      toast(`Silence ${silence.id} created`, "success");
      onDone(silence);
    } catch (err) {
      if (err.status === 400 || err.status === 422) {
        const field = err.details && err.details.field;
        setHTML(error, html`${field ? html`<strong>${field}:</strong> ` : ""}${err.message}`);
        const control = field && form.elements[field === "matchers" ? (form.elements.target.value === "alert" ? "alert" : "labels") : field === "ends_at" ? "duration" : field];
        if (control && control.focus) control.focus();
      } else {
        setHTML(error, errorBox(err, "The silence was not created"));
      }
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

async function expire(ctx, id, button) {
  button.disabled = true;
  try {
    await ctx.api.del(`/api/silences/${seg(id)}`);
    toast(`Silence ${id} expired`, "success");
  } catch (err) {
    toast(`Could not expire ${id}: ${err.message}`, "error");
    button.disabled = false;
    throw err;
  }
}

/** Toasts for alerts that fire or resolve while a page of this module is open. */
function announce(ctx, onChange) {
  ctx.on("alert_firing", (a) => {
    toast(`Alert firing: ${a.name}${a.value !== null && a.value !== undefined ? ` (${num(a.value)})` : ""}`, "error");
    onChange();
  });
  ctx.on("alert_resolved", (a) => {
    toast(`Alert resolved: ${a.name}`, "success");
    onChange();
  });
}

async function list(ctx) {
  const { api, root } = ctx;
  setHTML(
    root,
    html`${pageHeader("Alerts", { subtitle: "Rules in force, what they evaluate now, and silences" })}
    <div class="alert-summary" data-section="summary"></div>
    <div data-section="form"></div>
    <section><h2>Rules</h2><div data-section="alerts"><p class="loading">Loading…</p></div></section>
    <section><h2>Silences</h2><div data-section="silences"></div></section>`,
  );
  const part = (name) => root.querySelector(`[data-section="${name}"]`);
  const newSilence = el("button", { type: "button", "data-action": "new-silence" }, "New silence");
  const newRule = el("a", { class: "button primary", href: "#/alerts/new", "data-action": "new-alert" }, "New rule");
  root.querySelector("[data-actions]").append(newRule, newSilence);
  let rules = [];

  function openForm(alert) {
    const holder = part("form");
    holder.replaceChildren(
      silenceForm(ctx, rules, {
        alert,
        onDone: (created) => {
          holder.replaceChildren();
          newSilence.focus();
          if (created) refresh();
        },
      }),
    );
    holder.querySelector("textarea").focus();
  }
  newSilence.addEventListener("click", () => openForm());

  async function loadAlerts() {
    const body = await api.get("/api/alerts", { signal: ctx.signal });
    rules = body.alerts || [];
    const order = (a) => STATES.indexOf(a.state);
    const sorted = [...rules].sort((a, b) => order(a) - order(b) || a.name.localeCompare(b.name));
    const counts = Object.fromEntries(STATES.map((s) => [s, rules.filter((a) => a.state === s).length]));
    setHTML(
      part("summary"),
      html`<div class="grid cols-4">${STATES.map((s) => html`<div class="card stat" data-count="${s}"><span class="label">${s}</span><span class="value">${counts[s]}</span></div>`)}</div>`,
    );
    setHTML(
      part("alerts"),
      table(
        [
          { label: "Alert", render: (a) => html`<a href="${href("alerts", a.id)}">${a.name}</a><div class="muted mono">${a.id}</div>` },
          { label: "State", render: (a) => html`${stateBadges(a)}<div class="muted">since ${relTime(a.since)}</div>` },
          { label: "Severity", render: (a) => badge(a.severity) },
          { label: "Value", render: (a) => num(a.value), num: true },
          { label: "Evaluates", render: conditionNow, class: "wide" },
          { label: "Labels", render: (a) => labelChips(a.labels, { all: false }), class: "hide-narrow" },
          { label: "Last delivery", render: deliveries },
          { label: "", render: (a) => html`<span class="row-actions"><a class="button" href="${href("alerts", a.id, "edit")}" data-edit-alert="${a.id}" aria-label="Edit ${a.name}">Edit</a> <button type="button" data-silence-alert="${a.id}" aria-label="Silence ${a.name}">Silence</button></span>` },
        ],
        sorted,
        { empty: "No alert rules: create one with New rule, or add one under alerts/ in the project.", rowAttrs: (a) => ({ "data-alert": a.id, "data-state": a.state }) },
      ),
    );
    part("alerts").querySelectorAll("[data-silence-alert]").forEach((b) => b.addEventListener("click", () => openForm(b.dataset.silenceAlert)));
  }

  async function loadSilences() {
    const body = await api.get("/api/silences", { signal: ctx.signal });
    const silences = [...(body.silences || [])].reverse();
    part("silences").replaceChildren(
      silencesTable(silences, (id, button) => expire(ctx, id, button).then(refresh, () => {})),
    );
  }

  const refresh = () => Promise.all([loadAlerts(), loadSilences()]).catch((err) => {
    if (err.name !== "AbortError") toast(`Alerts not refreshed: ${err.message}`, "error");
  });
  await Promise.all([loadAlerts(), loadSilences()]);

  const soon = debounce(refresh, 150);
  announce(ctx, soon);
  ctx.on("manifest_applied", soon);
  ctx.on("resync", soon);
  const timer = setInterval(() => {
    // A form being filled in is not disturbed: the tables around it are redrawn only, and
    // not while a control in them has the keyboard focus (redrawing would drop it).
    if (!document.hidden && !focusIn(part("alerts"), part("silences"))) refresh();
  }, REFRESH_MS);
  ctx.onLeave(() => {
    clearInterval(timer);
    soon.cancel();
  });
}

/** Whether the keyboard focus is inside one of `nodes`. */
function focusIn(...nodes) {
  const active = document.activeElement;
  return Boolean(active && active !== document.body && nodes.some((n) => n && n.contains(active)));
}

async function detail(ctx, id) {
  const { api, root } = ctx;
  const opts = { signal: ctx.signal };
  setHTML(
    root,
    html`${pageHeader(id, { crumb: html`<a href="#/alerts">Alerts</a> /` })}
    <div data-section="form"></div>
    <div class="grid cols-2">
      <section class="card" data-section="facts"></section>
      <section class="card"><h2>Evaluates now</h2><div data-section="now"></div>
        <h3>Deliveries</h3><div data-section="deliveries"></div></section>
    </div>
    <section><h2>Value at each transition</h2><div class="card" data-section="chart"></div></section>
    <section><h2>History</h2><div data-section="history"></div></section>
    <section><h2>Silences matching it</h2><div data-section="silences"></div></section>`,
  );
  const part = (name) => root.querySelector(`[data-section="${name}"]`);
  const silenceButton = el("button", { type: "button", class: "primary", "data-action": "new-silence" }, "Silence this alert");
  const editButton = el("a", { class: "button", href: href("alerts", id, "edit"), "data-action": "edit" }, "Edit rule");
  root.querySelector("[data-actions]").append(editButton, silenceButton);
  let alert = null;

  async function load() {
    alert = await api.get(`/api/alerts/${seg(id)}`, opts);
    ctx.setTitle(alert.name);
    root.querySelector(".page-header h1").textContent = alert.name;
    setHTML(
      part("facts"),
      html`<h2>Rule</h2>${facts([
        ["State", html`<span data-alert-state="${alert.state}">${stateBadges(alert)}</span>`],
        ["Since", relTime(alert.since)],
        ["Active since", relTime(alert.active_at)],
        ["Fired", relTime(alert.fired_at)],
        ["Resolved", relTime(alert.resolved_at)],
        ["Severity", badge(alert.severity)],
        ["For", alert.duration],
        ["Labels", labelChips(alert.labels)],
        ["Annotations", Object.keys(alert.annotations || {}).length ? html`<dl class="facts">${Object.entries(alert.annotations).map(([k, v]) => html`<dt>${k}</dt><dd>${v}</dd>`)}</dl>` : null],
        ["Channels", (alert.actions || []).join(", ") || "none"],
        ["Repeat every", alert.repeat_interval],
        ["Send resolved", alert.send_resolved ? "yes" : "no"],
        ["Last evaluated", relTime(alert.last_evaluation)],
        ["Silenced by", (alert.silenced_by || []).join(", ") || null],
        ["Manifest", alert.source_file ? html`<code>${alert.source_file}</code>` : null],
        ["Fingerprint", html`<code>${alert.fingerprint}</code>`],
      ])}${alert.description ? html`<p>${alert.description}</p>` : ""}`,
    );
    setHTML(part("now"), html`${conditionNow(alert)}<p>Value: <strong data-value>${num(alert.value)}</strong></p>`);
    setHTML(part("deliveries"), deliveries(alert));
    const history = [...(alert.history || [])];
    const numeric = history.filter((h) => h.value !== null && h.value !== undefined);
    setHTML(
      part("chart"),
      numeric.length ? lineChart([{ name: "Value", points: numeric.map((h) => [new Date(h.at).getTime(), h.value]) }], { label: "The value at each transition", format: num, area: false }) : html`<p class="empty">No value recorded yet.</p>`,
    );
    setHTML(
      part("history"),
      table(
        [
          { label: "When", render: (h) => relTime(h.at) },
          { label: "From", render: (h) => badge(h.from) },
          { label: "To", render: (h) => badge(h.to) },
          { label: "Value", render: (h) => num(h.value), num: true },
          { label: "Note", render: (h) => h.note || "" },
        ],
        history.reverse(),
        { empty: "No transition yet.", rowAttrs: (h) => ({ "data-transition": `${h.from}-${h.to}` }) },
      ),
    );
    const body = await api.get("/api/silences", opts);
    const mine = (body.silences || []).filter((s) => (s.alerts || []).includes(alert.id)).reverse();
    part("silences").replaceChildren(silencesTable(mine, (sid, button) => expire(ctx, sid, button).then(refresh, () => {})));
  }
  const refresh = () => load().catch((err) => {
    if (err.name !== "AbortError") toast(`Alert not refreshed: ${err.message}`, "error");
  });

  try {
    await load();
  } catch (err) {
    if (err.status === 404) {
      setHTML(root, html`${pageHeader("Alert not found", { crumb: html`<a href="#/alerts">Alerts</a> /` })}${errorBox(err, `No alert ${id}`)}`);
      return;
    }
    throw err;
  }
  silenceButton.addEventListener("click", async () => {
    let alerts;
    try {
      ({ alerts } = await api.get("/api/alerts", opts));
    } catch (err) {
      if (err.name !== "AbortError") setHTML(part("form"), errorBox(err, "The silence form cannot be shown"));
      return;
    }
    part("form").replaceChildren(
      silenceForm(ctx, alerts, {
        alert: alert.id,
        onDone: (created) => {
          part("form").replaceChildren();
          silenceButton.focus();
          if (created) refresh();
        },
      }),
    );
    part("form").querySelector("textarea").focus();
  });
  const soon = debounce(refresh, 150);
  announce(ctx, soon);
  ctx.on("manifest_applied", soon);
  ctx.on("resync", soon);
  const timer = setInterval(() => !document.hidden && !focusIn(part("silences")) && refresh(), REFRESH_MS);
  ctx.onLeave(() => {
    clearInterval(timer);
    soon.cancel();
  });
}

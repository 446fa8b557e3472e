// The dashboard's shell: navigation, the hash router, the header (source, revision, sync
// status, connection), the theme, and the context each page module is rendered with.
//
// A page is `pages/<id>.js` exporting `render(ctx)`; the server lists the modules it embeds
// in the `dashboard-pages` meta tag, and pages listed in NAV without a module show a
// "not built yet" placeholder.

import * as api from "./lib/api.js";
import * as live from "./lib/live.js";
import { html, setHTML, errorBox, relTime, debounce } from "./lib/ui.js";

/** Every page of the dashboard, in navigation order. */
export const NAV = [
  { id: "overview", title: "Overview" },
  { id: "workflows", title: "Workflows" },
  { id: "runs", title: "Runs" },
  { id: "tests", title: "Tests" },
  { id: "schedules", title: "Schedules" },
  { id: "agents", title: "Agents" },
  { id: "workers", title: "Workers" },
  { id: "monitoring", title: "Monitoring" },
  { id: "alerts", title: "Alerts" },
  { id: "reports", title: "Reports and analytics" },
  { id: "manifests", title: "Manifests" },
  { id: "dashboards", title: "Custom dashboards" },
  { id: "editor", title: "Workflow editor", hidden: true },
];

const built = new Set(
  (document.querySelector('meta[name="dashboard-pages"]')?.content || "").split(",").filter(Boolean),
);
const main = document.getElementById("main");
const modules = new Map();
let current = null; // {controller, cleanups}

// ---- theme -------------------------------------------------------------------------------

const THEME_KEY = "orchestrator.theme";
const dark = window.matchMedia("(prefers-color-scheme: dark)");

function storedTheme() {
  try {
    return localStorage.getItem(THEME_KEY);
  } catch {
    return null;
  }
}

function applyTheme() {
  const theme = storedTheme() || (dark.matches ? "dark" : "light");
  document.documentElement.dataset.theme = theme;
  const toggle = document.getElementById("theme-toggle");
  toggle.setAttribute("aria-pressed", String(theme === "dark"));
  toggle.querySelector(".theme-label").textContent = theme === "dark" ? "Light theme" : "Dark theme";
}

document.getElementById("theme-toggle").addEventListener("click", () => {
  const next = document.documentElement.dataset.theme === "dark" ? "light" : "dark";
  try {
    localStorage.setItem(THEME_KEY, next);
  } catch {
    /* not kept */
  }
  applyTheme();
});
dark.addEventListener("change", applyTheme);
applyTheme();

// ---- navigation --------------------------------------------------------------------------

function renderNav() {
  const list = document.getElementById("nav-list");
  setHTML(
    list,
    html`${NAV.filter((p) => !p.hidden).map(
      (p) => html`<li><a href="#/${p.id}" data-page="${p.id}">${p.title}${built.has(p.id) ? "" : html`<span class="soon">soon</span>`}</a>${p.id === "dashboards" ? html`<ul class="nav-sub" id="nav-dashboards" aria-label="Saved dashboards"></ul>` : ""}</li>`,
    )}`,
  );
}

/** Lists each saved custom dashboard under "Custom dashboards" in the navigation. */
async function refreshDashboardNav() {
  const list = document.getElementById("nav-dashboards");
  if (!list || !built.has("dashboards")) return;
  try {
    const { dashboards } = await api.get("/api/dashboards");
    setHTML(list, html`${dashboards.map((d) => html`<li><a href="#/dashboards/${encodeURIComponent(d.id)}" data-dashboard="${d.id}">${d.name}</a></li>`)}`);
  } catch {
    /* the list stays as it was; the next manifest event tries again */
  }
}

/** The route of a hash: `#/runs/ID?x=1` → {page: "runs", params: ["ID"], query}. */
export function parseHash(hash) {
  const text = hash.replace(/^#\/?/, "");
  const [path, search = ""] = text.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { page: parts[0] || "overview", params: parts.slice(1), query: new URLSearchParams(search) };
}

function leave() {
  if (!current) return;
  current.controller.abort();
  for (const fn of current.cleanups.splice(0)) {
    try {
      fn();
    } catch (err) {
      console.error("a page's cleanup failed", err);
    }
  }
  current = null;
}

async function loadModule(id) {
  if (!modules.has(id)) modules.set(id, import(`./pages/${id}.js`));
  return modules.get(id);
}

function placeholder(entry) {
  return html`<div class="page-header"><div><h1>${entry.title}</h1></div></div>
    <div class="notice placeholder" data-placeholder="${entry.id}"><p><strong>Not built yet.</strong>
    The ${entry.title} page is coming. Meanwhile the same information is in the REST API
    (<a href="/api">/api</a> lists the routes) and the command line.</p></div>`;
}

async function route() {
  if (location.hash && !location.hash.startsWith("#/")) return; // an in-page anchor
  const { page, params, query } = parseHash(location.hash);
  leave();
  const controller = new AbortController();
  const cleanups = [];
  current = { controller, cleanups };
  const entry = NAV.find((p) => p.id === page);
  for (const link of document.querySelectorAll("#nav-list a")) {
    if (link.dataset.page === page) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const root = document.createElement("section");
  root.className = "page";
  root.dataset.page = page;
  main.replaceChildren(root);
  document.title = `${entry ? entry.title : "Not found"} · Orchestrator`;
  if (!entry) {
    setHTML(root, html`<h1>Not found</h1>${errorBox({ code: "not_found", message: `There is no page “${page}”.` }, "No such page")}`);
    return;
  }
  if (!built.has(page)) {
    setHTML(root, placeholder(entry));
    root.dataset.ready = "true";
    return;
  }
  const ctx = {
    root,
    page,
    params,
    query,
    signal: controller.signal,
    api,
    live,
    /** Listens to a /ws event type until the page is left. */
    on(type, fn) {
      cleanups.push(live.on(type, fn));
    },
    /** Asks for an opt-in event kind (`run_log`) until the page is left. */
    want(kind) {
      cleanups.push(live.want(kind));
    },
    /** Runs `fn` when the page is left. */
    onLeave(fn) {
      cleanups.push(fn);
    },
    /** Whether the page was left (its work should stop). */
    get left() {
      return controller.signal.aborted;
    },
    setTitle(text) {
      document.title = `${text} · Orchestrator`;
    },
    navigate,
    /** Renders the page again from scratch. */
    refresh: () => route(),
  };
  setHTML(root, html`<p class="loading">Loading ${entry.title}…</p>`);
  try {
    const module = await loadModule(page);
    if (controller.signal.aborted) return;
    await module.render(ctx);
    if (!controller.signal.aborted) root.dataset.ready = "true";
  } catch (err) {
    if (controller.signal.aborted || (err && err.name === "AbortError")) return;
    if (!(err instanceof api.ApiError)) console.error(`the ${page} page failed`, err);
    setHTML(root, html`<h1>${entry.title}</h1>${errorBox(err, `The ${entry.title} page could not be shown`)}`);
    root.dataset.ready = "error";
  }
}

/** Goes to a hash route (`#/runs/ID`). */
export function navigate(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

// ---- header ------------------------------------------------------------------------------

async function refreshSource() {
  const box = document.getElementById("source-status");
  try {
    const status = await api.get("/api/status");
    const source = status.source || {};
    const stored = source.status || {};
    const revision = source.revision || stored.last_applied_revision || stored.last_attempted_revision;
    const short = revision ? String(revision).slice(0, 12) : "—";
    const errors = stored.errors || 0;
    const fetchError = source.last_fetch_error;
    const sync = fetchError
      ? html`<span class="badge s-failed" title="${fetchError}">fetch failing</span>`
      : errors
        ? html`<span class="badge s-invalid">${errors} invalid</span>`
        : stored.last_attempt_at
          ? html`<span class="badge s-succeeded">in sync</span>`
          : html`<span class="badge s-pending">not synced</span>`;
    const where = source.kind === "git" ? html`git <strong>${source.url}</strong>${source.branch ? html` @ ${source.branch}` : ""}` : html`<strong>${(source.paths || []).join(", ") || "manifest directories"}</strong>`;
    setHTML(
      box,
      html`<span data-source-kind="${source.kind || ""}">${where}</span> · revision <code title="${revision || ""}" data-revision>${short}</code> ${sync}
      ${stored.last_attempt_at ? html`<span class="hide-narrow">· synced ${relTime(stored.last_attempt_at)}</span>` : ""}`,
    );
  } catch (err) {
    setHTML(box, html`<span class="badge s-failed">status unavailable</span> ${err.message || String(err)}`);
  }
}

function showConnection(state) {
  const box = document.getElementById("connection");
  const labels = {
    idle: "Offline",
    connecting: "Connecting",
    live: "Live",
    reconnecting: "Reconnecting",
    "needs-token": "Needs API token",
  };
  box.dataset.state = state;
  box.querySelector(".label").textContent = labels[state] || state;
  document.getElementById("token-button").hidden = state !== "needs-token";
}

document.getElementById("token-button").addEventListener("click", async () => {
  if (await api.askToken()) live.reconnect();
});
document.getElementById("skip-link").addEventListener("click", (event) => {
  event.preventDefault();
  main.focus();
});

// ---- start -------------------------------------------------------------------------------

api.takeTokenFromAddress();
renderNav();
live.onState(showConnection);
const refreshSourceSoon = debounce(refreshSource, 300);
for (const type of ["sync_completed", "manifest_applied", "manifest_invalid", "resync"]) live.on(type, refreshSourceSoon);
const refreshDashboardNavSoon = debounce(refreshDashboardNav, 300);
for (const type of ["manifest_applied", "resync"]) live.on(type, refreshDashboardNavSoon);
refreshDashboardNav();
window.addEventListener("hashchange", route);
live.start();
refreshSource();
route();

// Manifests: every object in the store with its sync status, source file, revision, last
// apply and diagnostics (file:line:column); the source and its last sync; "Sync now"
// (POST /api/sync); and what apply would change (POST /api/diff) as unified diffs of the
// specs, added and removed lines coloured. Live on manifest_applied, manifest_invalid and
// sync_completed.

import { html, setHTML, el, badge, relTime, table, facts, errorBox, debounce, toast, pageHeader } from "../lib/ui.js";
import { toYaml } from "../lib/yaml.js";

/** `file:line:column` of a diagnostic (as much of it as is known). */
function where(d) {
  return [d.file, d.line, d.column].filter((x) => x !== undefined && x !== null && x !== "").join(":");
}

function diagnosticList(diagnostics) {
  return html`<ul class="diagnostics">${diagnostics.map(
    (d) => html`<li data-diagnostic data-severity="${d.severity || "error"}">${badge(d.severity === "warning" ? "warning" : "error", d.severity || "error")} <span class="mono">${where(d)}</span> ${d.message}${d.pointer ? html` <span class="muted mono">${d.pointer}</span>` : ""}</li>`,
  )}</ul>`;
}

/** The lines of two texts as a unified diff: [{op: " " | "-" | "+", text}] in hunks. */
export function lineDiff(before, after, context = 3) {
  const a = before ? before.replace(/\n$/, "").split("\n") : [];
  const b = after ? after.replace(/\n$/, "").split("\n") : [];
  const n = a.length;
  const m = b.length;
  // The table below is n × m: past a few million cells (specs of thousands of lines) the
  // whole old text is shown removed and the new one added, rather than stalling the page.
  if (n * m > 4_000_000) {
    const lines = [...a.map((text, k) => ({ op: "-", text, old: k + 1 })), ...b.map((text, k) => ({ op: "+", text, new: k + 1 }))];
    return lines.length ? [{ lines, header: `@@ -${n ? 1 : 0},${n} +${m ? 1 : 0},${m} @@` }] : [];
  }
  // Longest common subsequence, from the ends.
  const lcs = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) for (let j = m - 1; j >= 0; j--) lcs[i][j] = a[i] === b[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
  const ops = [];
  let i = 0;
  let j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && a[i] === b[j]) ops.push({ op: " ", text: a[i++], old: i, new: ++j });
    else if (i < n && (j === m || lcs[i + 1][j] >= lcs[i][j + 1])) ops.push({ op: "-", text: a[i++], old: i });
    else ops.push({ op: "+", text: b[j++], new: j });
  }
  // Hunks: changed lines with `context` lines around them.
  const keep = ops.map(() => false);
  ops.forEach((o, k) => {
    if (o.op !== " ") for (let c = Math.max(0, k - context); c <= Math.min(ops.length - 1, k + context); c++) keep[c] = true;
  });
  const hunks = [];
  let current = null;
  ops.forEach((o, k) => {
    if (!keep[k]) {
      current = null;
      return;
    }
    if (!current) {
      current = { lines: [] };
      hunks.push(current);
    }
    current.lines.push(o);
  });
  for (const hunk of hunks) {
    const olds = hunk.lines.filter((l) => l.op !== "+");
    const news = hunk.lines.filter((l) => l.op !== "-");
    const oldStart = olds.length ? olds[0].old : 0;
    const newStart = news.length ? news[0].new : 0;
    hunk.header = `@@ -${oldStart},${olds.length} +${newStart},${news.length} @@`;
  }
  return hunks;
}

function unified(change, kind) {
  const before = change.before ? toYaml(change.before) : "";
  const after = change.after ? toYaml(change.after) : "";
  const hunks = lineDiff(before, after);
  const label = `${change.kind} ${change.id}`;
  const cls = { " ": "ctx", "-": "del", "+": "add" };
  return html`<div class="diff-file" data-change="${kind}" data-object="${change.kind}/${change.id}">
    <div class="diff-head">${badge(kind === "create" ? "succeeded" : kind === "delete" ? "failed" : "running", kind)} <strong>${label}</strong> <span class="muted mono">${change.file || ""}</span></div>
    <pre class="diff" aria-label="Changes to ${label}"><span class="diff-meta">--- ${change.before ? `${label} (in force)` : "/dev/null"}</span><span class="diff-meta">+++ ${change.after ? `${label} (${change.file || "manifest"})` : "/dev/null"}</span>${hunks.map(
      (h) => html`<span class="diff-hunk">${h.header}</span>${h.lines.map((l) => html`<span class="diff-${cls[l.op]}" data-op="${l.op}">${l.op}${l.text}</span>`)}`,
    )}</pre></div>`;
}

function renderDiff(answer) {
  const plan = answer.plan || {};
  const changes = [
    ...(plan.create || []).map((c) => unified(c, "create")),
    ...(plan.update || []).map((c) => unified(c, "update")),
    ...(plan.delete || []).map((c) => unified(c, "delete")),
  ];
  const report = answer.report || {};
  const summary = `${(plan.create || []).length} to create, ${(plan.update || []).length} to update, ${(plan.delete || []).length} to delete (with prune), ${(plan.unchanged || []).length} unchanged, ${(plan.invalid || []).length} invalid`;
  return html`<div class="card" data-diff>
    <h2>What apply would change</h2>
    <p class="muted">${summary}${report.revision ? html` · revision <code>${report.revision}</code>` : ""}</p>
    ${answer.diagnostics && answer.diagnostics.length ? diagnosticList(answer.diagnostics) : ""}
    ${changes.length ? changes : html`<p class="empty" data-no-changes>No changes: the store matches the manifests.</p>`}
  </div>`;
}

export async function render(ctx) {
  const { api, root } = ctx;
  setHTML(
    root,
    html`${pageHeader("Manifests", { subtitle: "Objects in the store, their sync status and diagnostics" })}
    <div class="card" data-section="source"></div>
    <div class="filters" data-section="filters"></div>
    <div data-section="diagnostics"></div>
    <div data-section="list"><p class="loading">Loading…</p></div>
    <div data-section="diff"></div>`,
  );
  const part = (name) => root.querySelector(`[data-section="${name}"]`);
  const opts = { signal: ctx.signal };
  const syncButton = el("button", { type: "button", class: "primary", "data-action": "sync" }, "Sync now");
  const diffButton = el("button", { type: "button", "data-action": "diff" }, "Show diff");
  root.querySelector("[data-actions]").append(diffButton, syncButton);
  let kind = ctx.query.get("kind") || "";
  const kindSelect = el("select", { id: "manifest-kind", "data-filter": "kind" });
  part("filters").append(el("label", { for: "manifest-kind" }, "Kind "), kindSelect);
  kindSelect.addEventListener("change", () => {
    kind = kindSelect.value;
    history.replaceState(null, "", `#/manifests${kind ? `?kind=${encodeURIComponent(kind)}` : ""}`);
    draw();
  });
  let latest = null;

  function draw() {
    if (!latest) return;
    const { source, objects } = latest;
    const kinds = [...new Set(objects.map((o) => o.kind))].sort();
    kindSelect.replaceChildren(el("option", { value: "" }, `All kinds (${objects.length})`), ...kinds.map((k) => el("option", { value: k }, `${k} (${objects.filter((o) => o.kind === k).length})`)));
    kindSelect.value = kinds.includes(kind) ? kind : "";
    setHTML(
      part("source"),
      facts([
        ["Source", html`<code>${source.source || "—"}</code>${source.url ? html` <span class="mono">${source.url}</span>` : ""}${source.branch ? html` <span class="muted">branch ${source.branch}</span>` : ""}`],
        ["Applied revision", html`<code data-revision>${source.last_applied_revision || "—"}</code>`],
        ["Last attempt", html`<code>${source.last_attempted_revision || "—"}</code> ${relTime(source.last_attempt_at)}`],
        ["Errors", source.errors ? html`${badge("failed", String(source.errors))}` : "0"],
        source.message ? ["Message", source.message] : null,
      ]),
    );
    const shown = objects.filter((o) => !kind || o.kind === kind);
    const problems = shown.filter((o) => o.diagnostics && o.diagnostics.length);
    setHTML(
      part("diagnostics"),
      problems.length
        ? html`<div class="error-box" role="alert" data-problems><strong>${problems.length} object(s) with problems</strong> (a last good version, when there is one, stays in force)${diagnosticList(problems.flatMap((o) => o.diagnostics))}</div>`
        : "",
    );
    setHTML(
      part("list"),
      table(
        [
          { label: "Kind", render: (o) => o.kind },
          { label: "Object", render: (o) => html`<strong>${o.name}</strong><div class="muted mono">${o.id}</div>` },
          { label: "Status", render: (o) => badge(o.status) },
          { label: "File", render: (o) => html`<span class="mono">${o.source_file || "—"}</span>` },
          { label: "Revision", render: (o) => html`<code>${o.applied_revision || "—"}</code>${o.attempted_revision && o.attempted_revision !== o.applied_revision ? html`<div class="muted">tried <code>${o.attempted_revision}</code></div>` : ""}`, class: "hide-narrow" },
          { label: "Generation", render: (o) => String(o.generation ?? "—"), num: true, class: "hide-narrow" },
          { label: "Applied", render: (o) => relTime(o.applied_at) },
          { label: "Diagnostics", render: (o) => (o.diagnostics && o.diagnostics.length ? diagnosticList(o.diagnostics) : html`<span class="muted">none</span>`) },
        ],
        shown,
        { empty: kind ? `No ${kind} objects.` : "No objects yet: add manifests and sync.", rowAttrs: (o) => ({ "data-object": `${o.kind}/${o.id}`, "data-status": o.status }) },
      ),
    );
  }

  async function load() {
    latest = await api.get("/api/manifests", opts);
    draw();
  }

  async function showDiff() {
    diffButton.disabled = true;
    try {
      const answer = await api.post("/api/diff", {});
      setHTML(part("diff"), renderDiff(answer));
      part("diff").scrollIntoView({ block: "nearest" });
    } catch (err) {
      if (err.name !== "AbortError") setHTML(part("diff"), errorBox(err, "Could not compute the diff"));
    } finally {
      diffButton.disabled = false;
    }
  }

  diffButton.addEventListener("click", showDiff);
  syncButton.addEventListener("click", async () => {
    syncButton.disabled = true;
    try {
      const answer = await api.post("/api/sync", {});
      const r = answer.report || {};
      toast(`Synced ${r.revision || ""}: ${(r.created || []).length} created, ${(r.updated || []).length} updated, ${(r.invalid || []).length} invalid`, r.errors ? "error" : "success");
      await load();
      if (part("diff").childElementCount) await showDiff();
    } catch (err) {
      if (err.name !== "AbortError") toast(`Sync failed: ${err.message}`, "error");
    } finally {
      syncButton.disabled = false;
    }
  });

  await load();
  if (ctx.query.get("diff")) await showDiff();
  const soon = debounce(() => load().catch(() => {}), 250);
  for (const type of ["manifest_applied", "manifest_invalid", "sync_completed", "resync"]) ctx.on(type, soon);
}

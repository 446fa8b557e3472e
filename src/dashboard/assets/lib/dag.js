// The step graph of a workflow: a layered layout by `depends_on` (a step sits one layer
// right of its deepest dependency; a step without `depends_on` waits for nothing), drawn
// as inline SVG with one node per step, coloured by status when states are given.

import { html } from "./ui.js";

/**
 * Lays the steps out. steps: [{name, depends_on?: [names]}] in workflow order. Returns
 * {nodes: [{name, layer, row, x, y, step}], edges: [{from, to}], width, height}.
 */
export function dagLayout(steps, { nodeWidth = 170, nodeHeight = 46, gapX = 60, gapY = 18 } = {}) {
  const byName = new Map(steps.map((s) => [s.name, s]));
  const layer = new Map();
  const visiting = new Set();
  const depth = (name) => {
    if (layer.has(name)) return layer.get(name);
    if (visiting.has(name)) return 0; // a cycle the validator would refuse: draw it flat
    visiting.add(name);
    const deps = (byName.get(name)?.depends_on || []).filter((d) => byName.has(d));
    const d = deps.length ? 1 + Math.max(...deps.map(depth)) : 0;
    visiting.delete(name);
    layer.set(name, d);
    return d;
  };
  steps.forEach((s) => depth(s.name));
  const rows = [];
  const nodes = steps.map((step) => {
    const l = layer.get(step.name);
    rows[l] = (rows[l] || 0) + 1;
    return { name: step.name, step, layer: l, row: rows[l] - 1 };
  });
  const tallest = Math.max(1, ...rows.filter(Boolean));
  const height = tallest * nodeHeight + (tallest - 1) * gapY;
  for (const node of nodes) {
    const inLayer = rows[node.layer];
    const columnHeight = inLayer * nodeHeight + (inLayer - 1) * gapY;
    node.x = node.layer * (nodeWidth + gapX);
    node.y = (height - columnHeight) / 2 + node.row * (nodeHeight + gapY);
  }
  const edges = [];
  for (const step of steps) {
    for (const dep of step.depends_on || []) if (byName.has(dep)) edges.push({ from: dep, to: step.name });
  }
  const layers = Math.max(0, ...nodes.map((n) => n.layer)) + 1;
  return { nodes, edges, width: layers * nodeWidth + (layers - 1) * gapX, height, nodeWidth, nodeHeight };
}

/**
 * The graph as SVG. states: {stepName: status} (optional). Each node has
 * `data-step="<name>"` and class `n-<status>` so a page can recolour it live with
 * `setNodeStatus`.
 */
export function dagSvg(steps, states = {}, { label = "Step graph" } = {}) {
  if (!steps || !steps.length) return html`<p class="empty">No steps.</p>`;
  const layout = dagLayout(steps);
  const pad = 6;
  const { nodeWidth: w, nodeHeight: h } = layout;
  const at = new Map(layout.nodes.map((n) => [n.name, n]));
  const edges = layout.edges.map(({ from, to }) => {
    const a = at.get(from);
    const b = at.get(to);
    const x1 = a.x + w + pad;
    const y1 = a.y + h / 2 + pad;
    const x2 = b.x + pad - 3;
    const y2 = b.y + h / 2 + pad;
    const mid = (x1 + x2) / 2;
    return html`<path class="edge" marker-end="url(#arrow)" d="M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}"/>`;
  });
  const nodes = layout.nodes.map((n) => {
    const status = states[n.name] || "none";
    const sub = [n.step.agent || (n.step.command ? "shell" : ""), n.step.action].filter(Boolean).join(" · ");
    const name = n.name.length > 22 ? n.name.slice(0, 21) + "…" : n.name;
    return html`<g class="node n-${status}" data-step="${n.name}" transform="translate(${n.x + pad},${n.y + pad})">
      <title>${n.name}${states[n.name] ? ` — ${status}` : ""}</title>
      <rect width="${w}" height="${h}" rx="7"/>
      <text x="10" y="19">${name}</text>
      <text class="sub" x="10" y="35" data-sub>${states[n.name] ? status.replace(/_/g, " ") : sub}</text></g>`;
  });
  return html`<div class="dag"><svg role="img" aria-label="${label}" width="${layout.width + pad * 2}" height="${layout.height + pad * 2}" viewBox="0 0 ${layout.width + pad * 2} ${layout.height + pad * 2}">
    <defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0L10,5L0,10z"/></marker></defs>
    ${edges}${nodes}</svg></div>`;
}

/** Recolours one node of a drawn graph (inside `root`) for a new status. */
export function setNodeStatus(root, stepName, status) {
  for (const node of root.querySelectorAll("g.node")) {
    if (node.dataset.step !== stepName) continue;
    node.setAttribute("class", `node n-${status}`);
    const sub = node.querySelector("[data-sub]");
    if (sub) sub.textContent = String(status).replace(/_/g, " ");
  }
}

// The owner's workflows: search, tags and status (where the API gives them), each one's
// versions, what changed between two versions highlighted on the canvas, and a rollback.
// Everything from the API goes in through textContent and attributes (common.js).

import { ApiError, api, el, header } from "./common.js";
import { canvasFrame, drawCanvas } from "./canvas.js";

const status = el("p", { class: "form-status", role: "status", "data-role": "status" });
const listing = el("ul", { class: "library-list", "data-role": "workflow-list" });
const detail = el("section", { class: "library-detail", "data-role": "workflow-detail" });
const search = el("input", { type: "search", placeholder: "Search by name or description", "aria-label": "search",
                             "data-role": "search", autocomplete: "off" });
const statusFilter = el("select", { "aria-label": "status", "data-role": "status-filter" },
  el("option", { value: "" }, "any status"), el("option", { value: "active" }, "active"),
  el("option", { value: "draft" }, "draft"), el("option", { value: "archived" }, "archived"));
let workflows = [];

function say(text, error) {
  status.textContent = error ? `${text}: ${error.message}` : text;
  status.className = error ? "form-status error" : "form-status";
}

function shown() {
  const q = search.value.trim().toLowerCase();
  return workflows.filter((w) => (!q || `${w.name} ${w.description ?? ""}`.toLowerCase().includes(q))
    && (!statusFilter.value || (w.status ?? "active") === statusFilter.value));
}

function drawList() {
  const rows = shown().map((w) => el("li", { "data-workflow-id": w.id },
    el("button", { type: "button", class: "link", "data-role": "open", onclick: () => open(w.id) }, w.name),
    el("span", { class: "muted" }, ` v${w.latest_version}`),
    w.status ? el("span", { class: "tag", "data-role": "workflow-status" }, w.status) : null,
    ...(w.tags || []).map((t) => el("span", { class: "tag" }, t))));
  listing.replaceChildren(...(rows.length ? rows : [el("li", { class: "muted" }, "No workflow.")]));
  document.body.dataset.workflows = String(rows.length);
}

function versionSelect(role, versions, selected) {
  return el("select", { "data-role": role, "aria-label": role },
    ...versions.map((v) => el("option", { value: v.version, selected: v.version === selected },
                              `v${v.version} · ${new Date(v.created_at).toLocaleString()}`)));
}

function changeList(diff) {
  const items = [];
  for (const part of ["nodes", "edges", "inputs", "variables"]) {
    for (const id of diff[part].added) items.push(el("li", { class: "added" }, `${part}: ${id} added`));
    for (const id of diff[part].removed) items.push(el("li", { class: "removed" }, `${part}: ${id} removed`));
    for (const c of diff[part].changed) {
      for (const f of c.changes) {
        items.push(el("li", { class: "changed" }, `${part}: ${c.id} ${f.path}: ${JSON.stringify(f.from)} → ${JSON.stringify(f.to)}`));
      }
    }
  }
  for (const part of ["settings", "output", "document"]) {
    for (const f of diff[part]) items.push(el("li", { class: "changed" }, `${part} ${f.path}: ${JSON.stringify(f.from)} → ${JSON.stringify(f.to)}`));
  }
  return el("ul", { class: "changes", "data-role": "changes" }, ...(items.length ? items : [el("li", { class: "muted" }, "No change.")]));
}

async function showDiff(id, from, to, place) {
  try {
    const [diff, read] = await Promise.all([api(`/api/workflows/${id}/diff?from=${from}&to=${to}`),
                                            api(`/api/workflows/${id}?version=${to}`)]);
    const drawn = drawCanvas(read.canvas);
    for (const nodeId of diff.nodes.added) drawn.views.get(nodeId)?.g.setAttribute("data-diff", "added");
    for (const c of diff.nodes.changed) drawn.views.get(c.id)?.g.setAttribute("data-diff", "changed");
    for (const edgeId of diff.edges.added) drawn.edges.get(edgeId)?.setAttribute("data-diff", "added");
    for (const c of diff.edges.changed) drawn.edges.get(c.id)?.setAttribute("data-diff", "changed");
    place.replaceChildren(changeList(diff), canvasFrame(drawn.root));
    document.body.dataset.diff = `${from}-${to}`;
  } catch (error) {
    say("Could not compare the versions", error);
  }
}

async function open(id) {
  try {
    const [read, versions] = await Promise.all([api(`/api/workflows/${id}`), api(`/api/workflows/${id}/versions`)]);
    const latest = versions[versions.length - 1].version;
    const from = versionSelect("diff-from", versions, Math.max(1, latest - 1));
    const to = versionSelect("diff-to", versions, latest);
    const place = el("div", { "data-role": "diff" });
    const rows = versions.map((v) => el("tr", { "data-version": v.version },
      el("td", {}, `v${v.version}`), el("td", {}, new Date(v.created_at).toLocaleString()),
      el("td", {}, v.created_by), el("td", {}, String(v.nodes)), el("td", { class: "mono" }, v.plan_hash.slice(0, 12)),
      el("td", {}, v.version === latest ? "latest" : el("button", { type: "button", class: "secondary",
        "data-role": "rollback", onclick: () => rollback(id, v.version) }, "Roll back to this"))));
    const compare = () => showDiff(id, from.value, to.value, place);
    from.addEventListener("change", compare);
    to.addEventListener("change", compare);
    detail.replaceChildren(
      el("h2", { "data-role": "workflow-name" }, read.name),
      el("table", { class: "versions", "data-role": "versions" },
         el("thead", {}, el("tr", {}, ...["version", "saved", "by", "nodes", "plan", ""].map((h) => el("th", {}, h)))),
         el("tbody", {}, ...rows)),
      el("p", {}, "Compare ", from, " with ", to, " (changed nodes are outlined)"), place);
    detail.dataset.workflowId = id;
    document.body.dataset.versions = String(versions.length);
    if (versions.length > 1) await compare();
    else place.replaceChildren(canvasFrame(drawCanvas(read.canvas).root));
  } catch (error) {
    say("Could not open the workflow", error);
  }
}

async function rollback(id, version) {
  try {
    const saved = await api(`/api/workflows/${id}/rollback`, { method: "POST", body: { version } });
    say(`Rolled back: version ${saved.version} has the canvas of version ${version}.`);
    await refresh();
    await open(id);
  } catch (error) {
    say("Could not roll back", error instanceof ApiError ? error : new Error(String(error)));
  }
}

async function refresh() {
  workflows = await api("/api/workflows?limit=500");
  drawList();
}

async function main() {
  search.addEventListener("input", drawList);
  statusFilter.addEventListener("change", drawList);
  const page = el("main", { class: "library-page" },
    el("h1", {}, "Workflows"), el("div", { class: "filters" }, search, statusFilter), status,
    el("div", { class: "library-columns" }, listing, detail));
  document.body.append(header(el("a", { href: "templates" }, "Templates")), page);
  try {
    await refresh();
  } catch (error) {
    say("Could not list the workflows", error);
  }
  document.body.dataset.ready = "true";
}

main();

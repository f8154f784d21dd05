// The runs of this key's owner, newest first, each a link to its run page; filtered by status
// and workflow (kept in the page's query string, so a filtered list can be linked to).
//
// Ids are shown whole: UUIDv7 ids begin with their time, so runs started close together share
// their first characters.

import { api, el, header, pageUrl } from "./common.js";
import { FINAL_RUN_STATUSES, RunStatus } from "../vocabulary.js";

/** "1.2 s", "3 min 4 s", "2 h 5 min": from created to last update (the end, for a run that ended). */
export function duration(run, now = Date.now()) {
  const start = Date.parse(run.created_at);
  const ended = FINAL_RUN_STATUSES.includes(run.status);
  const end = ended ? Date.parse(run.updated_at ?? run.created_at) : now;
  if (!Number.isFinite(start) || !Number.isFinite(end)) return "";
  const s = Math.max(0, (end - start) / 1000);
  const text = s < 60 ? `${s.toFixed(s < 10 ? 1 : 0)} s`
    : s < 3600 ? `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`
    : `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
  return ended ? text : `${text} so far`;
}

async function main() {
  const query = new URLSearchParams(location.search);
  const status = el("select", { name: "status", "data-role": "status-filter" },
    el("option", { value: "" }, "any status"),
    Object.values(RunStatus).map((s) => el("option", { value: s, selected: query.get("status") === s }, s)));
  const workflow = el("select", { name: "workflow_id", "data-role": "workflow-filter" }, el("option", { value: "" }, "any workflow"));
  const filter = el("form", { class: "runs-filter", "data-role": "runs-filter" },
    el("label", {}, "Status", status), el("label", {}, "Workflow", workflow));
  const apply = () => {
    const next = new URLSearchParams();
    if (status.value) next.set("status", status.value);
    if (workflow.value) next.set("workflow_id", workflow.value);
    location.search = next.toString();
  };
  status.addEventListener("change", apply);
  workflow.addEventListener("change", apply);
  const main = el("main", { class: "list" }, el("h1", {}, "Runs"),
                  el("p", {}, el("a", { href: pageUrl("/ui/new") }, "Run a canvas in the playground")), filter);
  document.body.append(header(), main);
  const asked = new URLSearchParams({ limit: "500" }); // the newest 500 (lists have pages of 50 by default)
  for (const name of ["status", "workflow_id"]) if (query.get(name)) asked.set(name, query.get(name));
  const [runs, workflows] = await Promise.all([
    api(`/api/executions?${asked}`),
    api("/api/workflows?limit=500").catch(() => []),
  ]);
  for (const w of Array.isArray(workflows) ? workflows : workflows?.items ?? []) {
    workflow.append(el("option", { value: w.id, selected: query.get("workflow_id") === w.id }, w.name));
  }
  if (!runs.length) {
    main.append(el("p", { class: "muted", "data-role": "no-runs" }, asked.size > 1 ? "No runs match." : "No runs yet."));
    return;
  }
  main.append(el("table", { "data-role": "runs" },
    el("thead", {}, el("tr", {}, ["run", "workflow", "version", "status", "trigger", "started", "duration"]
      .map((h) => el("th", {}, h)))),
    el("tbody", {}, runs.map((run) => el("tr", { "data-execution-id": run.id },
      el("td", { class: "id" }, el("a", { href: pageUrl(`/ui/executions/${encodeURIComponent(run.id)}`) }, el("code", {}, run.id))),
      el("td", {}, run.workflow), el("td", {}, run.version),
      el("td", {}, el("span", { class: "status", "data-status": run.status }, run.status)),
      el("td", {}, run.trigger?.type ?? ""), el("td", {}, run.created_at ?? ""),
      el("td", { "data-role": "duration" }, duration(run)))))));
}

main();

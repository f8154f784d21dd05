// The runs of this key's owner, newest first, each a link to its run page.

import { api, el, header, pageUrl } from "./common.js";

async function main() {
  const main = el("main", { class: "list" }, el("h1", {}, "Runs"),
                  el("p", {}, el("a", { href: pageUrl("/ui/new") }, "Run a canvas in the playground")));
  document.body.append(header(), main);
  const runs = await api("/api/executions?limit=500"); // the newest 500, as before lists had pages
  if (!runs.length) {
    main.append(el("p", { class: "muted" }, "No runs yet."));
    return;
  }
  main.append(el("table", { "data-role": "runs" },
    el("thead", {}, el("tr", {}, ["run", "workflow", "version", "status", "trigger", "started"].map((h) => el("th", {}, h)))),
    el("tbody", {}, runs.map((run) => el("tr", { "data-execution-id": run.id },
      el("td", {}, el("a", { href: pageUrl(`/ui/executions/${encodeURIComponent(run.id)}`) }, run.id.slice(0, 8))),
      el("td", {}, run.workflow), el("td", {}, run.version),
      el("td", {}, el("span", { class: "status", "data-status": run.status }, run.status)),
      el("td", {}, run.trigger?.type ?? ""), el("td", {}, run.created_at ?? ""))))));
}

main();

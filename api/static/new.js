// The playground: paste or upload a React Flow export, see the compiler's issues on the
// nodes they concern, run it (saved as a workflow of that name, a new version when one
// exists) and land on its run page.

import { ApiError, api, apiKey, el, header, pageUrl } from "./common.js";
import { canvasFrame, clip, drawCanvas } from "./canvas.js";

const text = el("textarea", { class: "source", rows: 16, spellcheck: "false", "data-role": "canvas-json",
                              placeholder: "Paste a canvas (React Flow export) here" });
const file = el("input", { type: "file", accept: ".json,application/json", "data-role": "canvas-file" });
const inputs = el("textarea", { rows: 3, spellcheck: "false", "data-role": "inputs-json", placeholder: '{"name": "Ada"}' });
const check = el("button", { type: "button", "data-role": "check" }, "Check");
const run = el("button", { type: "button", "data-role": "run" }, "Run");
const status = el("p", { class: "form-status", role: "status", "data-role": "playground-status" });
const issuesList = el("ul", { class: "issues", "data-role": "issues" });
const preview = el("div", { class: "preview", "data-role": "preview" });
let timer = null;

function parsed() {
  try {
    return JSON.parse(text.value);
  } catch (error) {
    throw new Error(`not JSON: ${error.message}`);
  }
}

function showIssues(canvas, issues) {
  const drawn = drawCanvas(canvas && Array.isArray(canvas.nodes) ? canvas : { nodes: [], edges: [] });
  const byNode = new Map();
  for (const issue of issues) {
    if (issue.node_id && drawn.views.has(issue.node_id)) {
      if (!byNode.has(issue.node_id)) byNode.set(issue.node_id, []);
      byNode.get(issue.node_id).push(issue);
    }
    const edge = issue.edge_id && drawn.edges.get(issue.edge_id);
    if (edge) edge.classList.add(issue.severity === "error" ? "issue-error" : "issue-warning");
  }
  // An issue's message says what is wrong; its field, where (the compiler no longer repeats it).
  const said = (i) => (i.field ? `${i.field}: ${i.message}` : i.message);
  for (const [id, found] of byNode) {
    const view = drawn.views.get(id);
    const severity = found.some((i) => i.severity === "error") ? "error" : "warning";
    view.g.setAttribute("data-issues", String(found.length));
    view.g.setAttribute("data-issue-severity", severity);
    view.g.setAttribute("data-issue-codes", found.map((i) => i.code).join(" "));
    view.detail.textContent = clip(`${severity === "error" ? "⚠" : "•"} ${said(found[0])}`, view.chars);
    view.title.textContent = found.map((i) => `${i.severity} ${i.code}: ${said(i)}`).join("\n");
  }
  preview.replaceChildren(canvasFrame(drawn.root));
  issuesList.replaceChildren(...issues.map((i) => el("li", { class: i.severity, "data-code": i.code },
    el("strong", {}, `${i.severity} ${i.code}`), " ",
    i.node_id ? el("code", {}, `node ${i.node_id}`) : null, i.edge_id ? el("code", {}, `edge ${i.edge_id}`) : null,
    i.field ? el("code", {}, i.field) : null, ` ${i.message}`)));
}

async function validate() {
  let canvas;
  try {
    canvas = parsed();
  } catch (error) {
    status.textContent = error.message;
    return null;
  }
  const report = await api("/api/workflows/validate", { method: "POST", body: { canvas } });
  showIssues(canvas, report.issues);
  const errors = report.issues.filter((i) => i.severity === "error").length;
  status.textContent = report.valid ? `Valid${report.issues.length ? ` (${report.issues.length} warning(s))` : ""}.`
                                    : `${errors} error(s).`;
  document.body.dataset.valid = String(report.valid);
  return report.valid ? canvas : null;
}

async function save(canvas) {
  try {
    return await api("/api/workflows", { method: "POST", body: { canvas } });
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 409) throw error;
    const existing = (await api("/api/workflows?limit=500")).find((w) => w.name === canvas.name);
    if (!existing) throw error;
    return await api(`/api/workflows/${encodeURIComponent(existing.id)}`, { method: "PUT", body: { canvas } });
  }
}

async function execute() {
  const canvas = await validate();
  if (!canvas) return;
  let values = {};
  try {
    values = inputs.value.trim() ? JSON.parse(inputs.value) : {};
  } catch (error) {
    status.textContent = `inputs: not JSON: ${error.message}`;
    return;
  }
  run.disabled = true;
  status.textContent = "Saving…";
  try {
    const saved = await save(canvas);
    status.textContent = "Starting…";
    const started = await api(`/api/workflows/${encodeURIComponent(saved.id)}/execute`,
                              { method: "POST", body: { inputs: values, version: saved.version } });
    location.assign(pageUrl(`/ui/executions/${encodeURIComponent(started.execution_id)}`));
  } catch (error) {
    run.disabled = false;
    status.textContent = error.message;
    if (error instanceof ApiError && error.issues.length) showIssues(canvas, error.issues);
  }
}

function later() {
  clearTimeout(timer);
  timer = setTimeout(() => validate().catch((error) => { status.textContent = error.message; }), 400);
}

text.addEventListener("input", later);
file.addEventListener("change", async () => {
  if (file.files[0]) {
    text.value = await file.files[0].text();
    later();
  }
});
check.addEventListener("click", () => validate().catch((error) => { status.textContent = error.message; }));
run.addEventListener("click", () => execute());

document.body.append(header(), el("main", { class: "playground" },
  el("h1", {}, "Playground"),
  el("div", { class: "split" },
    el("section", {}, el("label", {}, "Canvas JSON", text), el("label", {}, "or a file ", file),
       el("label", {}, "Inputs (JSON)", inputs), el("div", { class: "buttons" }, check, run), status, issuesList),
    preview)));
apiKey();  // ask for the key now rather than at the first check

// The templates gallery: the bundled library and the owner's own, filtered by category and
// text; each card says what the template needs; "Use" saves a new workflow from it.

import { api, el, header, pageUrl } from "./common.js";

const status = el("p", { class: "form-status", role: "status", "data-role": "status" });
const gallery = el("section", { class: "gallery", "data-role": "gallery" });
const search = el("input", { type: "search", placeholder: "Search templates", "aria-label": "search",
                             "data-role": "search", autocomplete: "off" });
const category = el("select", { "aria-label": "category", "data-role": "category" }, el("option", { value: "" }, "every category"));

function say(text, error) {
  status.textContent = error ? `${text}: ${error.message}` : text;
  status.className = error ? "form-status error" : "form-status";
}

function card(t) {
  const name = el("input", { type: "text", "aria-label": "new workflow name", placeholder: "new workflow name",
                             "data-role": "new-name", autocomplete: "off" });
  const needs = t.needs || {};
  const credentials = (needs.credentials || []).map((c) => `${c.name} (${c.type ?? "credential"})`);
  const inputs = Object.entries(needs.inputs || {}).map(([k, v]) => `${k}${v.required ? "*" : ""}`);
  const use = async (event) => {
    event.preventDefault();
    try {
      const body = name.value.trim() ? { name: name.value.trim() } : {};
      const made = await api(`/api/templates/${encodeURIComponent(t.id)}/instantiate`, { method: "POST", body });
      say(`Saved workflow ${made.name} (version ${made.version}).`);
      document.body.dataset.instantiated = made.id;
    } catch (error) {
      say(`Could not use ${t.name}`, error);
    }
  };
  return el("article", { class: "template-card", "data-template-id": t.id, "data-category": t.category },
    el("h3", {}, t.name), el("p", { class: "muted" }, `${t.category} · ${t.source}`), el("p", {}, t.description),
    el("p", { "data-role": "needs-inputs" }, `Inputs: ${inputs.join(", ") || "none"}`),
    el("p", { "data-role": "needs-credentials" }, `Credentials: ${credentials.join(", ") || "none"}`),
    needs.providers?.length ? el("p", {}, `Model providers: ${needs.providers.join(", ")}`) : null,
    el("form", { onsubmit: use }, name, el("button", { type: "submit", "data-role": "use" }, "Use this template")));
}

async function refresh() {
  const query = new URLSearchParams();
  if (category.value) query.set("category", category.value);
  if (search.value.trim()) query.set("q", search.value.trim());
  const found = await api(`/api/templates?${query}`);
  gallery.replaceChildren(...(found.length ? found.map(card) : [el("p", { class: "muted" }, "No template.")]));
  document.body.dataset.templates = String(found.length);
}

async function main() {
  let timer = null;
  search.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(() => refresh().catch((e) => say("Search failed", e)), 200); });
  category.addEventListener("change", () => refresh().catch((e) => say("Filter failed", e)));
  const page = el("main", { class: "library-page" }, el("h1", {}, "Templates"),
    el("div", { class: "filters" }, search, category), status, gallery);
  document.body.append(header(el("a", { href: pageUrl("/ui/workflows") }, "Workflows")), page);
  try {
    const all = await api("/api/templates");
    for (const c of [...new Set(all.map((t) => t.category))].sort()) category.append(el("option", { value: c }, c));
    await refresh();
  } catch (error) {
    say("Could not list the templates", error);
  }
  document.body.dataset.ready = "true";
}

main();

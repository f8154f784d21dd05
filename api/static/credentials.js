// The owner's stored credentials: list, add, rotate, delete (the API: /api/credentials).
//
// Values are write-only. They are typed into password inputs (autocomplete off), sent once
// and the form is emptied at once, whether the API accepted them or not; nothing on this
// page ever holds a value the API sent, because no answer carries one: the list shows
// the names of a credential's fields, never what is in them.

import { ApiError, api, el, header } from "./common.js";

// The fields of each type (platform contract, section 2); `secret: false` are the parts
// that name rather than hide something (a user name, a header's name): text inputs.
const TYPES = {
  api_key: { label: "API key", fields: [{ name: "api_key", label: "API key" }] },
  bearer: { label: "Bearer token", fields: [{ name: "token", label: "Token" }] },
  basic: { label: "Basic auth", fields: [{ name: "username", label: "User name", secret: false },
                                         { name: "password", label: "Password" }] },
  header: { label: "Header", fields: [{ name: "name", label: "Header name", secret: false, placeholder: "X-API-Key" },
                                      { name: "value", label: "Header value" }] },
  custom: { label: "Custom fields", fields: null },
};
const NAME_PATTERN = "[a-z0-9][a-z0-9_\\-]{0,63}";

const status = el("p", { class: "form-status", role: "status", "data-role": "status" });
const problems = el("ul", { class: "issues", "data-role": "problems" });
const listing = el("section", { class: "credentials", "data-role": "credential-list" });

function say(text) {
  status.textContent = text;
  problems.replaceChildren();
}

function sayError(error, what) {
  status.textContent = `${what}: ${error.message}`;
  problems.replaceChildren(...(error instanceof ApiError ? error.issues : [])
    .map((issue) => el("li", { class: "error" }, issue.message)));
}

/** One input of a value: a password input unless it only names something. */
function valueInput(field, role) {
  const secret = field.secret !== false;
  return el("label", {}, field.label,
    el("input", { type: secret ? "password" : "text", name: field.name, "data-field": field.name,
                  "data-role": role, autocomplete: secret ? "new-password" : "off", spellcheck: "false",
                  placeholder: field.placeholder, required: true }));
}

/** Rows of (field name, value) for a custom credential, with a button for one more. */
function customRows(names, role) {
  const rows = el("div", { class: "custom-fields", "data-role": "custom-fields" });
  const addRow = (name = "") => rows.append(el("div", { class: "custom-row" },
    el("input", { type: "text", "aria-label": "field name", placeholder: "field name", value: name || undefined,
                  "data-role": "custom-name", required: true, pattern: "[A-Za-z0-9_\\-]+", autocomplete: "off" }),
    el("input", { type: "password", "aria-label": "field value", placeholder: "value", "data-role": role,
                  autocomplete: "new-password", required: true })));
  (names.length ? names : [""]).forEach((name) => addRow(name));
  const more = el("button", { type: "button", class: "secondary", "data-role": "add-field", onclick: () => addRow() },
                  "Add a field");
  return el("div", {}, rows, more);
}

/** The values typed into a form, by field name. */
function valuesOf(form, role) {
  const data = {};
  for (const row of form.querySelectorAll(".custom-row")) {
    data[row.querySelector("[data-role='custom-name']").value.trim()] = row.querySelector(`[data-role='${role}']`).value;
  }
  for (const input of form.querySelectorAll(`input[data-field][data-role='${role}']`)) data[input.dataset.field] = input.value;
  return data;
}

/** Empties every input of a form that held a value: it leaves the page with the request. */
function forget(form) {
  for (const input of form.querySelectorAll("input[type='password'], input[data-field]")) input.value = "";
}

function fieldsFor(type, role, names = []) {
  const spec = TYPES[type];
  return spec.fields ? el("div", {}, spec.fields.map((field) => valueInput(field, role))) : customRows(names, role);
}

function addForm() {
  const fields = el("div", { "data-role": "add-fields" }, fieldsFor("api_key", "add-value"));
  const type = el("select", { name: "type", "data-role": "add-type",
                              onchange: () => fields.replaceChildren(fieldsFor(type.value, "add-value")) },
    Object.entries(TYPES).map(([value, spec]) => el("option", { value }, spec.label)));
  const name = el("input", { type: "text", name: "name", "data-role": "add-name", required: true, pattern: NAME_PATTERN,
                             autocomplete: "off", placeholder: "openai", title: "lower-case letters, digits, _ and -" });
  const description = el("input", { type: "text", name: "description", "data-role": "add-description",
                                    autocomplete: "off", maxlength: 500 });
  const form = el("form", { class: "credential-form", "data-role": "add-credential" },
    el("h2", {}, "Add a credential"),
    el("label", {}, "Name (nodes use it as data.credential)", name),
    el("label", {}, "Type", type),
    fields,
    el("label", {}, "Description (optional)", description),
    el("div", { class: "buttons" }, el("button", { type: "submit" }, "Save")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { name: name.value.trim(), type: type.value, data: valuesOf(form, "add-value"),
                   description: description.value };
    forget(form);
    try {
      const saved = await api("/api/credentials", { method: "POST", body });
      form.reset();
      fields.replaceChildren(fieldsFor(type.value, "add-value"));
      say(`Saved ${saved.name}.`);
      await refresh();
    } catch (error) {
      sayError(error, "Not saved");
    }
  });
  return form;
}

function rotateForm(credential, row) {
  const fields = credential.type === "custom"
    ? customRows(credential.fields, "rotate-value")
    : fieldsFor(credential.type, "rotate-value");
  const form = el("form", { class: "credential-form", "data-role": "rotate-credential" },
    el("h3", {}, `New values for ${credential.name}`), fields,
    el("div", { class: "buttons" }, el("button", { type: "submit" }, "Rotate"),
       el("button", { type: "button", class: "secondary", onclick: () => { forget(form); form.remove(); } }, "Cancel")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = valuesOf(form, "rotate-value");
    forget(form);
    try {
      await api(`/api/credentials/${encodeURIComponent(credential.id)}`, { method: "PUT", body: { data } });
      say(`Rotated ${credential.name}: the next node execution uses the new values.`);
      await refresh();
    } catch (error) {
      sayError(error, "Not rotated");
    }
  });
  const cell = el("td", { colspan: 7 }, form);
  row.after(el("tr", { class: "rotating", "data-role": "rotating" }, cell));
  form.querySelector("input")?.focus();
}

function confirmDelete(credential, actions) {
  const keep = el("button", { type: "button", class: "secondary", "data-role": "keep" }, "Keep");
  const sure = el("button", { type: "button", class: "danger", "data-role": "confirm-delete" }, `Delete ${credential.name}`);
  const original = [...actions.childNodes];
  keep.addEventListener("click", () => actions.replaceChildren(...original));
  sure.addEventListener("click", async () => {
    try {
      await api(`/api/credentials/${encodeURIComponent(credential.id)}`, { method: "DELETE" });
      say(`Deleted ${credential.name}: nodes that name it now fail saying so.`);
      await refresh();
    } catch (error) {
      sayError(error, "Not deleted");
    }
  });
  actions.replaceChildren(sure, keep);
}

function credentialRow(credential) {
  const actions = el("td", { class: "buttons" });
  const row = el("tr", { "data-credential-id": credential.id, "data-credential-name": credential.name },
    el("td", { "data-role": "name" }, credential.name),
    el("td", { "data-role": "type" }, TYPES[credential.type]?.label ?? credential.type),
    el("td", { "data-role": "fields" }, credential.fields.join(", ")),
    el("td", {}, credential.description || ""),
    el("td", { "data-role": "updated" }, credential.updated_at ?? ""),
    el("td", {}, credential.last_used_at ?? "never"),
    actions);
  actions.append(
    el("button", { type: "button", class: "secondary", "data-role": "rotate",
                   onclick: () => { document.querySelector("[data-role='rotating']")?.remove(); rotateForm(credential, row); } },
       "Rotate"),
    el("button", { type: "button", class: "secondary", "data-role": "delete",
                   onclick: () => confirmDelete(credential, actions) }, "Delete"));
  return row;
}

async function refresh() {
  const credentials = await api("/api/credentials");
  if (!credentials.length) {
    listing.replaceChildren(el("p", { class: "muted", "data-role": "empty" }, "No credentials yet."));
  } else {
    listing.replaceChildren(el("table", { "data-role": "credentials" },
      el("thead", {}, el("tr", {}, ["name", "type", "fields", "description", "updated", "last used", ""]
        .map((h) => el("th", {}, h)))),
      el("tbody", {}, credentials.map(credentialRow))));
  }
  document.body.dataset.credentials = String(credentials.length);
}

async function main() {
  const page = el("main", { class: "credentials-page" },
    el("h1", {}, "Credentials"),
    el("p", { class: "muted" },
       "Keys and passwords your workflows use: a node names one with data.credential. ",
       "Values are write-only: they are sent once, stored encrypted, and never shown again; rotate to replace them."),
    status, problems, listing, addForm());
  document.body.append(header(), page);
  try {
    await refresh();
  } catch (error) {
    sayError(error, "Could not list the credentials");
  }
  document.body.dataset.ready = "true";
}

main();

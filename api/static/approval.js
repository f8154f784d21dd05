// An approval's form, built from the JSON Schema of its node:paused event (the same model
// the API and the Prefect UI validate answers with): Approve / Reject set `approved`, the
// other properties become inputs. The API's refusal (422) is shown beside the fields.

import { api, ApiError, el } from "./common.js";

/** Whether the approval names who decides (or needs several, or refuses its run's starter):
 * then it is decided through the approval desk (/api/approvals), as each person. */
export function organisational(data) {
  const who = data.approvers || {};
  const users = Array.isArray(who) ? who : who.users || [];
  const later = data.escalate_to || {};
  return users.length > 0 || (who.groups || []).length > 0 || (later.users || []).length > 0 ||
    (later.groups || []).length > 0 || (data.required || 1) > 1 || data.allow_self_approval === false;
}

function approversText(data) {
  const who = data.approvers || {};
  const users = Array.isArray(who) ? who : who.users || [];
  const parts = [...users, ...(who.groups || []).map((g) => `group ${g}`)];
  if (!parts.length) return null;
  const needed = (data.required || 1) > 1 ? ` (${data.required} must approve)` : "";
  return `Approvers: ${parts.join(", ")}${needed}`;
}

/** Who decided so far and who is still awaited, from the desk's view of the approval. */
function progressText(view) {
  const decided = (view.decisions || []).map((d) => `${d.by} ${d.approved ? "approved" : "rejected"}`);
  const awaiting = (view.awaiting || []).join(", ") || "nobody";
  return `${view.approvals ?? 0} of ${view.required ?? 1} approvals` +
    (decided.length ? `: ${decided.join(", ")}` : "") + `; awaiting ${awaiting}`;
}

/** The schema of a property, without pydantic's "or null" of optional fields. */
function plain(schema) {
  if (Array.isArray(schema.anyOf)) {
    const other = schema.anyOf.find((s) => s.type !== "null");
    return { ...other, description: schema.description, title: schema.title, default: schema.default };
  }
  return schema;
}

function inputFor(name, schema, required) {
  const s = plain(schema);
  const common = { name, id: `field-${name}`, required: required && s.type !== "boolean" };
  if (Array.isArray(s.enum)) {
    return el("select", common, required ? null : el("option", { value: "" }, "—"),
              s.enum.map((v) => el("option", { value: JSON.stringify(v), selected: v === s.default }, String(v))));
  }
  if (s.type === "boolean") return el("input", { ...common, type: "checkbox", checked: s.default === true });
  if (s.type === "integer" || s.type === "number") {
    return el("input", { ...common, type: "number", step: s.type === "integer" ? 1 : "any", value: s.default ?? "" });
  }
  if (s.type === "object" || s.type === "array") {
    return el("textarea", { ...common, rows: 3, placeholder: s.type === "array" ? "[ ... ] (JSON)" : "{ ... } (JSON)" },
              s.default !== undefined && s.default !== null ? JSON.stringify(s.default) : "");
  }
  return el("textarea", { ...common, rows: 2 }, s.default ?? "");
}

function valueOf(control, schema) {
  const s = plain(schema);
  if (control.type === "checkbox") return control.checked;
  const raw = control.value;
  if (raw === "") return undefined;
  if (control.tagName === "SELECT") return JSON.parse(raw);
  if (s.type === "integer" || s.type === "number") return Number(raw);
  if (s.type === "object" || s.type === "array") return JSON.parse(raw);
  return raw;
}

/** ``submit(input)`` sends the answer and resolves with the API's answer. */
export function approvalForm(data, submit, key) {
  const schema = data.form || { properties: {} };
  const required = new Set(schema.required || []);
  const fields = Object.entries(schema.properties || {}).filter(([name]) => name !== "approved");
  const status = el("p", { class: "form-status", role: "status", "data-role": "approval-status" });
  const controls = new Map();
  const rows = fields.map(([name, prop]) => {
    const control = inputFor(name, prop, required.has(name));
    controls.set(name, [control, prop]);
    const s = plain(prop);
    return el("label", { for: control.id }, el("span", {}, `${s.title ?? name}${required.has(name) ? " *" : ""}`),
              control, s.description ? el("small", {}, s.description) : null,
              el("small", { class: "error", "data-field-error": name }));
  });
  const form = el("form", { class: "approval", "data-approval": key, "data-node-id": data.node_id },
    el("h3", {}, `Approval: ${data.label ?? data.node_id}${data.path?.length ? ` [${data.path.join(", ")}]` : ""}`),
    data.message ? el("p", { class: "message" }, data.message) : null,
    approversText(data) ? el("p", { class: "muted" }, approversText(data)) : null,
    data.timeout_at ? el("p", { class: "muted" }, `Answer before ${data.timeout_at}`) : null,
    ...rows,
    el("div", { class: "buttons" },
       el("button", { type: "submit", value: "approve", "data-role": "approve" }, "Approve"),
       el("button", { type: "submit", value: "reject", class: "secondary", "data-role": "reject" }, "Reject")),
    status);
  const desk = organisational(data) && data.approval_id;
  const progress = el("p", { class: "muted", "data-role": "approval-progress" });
  if (desk) {
    form.insertBefore(progress, status);
    // Best effort: someone who may not see the approval's progress still gets the form.
    api(`/api/approvals/${encodeURIComponent(data.approval_id)}`)
      .then((view) => { progress.textContent = progressText(view); }).catch(() => {});
    submit = (input) => {
      const { approved, ...rest } = input;
      return api(`/api/approvals/${encodeURIComponent(data.approval_id)}/decide`,
                 { method: "POST", body: { approved, input: rest } }).then((view) => {
        progress.textContent = progressText(view);
        return { message: view.status === "waiting" ? "Your decision is recorded; more are needed." :
                 `Decided: ${view.status}.` };
      });
    };
  }
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = { approved: event.submitter?.value !== "reject" };
    for (const small of form.querySelectorAll("[data-field-error]")) small.textContent = "";
    try {
      for (const [name, [control, prop]] of controls) {
        const value = valueOf(control, prop);
        if (value !== undefined) input[name] = value;
      }
    } catch {
      status.textContent = "A JSON field does not parse.";
      return;
    }
    for (const button of form.querySelectorAll("button")) button.disabled = true;
    status.textContent = "Sending…";
    try {
      const answer = await submit(input);
      status.textContent = answer?.message || "Answered; the run continues.";
      form.dataset.answered = "true";
    } catch (error) {
      for (const button of form.querySelectorAll("button")) button.disabled = false;
      status.textContent = error.message;
      if (error instanceof ApiError) {
        for (const issue of error.issues) {
          const name = String(issue.field ?? "").split(".").pop();
          const slot = form.querySelector(`[data-field-error="${CSS.escape(name)}"]`);
          if (slot) slot.textContent = issue.message;
        }
      }
    }
  });
  return form;
}

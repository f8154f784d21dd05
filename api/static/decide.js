// The page a decision link opens (/ui/decide#<token>): one approval, decided as the person
// the link names, without an API key. The token stays in the URL's fragment (browsers send
// it to no server) and goes to the API in request bodies only; the page's nonce from the
// first call goes back with the decision. Each link decides once.

import { API, ApiError, el } from "./common.js";
import { approvalForm } from "./approval.js";

const token = decodeURIComponent(location.hash.replace(/^#/, ""));
const main = el("main", { class: "decide" });
const status = el("p", { class: "form-status", role: "status", "data-role": "decide-status" });
document.body.append(el("header", {}, el("h1", {}, "FlowMaestro · approval")), main, status);

async function post(path, body) {
  const response = await fetch(`${API}${path}`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  const text = await response.text();
  let parsed = null;
  try { parsed = text ? JSON.parse(text) : null; } catch { parsed = { detail: text }; }
  if (!response.ok) throw new ApiError(response.status, parsed);
  return parsed;
}

function progress(view) {
  const decided = (view.decisions || []).map((d) => `${d.by} ${d.approved ? "approved" : "rejected"}`);
  return `${view.approvals ?? 0} of ${view.required ?? 1} approvals` +
    (decided.length ? ` (${decided.join(", ")})` : "") +
    `; awaiting ${(view.awaiting || []).join(", ") || "nobody"}`;
}

async function open() {
  if (!token) {
    status.textContent = "This link has no token.";
    return;
  }
  let view;
  try {
    view = await post("/api/approval-link", { token });
  } catch (error) {
    status.textContent = error.message;
    document.body.dataset.linkState = "refused";
    return;
  }
  const { approval_id: _id, nonce, ...data } = view;  // no approval_id: the form must not use the keyed API
  main.append(
    el("p", { "data-role": "decide-as" }, `Deciding as ${view.as}; run ${view.execution_id} of ${view.owner}.`),
    el("p", { class: "muted", "data-role": "decide-progress" }, progress(view)),
    approvalForm(data, async (input) => {
      const { approved, ...rest } = input;
      const answer = await post("/api/approval-link/decide", { token, nonce, approved, input: rest });
      document.body.dataset.linkState = answer.status;
      main.querySelector('[data-role="decide-progress"]').textContent = progress(answer);
      return { message: answer.status === "waiting" ? "Recorded; more decisions are needed." : `Decided: ${answer.status}.` };
    }, view.id));
  document.body.dataset.linkState = "open";
}

open();

// What every page shares: safe DOM building, the API client, the key kept for the session.
//
// Nothing here uses innerHTML: every text from the API (labels, outputs, error messages,
// canvas names) goes in through textContent or attribute values.

const KEY_ITEM = "flowmaestro.apiKey";
export const API = document.querySelector('meta[name="flowmaestro-api"]')?.content ?? "";
export const PREFECT_UI = document.querySelector('meta[name="flowmaestro-prefect-ui"]')?.content ?? "";
const SVG_NS = "http://www.w3.org/2000/svg";

/** An element: attrs are attributes (on* functions become listeners), children nodes or text. */
export function el(tag, attrs = {}, ...children) {
  return build(document.createElement(tag), attrs, children);
}

export function svg(tag, attrs = {}, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

function build(node, attrs, children) {
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function pageUrl(path) {
  return `${API}${path}`;
}

export class ApiError extends Error {
  constructor(status, body) {
    super(body?.detail || `HTTP ${status}`);
    this.status = status;
    this.issues = body?.issues || [];
  }
}

/** The key of this browser session; asks for one (and checks it) when there is none. */
export async function apiKey() {
  const known = sessionStorage.getItem(KEY_ITEM);
  if (known) return known;
  return await askForKey();
}

export function forgetKey() {
  sessionStorage.removeItem(KEY_ITEM);
}

/** A JSON call to the API with the session's key; a 401 asks for a key again, once. */
export async function api(path, { method = "GET", body, retried = false } = {}) {
  const key = await apiKey();
  const headers = { Authorization: `Bearer ${key}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(`${API}${path}`, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401 && !retried) {
    forgetKey();
    await askForKey("That key is not accepted any more; enter another.");
    return api(path, { method, body, retried: true });
  }
  const text = await response.text();
  let parsed = null;
  try { parsed = text ? JSON.parse(text) : null; } catch { parsed = { detail: text }; }
  if (!response.ok) throw new ApiError(response.status, parsed);
  return parsed;
}

let asking = null;

function askForKey(message) {
  // Several calls may find no key at once: one form answers them all.
  if (asking) return asking;
  asking = new Promise((resolve) => {
    const input = el("input", { type: "password", name: "key", autocomplete: "off", required: true,
                                "aria-label": "API key", placeholder: "API key" });
    const error = el("p", { class: "error", role: "alert" }, message || "");
    const form = el("form", { class: "login", "data-role": "login" },
      el("h2", {}, "FlowMaestro"),
      el("p", {}, "Enter an API key (FLOWMAESTRO_API_KEYS). It is kept in this tab only, until you close it."),
      input, el("button", { type: "submit" }, "Sign in"), error);
    const overlay = el("div", { class: "overlay" }, form);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const key = input.value.trim();
      const answer = await fetch(`${API}/api/workflows`, { headers: { Authorization: `Bearer ${key}` } });
      if (answer.ok) {
        sessionStorage.setItem(KEY_ITEM, key);
        overlay.remove();
        asking = null;
        resolve(key);
      } else {
        error.textContent = answer.status === 401 ? "This key is not accepted." : `The API answered ${answer.status}.`;
      }
    });
    document.body.append(overlay);
    input.focus();
  });
  return asking;
}

/** The bar at the top of every page. */
export function header(...extra) {
  const signOut = el("button", { type: "button", class: "link", onclick: () => { forgetKey(); location.reload(); } },
                     "Sign out");
  return el("header", { class: "bar" },
    el("a", { href: pageUrl("/ui/"), class: "brand" }, "FlowMaestro"),
    el("nav", {}, el("a", { href: pageUrl("/ui/") }, "Runs"), el("a", { href: pageUrl("/ui/new") }, "Playground"),
       el("a", { href: pageUrl("/ui/credentials") }, "Credentials")),
    ...extra, el("span", { class: "spacer" }), signOut);
}

/** Runs ``fn`` once per animation frame at most, however often it is asked for. Hidden
 * tabs get no frames, so they fall back to a timer and still catch up. */
export function frameScheduler(fn) {
  let pending = false;
  const run = () => { pending = false; fn(); };
  return () => {
    if (pending) return;
    pending = true;
    if (document.visibilityState === "hidden") setTimeout(run, 50);
    else requestAnimationFrame(run);
  };
}

export function shortJson(value, limit = 2000) {
  let text;
  try { text = JSON.stringify(value, null, 2); } catch { text = String(value); }
  if (text === undefined) text = String(value);
  return text.length > limit ? `${text.slice(0, limit)}…` : text;
}

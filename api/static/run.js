// The run page: the canvas of the run's version, coloured live from its event stream.
//
// Events are queued as they arrive and applied once per animation frame, at most a frame's
// worth of work at a time, and only the nodes they changed are redrawn: a reload of a run
// with thousands of events catches up without freezing the page.

import { API, ApiError, PREFECT_UI, api, el, frameScheduler, header, shortJson } from "./common.js";
import { canvasFrame, clip, drawCanvas } from "./canvas.js";
import { approvalForm } from "./approval.js";

const EVENT_TYPES = ["execution:started", "execution:paused", "execution:resumed", "execution:completed",
  "execution:failed", "execution:cancelled", "node:started", "node:completed", "node:cached", "node:error",
  "node:skipped", "node:retrying", "node:paused", "stream:chunk", "stream:done"];
const FINAL = new Set(["execution:completed", "execution:failed", "execution:cancelled"]);
const NODE_STATE = { "node:started": "running", "node:retrying": "retrying", "node:paused": "paused",
  "node:completed": "completed", "node:cached": "cached", "node:error": "failed", "node:skipped": "skipped" };
const ENDED = new Set(["completed", "cached", "failed", "skipped"]);
const FRAME_BUDGET_MS = 10;

const executionId = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop());

class RunModel {
  constructor(canvas) {
    this.nodes = new Map();      // id -> what the page shows of it
    this.parents = new Map();    // id -> container id
    this.body = new Map();       // container id -> direct body node ids
    for (const n of canvas.nodes || []) {
      this.nodes.set(n.id, this.blank(n));
      if (n.parentId) {
        this.parents.set(n.id, n.parentId);
        if (!this.body.has(n.parentId)) this.body.set(n.parentId, []);
        this.body.get(n.parentId).push(n.id);
      }
    }
    this.status = "pending";
    this.error = null;
    this.approvals = new Map();  // "node|path" -> the node:paused event's data
    this.dirty = new Set();
    this.changed = { status: false, approvals: false };
    this.lastSeq = 0;
    this.count = 0;
  }

  blank(n) {
    return { id: n.id, type: n.type, label: n.data?.label ?? n.id, state: "pending", attempts: 0, output: undefined,
             error: null, retry: null, tokens: "", tokenAttempt: 0, path: [],
             total: containerTotal(n), started: new Set(), ended: new Map(), done: 0 };
  }

  /** States from the stored result of a run that ended: what shows when its events are
   * gone (older than the event log's retention); the events, if any, then replay over it. */
  baseline(execution) {
    for (const [id, stored] of Object.entries(execution.nodes || {})) {
      const node = this.node(id, stored);
      node.state = stored.status || node.state;
      node.output = stored.output;
      node.error = stored.error || null;
      node.attempts = stored.attempts || 0;
      this.dirty.add(id);
    }
    this.status = execution.status;
    this.error = execution.error || null;
    this.changed.status = true;
  }

  node(id, data) {
    if (!this.nodes.has(id)) this.nodes.set(id, this.blank({ id, type: data?.type, data: { label: data?.label } }));
    return this.nodes.get(id);
  }

  apply(type, seq, data) {
    if (seq && seq <= this.lastSeq) return;  // already seen (a reconnection that overlapped)
    if (seq) this.lastSeq = seq;
    this.count += 1;
    if (type.startsWith("execution:")) return this.applyRun(type, data);
    const node = this.node(data.node_id, data);
    const path = data.path || [];
    this.dirty.add(node.id);
    if (type === "stream:chunk") {
      if ((data.attempt || 1) > node.tokenAttempt) { node.tokens = ""; node.tokenAttempt = data.attempt || 1; }
      if ((data.attempt || 1) === node.tokenAttempt) node.tokens += data.text ?? "";
      return;
    }
    if (type === "stream:done") return;
    const state = NODE_STATE[type];
    if (!state) return;
    node.state = state;
    node.path = path;
    if (type === "node:started") { node.error = null; node.retry = null; }
    if (type === "node:retrying") node.retry = data;
    if (type === "node:error") node.error = data.error;
    if ("attempts" in data) node.attempts = data.attempts;
    if ("output" in data && type !== "node:error") node.output = data.output;
    if (type === "node:paused") {
      this.approvals.set(approvalKey(node.id, path), data);
      this.changed.approvals = true;
    } else if (ENDED.has(state) && this.approvals.delete(approvalKey(node.id, path))) {
      this.changed.approvals = true;
    }
    this.progress(node.id, path, type, state);
  }

  /** Iterations of the enclosing container: index path[depth] of its direct body. */
  progress(id, path, type, state) {
    const parentId = this.parents.get(id);
    if (!parentId || !path.length) return;
    const parent = this.nodes.get(parentId);
    const index = path[path.length - 1];
    if (type === "node:started") parent.started.add(index);
    if (ENDED.has(state)) {
      const ended = (parent.ended.get(index) || 0) + 1;
      parent.ended.set(index, ended);
      if (ended === (this.body.get(parentId) || []).length) parent.done += 1;
    }
    this.dirty.add(parentId);
  }

  applyRun(type, data) {
    this.changed.status = true;
    if (type === "execution:started") this.status = "running";
    else if (type === "execution:paused") this.status = "paused";
    else if (type === "execution:resumed") this.status = "running";
    else if (FINAL.has(type)) {
      this.status = data.status || type.split(":")[1];
      this.error = data.error || null;
      if (this.status !== "completed") {
        for (const node of this.nodes.values()) {
          if (node.state === "running" || node.state === "retrying" || node.state === "paused") {
            node.state = "cancelled";
            this.dirty.add(node.id);
          }
        }
      }
      this.approvals.clear();
      this.changed.approvals = true;
      this.output = data.output;
    }
  }
}

function containerTotal(n) {
  const d = n.data || {};
  if (n.type === "loop" && d.mode === "for" && Number.isInteger(d.count)) return d.count;
  if (n.type === "parallel" && d.mode === "count" && Number.isInteger(d.count)) return d.count;
  if (Array.isArray(d.items)) return d.items.length;
  return null;
}

function approvalKey(id, path) {
  return `${id}|${(path || []).join(",")}`;
}

class RunPage {
  constructor(execution, canvas) {
    this.execution = execution;
    this.model = new RunModel(canvas);
    this.queue = [];
    this.selected = null;
    this.schedule = frameScheduler(() => this.flush());
    this.drawn = drawCanvas(canvas);
    this.build();
  }

  build() {
    const prefect = PREFECT_UI ? `${PREFECT_UI}/runs/flow-run/${encodeURIComponent(executionId)}` : null;
    this.statusBadge = el("span", { class: "status", "data-role": "run-status", "data-status": "pending" }, "pending");
    this.counter = el("span", { class: "muted", "data-role": "event-count" }, "0 events");
    this.banner = el("div", { class: "banner", "data-role": "run-error", hidden: true });
    this.approvalsBox = el("section", { class: "approvals", "data-role": "approvals" });
    this.details = el("section", { class: "details", "data-role": "details" },
                      el("p", { class: "muted" }, "Select a node to see its output."));
    const title = el("div", { class: "title" },
      el("h1", {}, this.execution.workflow || "run"),
      el("span", { class: "muted" }, `version ${this.execution.version ?? "?"} · ${executionId}`),
      this.statusBadge, this.counter,
      prefect ? el("a", { href: prefect, target: "_blank", rel: "noopener", "data-role": "prefect-link" },
                   "Open in the Prefect UI") : null);
    const frame = canvasFrame(this.drawn.root);
    title.append(el("button", { type: "button", class: "secondary", "data-role": "fit",
                                onclick: () => frame.classList.toggle("fit") }, "Fit / actual size"));
    document.body.append(header(), el("main", { class: "run" }, title, this.banner,
      el("div", { class: "split" }, frame,
         el("aside", {}, this.approvalsBox, this.details))));
    this.drawn.root.addEventListener("click", (event) => {
      const g = event.target.closest?.("[data-node-id]");
      if (g) this.select(g.getAttribute("data-node-id"));
    });
    this.drawn.root.addEventListener("keydown", (event) => {  // nodes are focusable: Tab, then Enter
      const g = event.target.closest?.("[data-node-id]");
      if (g && (event.key === "Enter" || event.key === " ")) {
        event.preventDefault();
        this.select(g.getAttribute("data-node-id"));
      }
    });
  }

  push(type, seq, raw) {
    this.queue.push([type, seq, raw]);
    this.schedule();
  }

  /** Applies queued events for at most a frame's budget, then redraws what changed. */
  flush() {
    const started = performance.now();
    let i = 0;
    for (; i < this.queue.length; i++) {
      const [type, seq, raw] = this.queue[i];
      let data;
      try { data = JSON.parse(raw); } catch { continue; }
      this.model.apply(type, seq, data);
      if (FINAL.has(type)) this.finalSeen = true;
      if (performance.now() - started > FRAME_BUDGET_MS) { i++; break; }
    }
    this.queue.splice(0, i);
    this.render();
    if (this.queue.length) this.schedule();
    else if (this.finalSeen && !this.finalMarked) {
      this.finalMarked = true;
      performance.mark("fm:final");
      document.body.dataset.caughtUp = "true";
    }
  }

  render() {
    const m = this.model;
    for (const id of m.dirty) this.renderNode(id);
    if (this.selected && m.dirty.has(this.selected)) this.renderDetails();
    m.dirty.clear();
    if (m.changed.status) this.renderStatus();
    if (m.changed.approvals) this.renderApprovals();
    m.changed.status = m.changed.approvals = false;
    this.counter.textContent = `${m.count} events`;
    document.body.dataset.lastEventId = String(m.lastSeq);
  }

  renderNode(id) {
    const view = this.drawn.views.get(id), node = this.model.nodes.get(id);
    if (!view) return;  // not on the canvas (the version was deleted): its state is in the details only
    if (view.g.getAttribute("data-state") !== node.state) view.g.setAttribute("data-state", node.state);
    let text = "", tip = `${node.label} (${node.type}, id ${id}): ${node.state}`;
    if (view.g.classList.contains("container")) {
      // The total is known up front for a literal count or list, otherwise once it ended.
      const ended = node.output?.iterations ?? node.output?.results?.length;
      const total = node.total ?? (Number.isInteger(ended) ? ended : null);
      const of = total === null ? "" : `/${total}`;
      if (node.type === "loop" && node.started.size) text = `iteration ${node.started.size}${of}`;
      else if (node.started.size) text = `${node.done}${of} branches done`;
    } else if (node.error) {
      text = `⚠ ${node.error.message ?? node.error.type ?? "failed"}`;
      tip += `\n${node.error.type ?? "error"}: ${node.error.message ?? ""}`;
      view.g.setAttribute("data-error", node.error.message ?? "failed");
    } else if (node.retry) {
      text = `attempt ${node.retry.attempt} failed; retrying in ${node.retry.next_attempt_in_s ?? "?"} s`;
    } else if (node.tokens) {
      text = node.tokens.length > view.chars ? `…${node.tokens.slice(-view.chars + 1)}` : node.tokens;
    } else if (node.state === "paused") {
      text = "waiting for approval";
    } else if (node.attempts > 1) {
      text = `${node.attempts} attempts`;
    }
    text = clip(text, view.chars);
    if (view.detail && view.detail.textContent !== text) view.detail.textContent = text;
    if (node.tokens && view.g.getAttribute("data-tokens") !== node.tokens) view.g.setAttribute("data-tokens", node.tokens);
    view.title.textContent = tip;
  }

  renderStatus() {
    const m = this.model;
    document.title = `${m.status} · ${this.execution.workflow || "run"} · FlowMaestro`;
    this.statusBadge.textContent = m.status;
    this.statusBadge.dataset.status = m.status;
    document.body.dataset.runStatus = m.status;
    if (m.error) {
      const where = m.error.node_id ? ` (node ${m.error.node_id})` : "";
      this.banner.textContent = `Run ${m.status}${where}: ${m.error.message ?? m.error.type ?? ""}`;
      this.banner.hidden = false;
      if (m.error.node_id) this.select(m.error.node_id);
    }
  }

  renderApprovals() {
    // Forms stay while their approval waits: what someone is typing survives other events.
    const shown = new Map([...this.approvalsBox.children].map((form) => [form.dataset.approval, form]));
    for (const [key, form] of shown) if (!this.model.approvals.has(key)) form.remove();
    for (const [key, data] of this.model.approvals) {
      if (shown.has(key)) continue;
      const label = this.model.nodes.get(data.node_id)?.label;
      this.approvalsBox.append(approvalForm({ ...data, label }, (input) => api(
        `/api/executions/${encodeURIComponent(executionId)}/resume`,
        { method: "POST", body: { node_id: data.node_id, path: data.path || [], input } }), key));
    }
  }

  select(id) {
    this.selected = id;
    for (const g of this.drawn.root.querySelectorAll(".selected")) g.classList.remove("selected");
    this.drawn.views.get(id)?.g.classList.add("selected");
    this.renderDetails();
  }

  renderDetails() {
    const node = this.model.nodes.get(this.selected);
    if (!node) return;
    const rows = [el("h2", {}, node.label), el("p", {}, el("span", { class: "status", "data-status": node.state }, node.state),
                 ` ${node.type ?? ""} · id ${node.id}${node.path.length ? ` · path [${node.path.join(", ")}]` : ""}`)];
    if (node.error) rows.push(el("h3", {}, "Error"), el("pre", { class: "error", "data-role": "node-error" },
                                                        `${node.error.type ?? "error"}: ${node.error.message ?? ""}`));
    if (node.tokens) rows.push(el("h3", {}, "Tokens"), el("pre", { "data-role": "node-tokens" }, node.tokens));
    if (node.output !== undefined) rows.push(el("h3", {}, "Output"), el("pre", {}, shortJson(node.output)));
    this.details.replaceChildren(...rows);
  }
}

/** Follows the stream with a stream token, and reconnects from the last event received.
 *
 * It does not leave reconnection to the browser: its EventSource would retry with the same
 * URL (a token that may have expired) after its own delay, and some paths (proxies,
 * interception) drop the Last-Event-ID header it sends. The page knows the last id it got,
 * so it reopens with ?after= that id (the server's equivalent of Last-Event-ID), with the
 * token while it is valid and a new one otherwise. */
class Follower {
  constructor(page) {
    this.page = page;
    this.delay = 500;
    this.token = null;
    this.expires = 0;
  }

  async open() {
    const run = encodeURIComponent(executionId);
    if (!this.token || Date.now() > this.expires - 5000) {
      const issued = await api(`/api/executions/${run}/stream-token`, { method: "POST" });
      this.token = issued.token;
      this.expires = Date.parse(issued.expires_at);
    }
    const after = lastQueued(this.page);
    const source = new EventSource(`${API}/api/executions/${run}/stream?token=${encodeURIComponent(this.token)}`
                                   + (after ? `&after=${after}` : ""));
    this.source = source;
    for (const type of EVENT_TYPES) {
      source.addEventListener(type, (event) => {
        this.delay = 500;
        this.page.push(type, Number(event.lastEventId) || 0, event.data);
        if (FINAL.has(type)) {  // the server ends the stream here: no reconnection
          this.done = true;
          source.close();
        }
      });
    }
    let opened = false;
    source.onopen = () => { opened = true; document.body.dataset.stream = "open"; };
    source.onerror = () => {
      source.close();
      if (this.done) return;
      document.body.dataset.stream = "reconnecting";
      // A refusal (401/403) is an error before the stream opened, with no status to read:
      // the next attempt asks for a new token, in case this one expired.
      if (!opened) this.token = null;
      this.retryLater();
    };
  }

  retryLater() {
    setTimeout(() => this.open().catch(() => this.retryLater()), this.delay);
    this.delay = Math.min(this.delay * 2, 15000);
  }
}

function lastQueued(page) {
  const last = page.queue[page.queue.length - 1];
  return Math.max(page.model.lastSeq, last ? last[1] : 0);
}

async function main() {
  let execution, canvas;
  try {
    execution = await api(`/api/executions/${encodeURIComponent(executionId)}`);
  } catch (error) {
    document.body.append(header(), el("main", {}, el("p", { class: "banner", "data-role": "load-error" },
      error instanceof ApiError && error.status === 404 ? `No run ${executionId} for this key.` : String(error.message))));
    return;
  }
  try {
    const workflow = await api(`/api/workflows/${encodeURIComponent(execution.workflow_id)}?version=${execution.version}`);
    canvas = workflow.canvas;
  } catch {
    canvas = null;  // its workflow was deleted: the run's status and events still show
  }
  const page = new RunPage(execution, canvas || { nodes: [], edges: [] });
  if (!canvas) {
    page.banner.textContent = "The workflow of this run was deleted: its canvas cannot be drawn.";
    page.banner.hidden = false;
  }
  // Painted: the frame that draws the canvas has been rendered (its style and layout too).
  requestAnimationFrame(() => setTimeout(() => {
    performance.mark("fm:first-paint");
    document.body.dataset.painted = "true";
  }));
  if (["completed", "failed", "cancelled"].includes(execution.status)) {
    page.model.baseline(execution);
    page.schedule();
  }
  // A run started from the Prefect UI or a schedule has no stream until a worker takes it.
  const follower = new Follower(page);
  follower.open().catch(() => follower.retryLater());
  window.__flowmaestro = page;  // for poking at in the browser's console
}

main();

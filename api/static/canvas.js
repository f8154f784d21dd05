// The canvas as an SVG: nodes where the React Flow export put them, edges between them.
//
// React Flow keeps a child's position relative to its parent (parentId) and a node's size
// in width/height or measured; canvases written by hand often have neither, so a scope
// (the top level, or one container's body) with a node lacking a position is laid out
// left to right by depth along its edges. Containers are drawn around their body.
//
// Positions written by hand (or by an editor whose nodes were smaller than ours) may make
// boxes overlap once drawn, a container grown around its body above all: the nodes of a
// scope are then moved right, in the order of their x, just enough that no two overlap
// (``separate``). A node's label and its type are on lines of their own, so neither runs
// into the other.

import { el, svg } from "./common.js";
import { NodeStatus } from "../vocabulary.js";

const NODE_W = 180, NODE_H = 64, GAP_X = 60, GAP_Y = 26, PAD = 20, HEADER = 44, SEPARATION = 24;
const CONTAINERS = new Set(["loop", "parallel"]);

function given(node) {
  const p = node.position;
  return p && Number.isFinite(p.x) && Number.isFinite(p.y) ? { x: p.x, y: p.y } : null;
}

function givenSize(node) {
  const w = node.measured?.width ?? node.width ?? node.style?.width;
  const h = node.measured?.height ?? node.height ?? node.style?.height;
  return Number.isFinite(w) && Number.isFinite(h) ? { w, h } : null;
}

/** Positions (absolute) and sizes of every node: Map id -> {x, y, w, h, depth}. */
export function layout(canvas) {
  const nodes = (canvas.nodes || []).filter((n) => n && typeof n.id === "string");
  const byId = new Map(nodes.map((n) => [n.id, n]));
  const children = new Map();  // container id (or "") -> its body
  for (const n of nodes) {
    const parent = byId.has(n.parentId) ? n.parentId : "";
    if (!children.has(parent)) children.set(parent, []);
    children.get(parent).push(n);
  }
  const edges = (canvas.edges || []).filter((e) => e && byId.has(e.source) && byId.has(e.target));
  const local = new Map();  // id -> {x, y} relative to its scope's origin
  const size = new Map();

  // Bottom-up: a container's size follows from its laid-out body.
  const scopeSize = (scopeId, guard = new Set()) => {
    if (guard.has(scopeId)) return { w: NODE_W, h: NODE_H };  // parentId cycle (the compiler reports it)
    guard.add(scopeId);
    const body = children.get(scopeId) || [];
    for (const n of body) {
      const own = givenSize(n);
      if (children.has(n.id)) {
        const inner = scopeSize(n.id, guard);
        size.set(n.id, own || { w: Math.max(inner.w + 2 * PAD, NODE_W), h: inner.h + HEADER + PAD });
      } else {
        size.set(n.id, own || { w: NODE_W, h: NODE_H });
      }
    }
    const autoLayout = body.some((n) => !given(n));
    const offset = scopeId ? { x: PAD, y: HEADER } : { x: 0, y: 0 };
    if (autoLayout) placeByDepth(body, edges, size, local, offset);
    else {
      for (const n of body) local.set(n.id, given(n));
      separate(body, size, local);
    }
    let w = 0, h = 0;
    for (const n of body) {
      const p = local.get(n.id), s = size.get(n.id);
      w = Math.max(w, p.x + s.w - (autoLayout ? offset.x : 0));
      h = Math.max(h, p.y + s.h - (autoLayout ? offset.y : 0));
    }
    return { w, h };
  };
  scopeSize("");
  for (const n of nodes) if (!local.has(n.id)) {  // in a parentId cycle: put it aside
    local.set(n.id, { x: 0, y: 0 });
    size.set(n.id, { w: NODE_W, h: NODE_H });
  }

  const boxes = new Map();
  const absolute = (id, seen = new Set()) => {
    if (boxes.has(id)) return boxes.get(id);
    const n = byId.get(id), p = local.get(id), s = size.get(id);
    const parent = byId.has(n.parentId) && !seen.has(n.parentId) ? n.parentId : null;
    seen.add(id);
    const base = parent ? absolute(parent, seen) : { x: 0, y: 0, depth: -1 };
    const box = { x: base.x + p.x, y: base.y + p.y, w: s.w, h: s.h, depth: base.depth + 1 };
    boxes.set(id, box);
    return box;
  };
  for (const n of nodes) absolute(n.id);
  return { nodes, edges, boxes };
}

/** Moves the nodes of a scope right, in the order of their x, until no two boxes overlap
 * (with SEPARATION between them): every node keeps its place relative to the others. */
function separate(body, size, local) {
  const order = [...body].sort((a, b) => local.get(a.id).x - local.get(b.id).x || local.get(a.id).y - local.get(b.id).y);
  const placed = [];
  let shift = 0;
  for (const n of order) {
    const p = local.get(n.id), s = size.get(n.id);
    let x = p.x + shift;
    for (const q of placed) {
      const apart = q.y + q.h + SEPARATION <= p.y || p.y + s.h + SEPARATION <= q.y || q.x + q.w + SEPARATION <= x;
      if (!apart) x = Math.max(x, q.x + q.w + SEPARATION);
    }
    shift = x - p.x;
    local.set(n.id, { x, y: p.y });
    placed.push({ x, y: p.y, w: s.w, h: s.h });
  }
}

/** Columns by longest path from the scope's roots; rows in document order. */
function placeByDepth(body, edges, size, local, offset) {
  const ids = new Set(body.map((n) => n.id));
  const inScope = edges.filter((e) => ids.has(e.source) && ids.has(e.target));
  const indegree = new Map(body.map((n) => [n.id, 0]));
  for (const e of inScope) indegree.set(e.target, indegree.get(e.target) + 1);
  const level = new Map();
  const queue = body.filter((n) => indegree.get(n.id) === 0).map((n) => n.id);
  for (const id of queue) level.set(id, 0);
  for (let i = 0; i < queue.length; i++) {
    const id = queue[i];
    for (const e of inScope) if (e.source === id) {
      level.set(e.target, Math.max(level.get(e.target) ?? 0, level.get(id) + 1));
      indegree.set(e.target, indegree.get(e.target) - 1);
      if (indegree.get(e.target) === 0) queue.push(e.target);
    }
  }
  const deepest = Math.max(0, ...level.values());
  for (const n of body) if (!level.has(n.id)) level.set(n.id, deepest + 1);  // on a cycle
  const columns = [];
  for (const n of body) (columns[level.get(n.id)] ||= []).push(n);
  let x = offset.x;
  for (const column of columns) {
    if (!column) continue;
    let y = offset.y, widest = 0;
    for (const n of column) {
      const s = size.get(n.id);
      local.set(n.id, { x, y });
      y += s.h + GAP_Y;
      widest = Math.max(widest, s.w);
    }
    x += widest + GAP_X;
  }
}

/** Draws the canvas into a new <svg>; views of its nodes and edges by id. */
export function drawCanvas(canvas) {
  const { nodes, edges, boxes } = layout(canvas);
  let maxX = 0, maxY = 0, minX = 0, minY = 0;
  for (const b of boxes.values()) {
    minX = Math.min(minX, b.x); minY = Math.min(minY, b.y);
    maxX = Math.max(maxX, b.x + b.w); maxY = Math.max(maxY, b.y + b.h);
  }
  const margin = 24;
  const width = maxX - minX + 2 * margin, height = maxY - minY + 2 * margin;
  const root = svg("svg", { class: "canvas", width, height, viewBox: `${minX - margin} ${minY - margin} ${width} ${height}`,
                            role: "img", "aria-label": "workflow canvas", "data-width": width, "data-height": height });
  // Fitted to its frame, a small canvas grows at most this much (its text stays readable, not huge).
  root.style.setProperty("--fit-max-width", `${Math.round(width * 1.6)}px`);
  const defs = svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7,
                                              markerHeight: 7, orient: "auto-start-reverse" },
                                   svg("path", { d: "M0,0 L10,5 L0,10 z", class: "arrowhead" })));
  const containerLayer = svg("g", {}), edgeLayer = svg("g", {}), nodeLayer = svg("g", {}), labelLayer = svg("g", {});
  root.append(defs, containerLayer, edgeLayer, nodeLayer, labelLayer);  // handle labels stay readable on top

  const views = new Map();
  const ordered = [...nodes].sort((a, b) => boxes.get(a.id).depth - boxes.get(b.id).depth);
  for (const n of ordered) {
    const box = boxes.get(n.id);
    const container = CONTAINERS.has(n.type);
    const label = String(n.data?.label ?? n.id);
    const title = svg("title", {}, `${label} (${n.type ?? "?"}, id ${n.id})`);
    // Three lines: the label, the type, what the run says of it (the detail, or a container's progress).
    const detail = svg("text", { class: "detail", x: 10, y: 54, "data-role": "detail" });
    const g = svg("g", { class: container ? "node container" : "node", "data-node-id": n.id, "data-type": n.type ?? "",
                         "data-state": NodeStatus.PENDING, transform: `translate(${box.x},${box.y})`, tabindex: 0 },
      title,
      svg("rect", { class: "box", width: box.w, height: box.h, rx: 8 }),
      svg("text", { class: "label", x: 10, y: 19 }, clip(label, Math.floor((box.w - 16) / 8))),
      svg("text", { class: "kind", x: 10, y: 35 }, clip(n.type ?? "", Math.floor((box.w - 16) / 6.5))),
      container ? svg("text", { class: "progress", x: box.w - 10, y: 35, "text-anchor": "end", "data-role": "progress" })
                : detail);
    (container ? containerLayer : nodeLayer).append(g);
    views.set(n.id, { g, title, detail: container ? g.querySelector('[data-role="progress"]') : detail, box,
                      node: n, chars: Math.floor(box.w / 7) });
  }
  const edgeViews = new Map();
  edges.forEach((e, index) => {
    const a = boxes.get(e.source), b = boxes.get(e.target);
    const x1 = a.x + a.w, y1 = a.y + a.h / 2, x2 = b.x, y2 = b.y + b.h / 2;
    const bend = Math.max(40, Math.abs(x2 - x1) / 2);
    const handle = e.sourceHandle || "source";
    const path = svg("path", { class: `edge${handle === "error" ? " error-edge" : ""}`, "data-edge-id": e.id ?? `edges[${index}]`,
                               d: `M${x1},${y1} C${x1 + bend},${y1} ${x2 - bend},${y2} ${x2},${y2}`,
                               "marker-end": "url(#arrow)" });
    edgeLayer.append(path);
    if (handle !== "source") {
      labelLayer.append(svg("text", { class: "edge-label", x: (x1 + x2) / 2, y: (y1 + y2) / 2 + 3,
                                      "text-anchor": "middle" }, handle));
    }
    edgeViews.set(e.id ?? `edges[${index}]`, path);
  });
  return { root, views, edges: edgeViews };
}

export function clip(text, chars) {
  text = String(text);
  return text.length > chars ? `${text.slice(0, Math.max(1, chars - 1))}…` : text;
}

/** A frame for the SVG: ``fit`` scales the canvas to the frame, otherwise it scrolls. */
export function canvasFrame(content, { fit = false } = {}) {
  return el("div", { class: fit ? "canvas-frame fit" : "canvas-frame" }, content);
}

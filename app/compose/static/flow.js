/* The event-flow page: polls /api/v1/flow, draws sources → sensors → objects with SVG
   edges, and shows traces and dead letters in the side panel. Plain JavaScript, no
   libraries, nothing fetched from anywhere but this server. */
"use strict";

const POLL_MS = 2000;
const state = {
  token: sessionStorage.getItem("triggerfish-token") || "",
  flow: null,
  signature: "",
  collapsed: new Map(), // card id -> bool (user's choice)
  closedGroups: new Set(),
  selected: "",
  filter: "",
  panel: null, // function that re-renders the panel
};

// -- helpers ------------------------------------------------------------------------
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

async function api(path, options) {
  const headers = {};
  if (state.token) headers.Authorization = "Bearer " + state.token;
  const r = await fetch(path, { ...(options || {}), headers });
  if (r.status === 401) {
    askToken();
    throw new Error("the API token is missing or wrong");
  }
  let body = null;
  try { body = await r.json(); } catch (e) { body = null; }
  if (!r.ok) {
    const detail = body && body.detail ? (typeof body.detail === "string" ? body.detail
      : JSON.stringify(body.detail)) : r.statusText;
    throw new Error(r.status + ": " + detail);
  }
  return body;
}

function askToken() {
  const d = document.getElementById("token-dialog");
  if (!d.open) d.showModal();
}

function qs(params) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v) p.set(k, v);
  return p.toString();
}

function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toLocaleTimeString();
}

function statusDot(status) {
  const cls = status.state === "ready" ? "" : status.state === "error" ? "error" : "notready";
  return el("span", { class: "dot " + cls, title: status.state + (status.reason ? ": " + status.reason : "") });
}

function badges(window, kinds) {
  return el("span", { class: "badges" }, kinds.map(([key, label, cls]) => {
    const n = window[key] || 0;
    return el("span", { class: "badge " + cls + (n ? "" : " zero"), "data-count": key }, n + " " + label);
  }));
}

const SOURCE_KINDS = [["published", "received", "received"], ["filtered", "filtered", "filtered"],
  ["failed", "failed", "failed"]];
const DEP_KINDS = [["received", "received", "received"], ["filtered", "filtered", "filtered"],
  ["failed", "failed", "failed"]];
const TRIGGER_KINDS = [["fired", "fired", "fired"], ["failed", "failed", "failed"],
  ["deadLettered", "dead-lettered", "dead"]];

function matchesFilter(...names) {
  if (!state.filter) return true;
  return names.some((n) => n && n.toLowerCase().includes(state.filter));
}

function sum(list, pick) {
  const out = {};
  for (const x of list) for (const [k, v] of Object.entries(pick(x) || {})) out[k] = (out[k] || 0) + v;
  return out;
}

// cluster mode: how many pods of the object report now (their names on hover)
function podsNote(x) {
  if (!x.pods) return null;
  const n = x.pods.length;
  return el("span", { class: "meta pods", "data-pods": n, title: x.pods.join("\n") || "no pod reports" },
    `${n} pod${n === 1 ? "" : "s"}`);
}

function byNamespace(items) {
  const groups = new Map();
  for (const x of items) {
    if (!groups.has(x.namespace)) groups.set(x.namespace, []);
    groups.get(x.namespace).push(x);
  }
  return groups;
}

// -- graph --------------------------------------------------------------------------
function isCollapsed(id, many) {
  return state.collapsed.has(id) ? state.collapsed.get(id) : many;
}

function card(id, title, status, headExtra, body, many) {
  const collapsed = isCollapsed(id, many);
  const c = el("div", { class: "card" + (collapsed ? " collapsed" : "") + (state.selected === id ? " sel" : ""),
    "data-node": id });
  const toggle = el("button", { class: "toggle", type: "button", title: "collapse / expand",
    "aria-label": "collapse or expand " + title,
    onclick: (e) => { e.stopPropagation(); state.collapsed.set(id, !c.classList.contains("collapsed"));
      c.classList.toggle("collapsed"); drawEdges(); } }, collapsed ? "▸" : "▾");
  const head = el("div", { class: "card-head", onclick: () => select(id) },
    statusDot(status), el("span", { class: "name", title }, title), headExtra, toggle);
  c.append(head, el("div", { class: "card-body" }, body));
  return c;
}

function group(column, namespace, count, kind, children) {
  const key = kind + ":" + namespace;
  const d = el("details", { class: "group", open: !state.closedGroups.has(key) },
    el("summary", { "data-group": key }, `namespace ${namespace} · ${count} ${count === 1 ? kind.replace(/s$/, "") : kind}`), children);
  d.addEventListener("toggle", (e) => {
    const k = e.currentTarget.querySelector("summary").dataset.group; // the element may be reused
    if (e.currentTarget.open) state.closedGroups.delete(k); else state.closedGroups.add(k);
    drawEdges();
  });
  column.append(d);
}

function render() {
  const f = state.flow;
  // built detached, then merged into the page (see morph): a poll that only moves
  // counts keeps focus, hover and scroll where they are
  const live = ["col-sources", "col-sensors", "col-objects"].map((id) => document.getElementById(id));
  const [colS, colN, colO] = live.map((c) => { const n = c.cloneNode(false); n.append(c.firstElementChild.cloneNode(true)); return n; });
  const manySources = f.eventSources.length > 15;
  const manySensors = f.sensors.length > 12;

  const sensors = f.sensors.filter((s) => matchesFilter(s.name, ...s.triggers.map((t) => t.name),
    ...s.dependencies.map((d) => d.eventSourceName + " " + d.name)));
  const fed = new Set(sensors.flatMap((s) => s.dependencies.map((d) => d.from)));
  // a source stays when it matches or feeds a sensor that does
  const sources = f.eventSources.filter((es) => matchesFilter(es.name, ...es.events.map((e) => e.name)) ||
    (state.filter && es.events.some((e) => fed.has(e.id))));
  for (const [ns, list] of byNamespace(sources)) {
    group(colS, ns, list.length, "event sources", list.map((es) => {
      const worst = es.events.find((e) => e.status.state === "error") ||
        es.events.find((e) => e.status.state !== "ready") || { status: { state: "ready", reason: "" } };
      const rows = es.events.map((ev) => el("div", { class: "row" + (state.selected === ev.id ? " sel" : ""),
        "data-node": ev.id, onclick: (e) => { e.stopPropagation(); select(ev.id); } },
        el("div", { class: "title" }, statusDot(ev.status), el("b", {}, ev.name),
          el("span", { class: "meta" }, ev.type)),
        ev.status.reason ? el("div", { class: "reason" }, ev.status.reason) : null,
        badges(ev.counts.window, SOURCE_KINDS)));
      return card(es.id, es.name, worst.status,
        [podsNote(es), badges(sum(es.events, (e) => ({ published: e.counts.window.published || 0 })), [SOURCE_KINDS[0]])],
        el("div", {}, rows), manySources);
    }));
  }
  if (!sources.length) colS.append(el("div", { class: "empty" }, "no event sources"));

  // within a namespace, sensors in the order of the sources they consume: fewer crossings
  const order = new Map();
  sources.forEach((es) => es.events.forEach((e) => order.set(e.id, order.size)));
  const rank = (s) => Math.min(...s.dependencies.map((d) => order.has(d.from) ? order.get(d.from) : 1e9), 1e9);
  sensors.sort((a, b) => a.namespace.localeCompare(b.namespace) || rank(a) - rank(b) || a.name.localeCompare(b.name));
  for (const [ns, list] of byNamespace(sensors)) {
    group(colN, ns, list.length, "sensors", list.map((s) => {
      const deps = s.dependencies.map((d) => el("div", { class: "row" + (state.selected === d.id ? " sel" : ""),
        "data-node": d.id, onclick: (e) => { e.stopPropagation(); select(d.id); } },
        el("div", { class: "title" }, statusDot(d.status), el("b", {}, d.name)),
        el("div", { class: "meta", title: "consumes " + d.eventSourceName + "/" + d.eventName },
          "← " + d.eventSourceName + "/" + d.eventName),
        d.status.reason ? el("div", { class: "reason" }, d.status.reason) : null,
        badges(d.counts.window, DEP_KINDS)));
      const trigs = s.triggers.map((t) => el("div", { class: "row" + (state.selected === t.id ? " sel" : ""),
        "data-node": t.id, onclick: (e) => { e.stopPropagation(); select(t.id); } },
        el("div", { class: "title" }, statusDot(t.status), el("b", {}, t.name), el("span", { class: "meta" }, t.type)),
        el("div", { class: "meta", title: "condition" }, "when " + t.conditions),
        t.status.reason ? el("div", { class: "reason", title: t.status.reason }, t.status.reason) : null,
        badges(t.counts.window, TRIGGER_KINDS)));
      const triggerErr = s.triggers.find((t) => t.status.state === "error");
      const status = s.status.state !== "ready" ? s.status : triggerErr ? triggerErr.status : s.status;
      const totals = sum(s.triggers, (t) => t.counts.window);
      Object.assign(totals, { received: sum(s.dependencies, (d) => d.counts.window).received || 0 });
      return card(s.id, s.name, status,
        [podsNote(s), badges(totals, [DEP_KINDS[0], TRIGGER_KINDS[0], TRIGGER_KINDS[1]])],
        [el("div", { class: "deps" }, el("div", { class: "sub" }, "dependencies"), deps),
         el("div", { class: "trigs" }, el("div", { class: "sub" }, "triggers"), trigs)],
        manySensors);
    }));
  }
  if (!sensors.length) colN.append(el("div", { class: "empty" }, "no sensors"));

  let anyObjects = false;
  for (const s of sensors) {
    for (const t of s.triggers) {
      if (!t.objects.length) continue;
      anyObjects = true;
      const id = "obj:" + t.id.slice(4);
      colO.append(el("div", { class: "card" + (state.selected === id ? " sel" : ""), "data-node": id },
        el("div", { class: "card-head", onclick: () => select(t.id) },
          el("span", { class: "name wrap" }, s.name + " / " + t.name)),
        el("div", {}, t.objects.slice(0, 3).map((o) => el("div", { class: "row obj",
          "data-event-id": o.eventId,
          onclick: (e) => { e.stopPropagation(); showEvent(e.currentTarget.dataset.eventId); } },
          el("div", {}, o.url
            ? el("a", { href: o.url, target: "_blank", rel: "noopener", onclick: (e) => e.stopPropagation() },
              (o.namespace ? o.namespace + "/" : "") + o.name)
            : el("b", {}, (o.namespace ? o.namespace + "/" : "") + o.name)),
          el("div", { class: "meta" }, el("span", { class: "kind" }, o.kind), " " + o.action + " · " + when(o.time)))))));
    }
  }
  if (!anyObjects) colO.append(el("div", { class: "empty" }, "nothing created yet"));
  live.forEach((c, i) => morph(c, [colS, colN, colO][i]));
  for (const e of document.querySelectorAll("#graph .row, #graph .card-head")) e.tabIndex = 0;
  document.getElementById("window").textContent = Math.round(f.windowSeconds / 60) + " min";
  drawEdges();
}

// Make ``old`` look like ``fresh``, reusing old nodes where the shape is the same
// (listeners read what they need from attributes, so a reused node stays right).
function morph(old, fresh) {
  if (old.nodeType === Node.TEXT_NODE) {
    if (old.nodeValue !== fresh.nodeValue) old.nodeValue = fresh.nodeValue;
    return;
  }
  for (const a of [...old.attributes]) if (!fresh.hasAttribute(a.name) && a.name !== "tabindex") old.removeAttribute(a.name);
  for (const a of fresh.attributes) if (old.getAttribute(a.name) !== a.value) old.setAttribute(a.name, a.value);
  const oc = [...old.childNodes], fc = [...fresh.childNodes];
  for (let i = 0; i < Math.max(oc.length, fc.length); i++) {
    if (i >= fc.length) oc[i].remove();
    else if (i >= oc.length) old.append(fc[i]);
    else if (oc[i].nodeType !== fc[i].nodeType || oc[i].nodeName !== fc[i].nodeName ||
      (oc[i].dataset && oc[i].dataset.node !== fc[i].dataset.node)) old.replaceChild(fc[i], oc[i]);
    else morph(oc[i], fc[i]);
  }
}

function visibleAnchor(id) {
  let e = document.querySelector(`[data-node="${CSS.escape(id)}"]`);
  if (!e) return null;
  if (e.offsetParent !== null) return e;
  const c = e.closest(".card");
  if (c && c.offsetParent !== null) return c.querySelector(".card-head");
  const g = e.closest("details.group");
  return g ? g.querySelector("summary") : null;
}

function edgeList() {
  const out = [];
  for (const s of state.flow.sensors) {
    for (const d of s.dependencies) {
      out.push({ from: d.from, to: d.id, select: d.id, counts: d.counts.window,
        label: (c) => `${c.received || 0} in` + (c.filtered ? ` · ${c.filtered} filtered` : "") +
          (c.failed ? ` · ${c.failed} failed` : "") });
    }
    for (const t of s.triggers) {
      if (!t.objects.length) continue;
      out.push({ from: t.id, to: "obj:" + t.id.slice(4), select: t.id, counts: t.counts.window,
        label: (c) => `${c.fired || 0} fired` + (c.failed ? ` · ${c.failed} failed` : "") +
          (c.deadLettered ? ` · ${c.deadLettered} dead-lettered` : "") });
    }
  }
  return out;
}

function drawEdges() {
  const svg = document.getElementById("edges");
  const graph = document.getElementById("graph");
  svg.replaceChildren();
  if (!state.flow) return;
  const box = graph.getBoundingClientRect();
  const merged = new Map();
  const ids = new Map();
  const idOf = (node) => { if (!ids.has(node)) ids.set(node, ids.size); return ids.get(node); };
  for (const e of edgeList()) {
    const a = visibleAnchor(e.from), b = visibleAnchor(e.to);
    if (!a || !b) continue;
    const k = idOf(a) + "->" + idOf(b);
    const m = merged.get(k) || { a, b, edges: [], counts: {} };
    m.edges.push(e);
    for (const [n, v] of Object.entries(e.counts)) m.counts[n] = (m.counts[n] || 0) + v;
    merged.set(k, m);
  }
  const NS = "http://www.w3.org/2000/svg";
  for (const m of merged.values()) {
    const ra = m.a.getBoundingClientRect(), rb = m.b.getBoundingClientRect();
    const x1 = ra.right - box.left, y1 = ra.top + Math.min(ra.height, 40) / 2 - box.top;
    const x2 = rb.left - box.left, y2 = rb.top + Math.min(rb.height, 40) / 2 - box.top;
    const dx = Math.max(30, (x2 - x1) / 2);
    const p = document.createElementNS(NS, "path");
    p.setAttribute("d", `M${x1},${y1} C${x1 + dx},${y1} ${x2 - dx},${y2} ${x2},${y2}`);
    const first = m.edges[0];
    const hot = Object.values(m.counts).some((v) => v > 0);
    const bad = (m.counts.failed || 0) > 0;
    p.setAttribute("class", (hot ? "hot " : "") + (bad ? "bad " : "") +
      (m.edges.some((e) => e.select === state.selected) ? "sel" : ""));
    p.dataset.edge = first.select;
    p.addEventListener("click", () => select(first.select));
    svg.append(p);
    if (!hot) continue; // idle edges carry no label: less clutter at 100 sensors
    const text = first.label(m.counts);
    const g = document.createElementNS(NS, "g");
    g.setAttribute("class", "label");
    g.dataset.edge = first.select;
    g.addEventListener("click", () => select(first.select));
    const t = document.createElementNS(NS, "text");
    t.textContent = text;
    const mx = (x1 + x2) / 2, my = (y1 + y2) / 2;
    t.setAttribute("x", mx);
    t.setAttribute("y", my + 3.5);
    t.setAttribute("text-anchor", "middle");
    const r = document.createElementNS(NS, "rect");
    const w = text.length * 5.9 + 8;
    r.setAttribute("x", mx - w / 2);
    r.setAttribute("y", my - 8);
    r.setAttribute("width", w);
    r.setAttribute("height", 16);
    g.append(r, t);
    svg.append(g);
  }
}

// -- polling ------------------------------------------------------------------------
let polls = 0;
async function poll() {
  const live = document.getElementById("live");
  try {
    const f = await api("/api/v1/flow");
    state.flow = f;
    render();
    const sig = watchSignature(state.selected);
    if (state.reloadTraces && sig !== state.watched) {
      state.watched = sig;
      state.reloadTraces();
    }
    live.textContent = "live · " + new Date().toLocaleTimeString();
    live.className = "";
    if (polls++ % 3 === 0) {
      const dl = await api("/api/v1/deadletters?limit=1000");
      document.getElementById("dlq-count").textContent = dl.length;
    }
  } catch (e) {
    live.textContent = "not updating: " + e.message;
    live.className = "down";
  }
}

// -- panel --------------------------------------------------------------------------
function findNode(id) {
  const f = state.flow;
  for (const es of f.eventSources) {
    if (es.id === id) return { kind: "source", es };
    for (const ev of es.events) if (ev.id === id) return { kind: "event", es, ev };
  }
  for (const s of f.sensors) {
    if (s.id === id) return { kind: "sensor", s };
    for (const d of s.dependencies) if (d.id === id) return { kind: "dependency", s, d };
    for (const t of s.triggers) if (t.id === id) return { kind: "trigger", s, t };
  }
  return null;
}

function watchSignature(id) {
  // the totals of what the open panel lists: when they move, its traces are reloaded
  const n = id ? findNode(id) : null;
  if (!n) return "";
  const totals = (c) => JSON.stringify(c.total);
  if (n.kind === "dependency") return totals(n.d.counts);
  if (n.kind === "trigger") return totals(n.t.counts);
  if (n.kind === "sensor") return n.s.dependencies.map((d) => totals(d.counts)).join();
  const ids = new Set(n.kind === "event" ? [n.ev.id] : n.es.events.map((e) => e.id));
  return state.flow.sensors.flatMap((s) => s.dependencies.filter((d) => ids.has(d.from)))
    .map((d) => totals(d.counts)).join();
}

function openPanel(renderer) {
  state.reloadTraces = null;
  state.watched = watchSignature(state.selected);
  state.panel = renderer;
  document.getElementById("panel").hidden = false;
  renderer();
  requestAnimationFrame(drawEdges);
}

function select(id) {
  state.selected = id;
  const n = findNode(id);
  render();
  if (!n) return;
  if (n.kind === "dependency") {
    openPanel(() => showTraces(`Dependency ${n.d.name} of ${n.s.name}`,
      `consumes ${n.d.eventSourceName}/${n.d.eventName}`,
      [{ namespace: n.s.namespace, sensor: n.s.name, dependency: n.d.name }]));
  } else if (n.kind === "trigger") {
    openPanel(() => showTraces(`Trigger ${n.t.name} of ${n.s.name}`,
      `${n.t.type} · when ${n.t.conditions}` + (n.t.status.reason ? ` · last error: ${n.t.status.reason}` : ""),
      [{ namespace: n.s.namespace, sensor: n.s.name, trigger: n.t.name }],
      { sensor: n.s.name, trigger: n.t.name }));
  } else if (n.kind === "sensor") {
    openPanel(() => showTraces(`Sensor ${n.s.namespace}/${n.s.name}`,
      n.s.status.state + (n.s.status.reason ? ": " + n.s.status.reason : ""),
      [{ namespace: n.s.namespace, sensor: n.s.name }], { sensor: n.s.name }));
  } else if (n.kind === "event" || n.kind === "source") {
    const events = n.kind === "event" ? [n.ev] : n.es.events;
    const ids = new Set(events.map((e) => e.id));
    const queries = [];
    for (const s of state.flow.sensors) for (const d of s.dependencies) {
      if (ids.has(d.from)) queries.push({ namespace: s.namespace, sensor: s.name, dependency: d.name });
    }
    const st = n.kind === "event" ? n.ev.status : { state: "", reason: "" };
    openPanel(() => showTraces(n.kind === "event" ? `Event ${n.es.name}/${n.ev.name}` : `EventSource ${n.es.name}`,
      (st.state ? st.state + (st.reason ? ": " + st.reason : "") + " · " : "") +
      `consumed by ${queries.length} dependenc${queries.length === 1 ? "y" : "ies"}`, queries));
  }
}

function showEvent(eventId) {
  state.selected = "";
  openPanel(() => showTraces(`Event ${eventId}`, "every sensor's trace of this event", [{ eventId }]));
}

function traceKey(t) { return [t.sensor, t.dependency, t.event_id, t.received].join("|"); }

async function showTraces(title, subtitle, queries, dlqFilter) {
  const body = document.getElementById("panel-body");
  const list = el("div", { id: "traces" }, el("div", { class: "note" }, "loading…"));
  const dlq = dlqFilter ? el("div", { id: "panel-dlq" }) : null;
  const outcome = el("select", { id: "outcome", "aria-label": "only traces with this outcome" },
    ["", "fired", "filtered", "failed", "waiting"].map((o) => el("option", { value: o }, o || "every outcome")));
  outcome.addEventListener("change", () => load());
  body.replaceChildren(...[el("h3", {}, title), el("div", { class: "note" }, subtitle),
    el("div", { class: "tools" }, el("button", { type: "button", onclick: () => state.panel && state.panel() },
      "Refresh"), outcome), dlq, list].filter(Boolean));
  if (dlqFilter) renderDeadLetters(dlq, dlqFilter, true);
  let first = true;
  // also called when the node's counts move (see poll): new events appear on their own,
  // the traces the user opened stay open
  const load = async () => {
    const opened = new Set([...list.querySelectorAll(".trace")].filter((d) => d.open).map((d) => d.dataset.key));
    try {
      const results = await Promise.all(queries.map((q) =>
        api("/api/v1/traces?" + qs({ ...q, outcome: outcome.value, limit: 30 }))));
      const traces = results.flat().sort((a, b) => (b.received || "").localeCompare(a.received || "")).slice(0, 30);
      list.replaceChildren(el("h4", {}, `Recent events (${traces.length})`));
      if (!traces.length) list.append(el("div", { class: "empty" }, "no events through here yet"));
      traces.forEach((t, i) => list.append(traceView(t, first ? i === 0 : opened.has(traceKey(t)))));
      first = false;
    } catch (e) {
      list.replaceChildren(el("div", { class: "err" }, "could not load traces: " + e.message));
    }
  };
  state.reloadTraces = load;
  await load();
}

function json(v) { return JSON.stringify(v, null, 2); }

function traceView(t, open) {
  const outcome = t.outcome || (t.filtered ? "filtered" : t.fired ? "fired" : "waiting");
  const b = el("div", { class: "body" });
  b.append(el("div", {}, `${t.namespace}/${t.sensor} · dependency ${t.dependency} · ` +
    `${t.event_source}/${t.event_name} · delivery ${t.delivery} · ${t.received}`));
  b.append(el("h4", {}, "Filters: " + (t.filtered ? "rejected" : "passed")));
  b.append(t.filters.length ? el("ul", { class: "filters" }, t.filters.map((r) => el("li", {}, r)))
    : el("div", { class: "note" }, "no filters"));
  b.append(el("h4", {}, "Conditions"), el("pre", {}, json(t.conditions)));
  if (t.triggers.length) {
    b.append(el("h4", {}, "Triggers"));
    for (const o of t.triggers) {
      const d = o.detail || {};
      b.append(el("div", { class: "outcome" },
        el("span", { class: "badge " + o.status }, o.status), " ", el("b", {}, o.trigger), " ",
        o.action, d.kind ? ` ${d.kind} ${d.namespace ? d.namespace + "/" : ""}${d.name || ""}` : "",
        o.attempts ? ` · ${o.attempts} attempt${o.attempts === 1 ? "" : "s"}` : ""));
      if (o.error) b.append(el("div", { class: "err trigger-error" }, o.error));
      if (o.parameters && o.parameters.length) {
        b.append(el("table", {}, el("tr", {}, ["parameter → dest", "value", "from"].map((h) => el("th", {}, h))),
          o.parameters.map((p) => el("tr", {},
            el("td", {}, p.dest || ""), el("td", {}, el("code", {}, JSON.stringify(p.value))),
            el("td", {}, `${p.source || ""}` + (p.dependency ? ` (${p.dependency})` : "") +
              (p.notes && p.notes.length ? " · " + p.notes.join("; ") : ""))))));
      }
    }
  }
  if (t.error) b.append(el("h4", {}, "Error"), el("div", { class: "err" }, t.error));
  return el("details", { class: "trace", open, "data-event-id": t.event_id, "data-key": traceKey(t) },
    el("summary", {}, el("span", { class: "badge " + outcome }, outcome), el("code", {}, t.event_id || "(restart)"),
      el("span", { class: "note" }, `${t.sensor} · ${t.dependency} · ${when(t.received)}`)), b);
}

async function renderDeadLetters(target, filter, compact) {
  target.replaceChildren(el("div", { class: "note" }, "loading dead letters…"));
  let items;
  try {
    items = await api("/api/v1/deadletters?" + qs({ ...filter, limit: 100 }));
  } catch (e) {
    target.replaceChildren(el("div", { class: "err" }, "could not load dead letters: " + e.message));
    return;
  }
  target.replaceChildren(el("h4", {}, `Dead letters (${items.length})`));
  if (!items.length) {
    target.append(el("div", { class: "empty" }, compact ? "none" : "no dead letters"));
    return;
  }
  for (const d of items) {
    const result = el("div", { class: "result" });
    const replay = el("button", { type: "button", class: "primary replay" }, "Replay");
    const discard = el("button", { type: "button", class: "danger discard" }, "Discard");
    replay.addEventListener("click", async () => {
      replay.disabled = discard.disabled = true;
      result.replaceChildren(el("span", { class: "note" }, "replaying…"));
      try {
        const r = await api(`/api/v1/deadletters/${encodeURIComponent(d.bus)}/${d.seq}/replay?${qs({ namespace: d.namespace })}`, { method: "POST" });
        const o = r.trace.triggers[0] || {};
        result.replaceChildren(r.replayed
          ? el("span", { class: "badge succeeded" }, "replayed: " + (o.action || "ok"))
          : el("span", { class: "err" }, "failed again: " + (o.error || "")), traceView(r.trace, false));
        if (!r.replayed) replay.disabled = discard.disabled = false;
      } catch (e) {
        result.replaceChildren(el("span", { class: "err" }, e.message));
      }
      poll();
    });
    discard.addEventListener("click", async () => {
      replay.disabled = discard.disabled = true;
      try {
        await api(`/api/v1/deadletters/${encodeURIComponent(d.bus)}/${d.seq}?${qs({ namespace: d.namespace })}`, { method: "DELETE" });
        result.replaceChildren(el("span", { class: "note" }, "discarded"));
      } catch (e) {
        result.replaceChildren(el("span", { class: "err" }, e.message));
      }
      poll();
    });
    target.append(el("div", { class: "dl", "data-dead-letter": d.id },
      el("div", {}, el("b", {}, `${d.sensor} / ${d.trigger}`), ` · ${when(d.time)} · ${d.attempts} attempt(s)`),
      el("div", { class: "err" }, d.error),
      el("details", {}, el("summary", {}, `events (${Object.keys(d.events).length})`), el("pre", {}, json(d.events))),
      el("div", { class: "actions" }, replay, discard), result));
  }
}

function showAllDeadLetters() {
  state.selected = "";
  openPanel(() => {
    const body = document.getElementById("panel-body");
    const box = el("div", {});
    body.replaceChildren(el("h3", {}, "Dead letters"),
      el("div", { class: "note" }, "firings whose trigger failed for good; replay runs the trigger again " +
        "with the same events (same idempotency key)"), box);
    renderDeadLetters(box, {}, false);
  });
}

// -- wiring -------------------------------------------------------------------------
document.getElementById("panel-close").addEventListener("click", () => {
  document.getElementById("panel").hidden = true;
  state.panel = null;
  state.reloadTraces = null;
  state.selected = "";
  render();
});
document.getElementById("search-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const id = document.getElementById("search").value.trim();
  if (id) showEvent(id);
});
document.getElementById("filter").addEventListener("input", (e) => {
  state.filter = e.target.value.trim().toLowerCase();
  if (state.flow) render();
});
document.getElementById("dlq-button").addEventListener("click", showAllDeadLetters);
document.getElementById("token-form").addEventListener("submit", () => {
  state.token = document.getElementById("token").value.trim();
  sessionStorage.setItem("triggerfish-token", state.token);
  poll();
});
window.addEventListener("resize", drawEdges);
document.addEventListener("keydown", (e) => {
  // keyboard users: Enter or Space on a focused node opens it, as a click does
  const t = e.target;
  if ((e.key === "Enter" || e.key === " ") && t.matches && t.matches("#graph .row, #graph .card-head")) {
    e.preventDefault();
    t.click();
  }
});
poll();
setInterval(poll, POLL_MS);

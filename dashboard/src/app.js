// The dashboard's pages and its hash router. Every figure comes from the management API
// (api.js); a page mounts its static parts once and then refreshes its figures every
// REFRESH_MS while it is shown and the tab is visible.

import * as api from "./api.js";
import { ApiError, path } from "./api.js";
import {
  $, $$, html, setHtml, raw, num, rate, bytes, duration, pick, args, fact, Table, confirmDialog, notice, formData,
} from "./ui.js";

const REFRESH_MS = 5000;
// Overview charts keep this many samples: ten minutes at one sample per refresh.
const HISTORY_LEN = 120;

const main = $("#main");

// ---------------------------------------------------------------------------------------------
// Router

const routes = [
  [/^login$/, loginPage],
  [/^$/, overviewPage],
  [/^connections$/, connectionsPage],
  [/^channels$/, channelsPage],
  [/^exchanges$/, exchangesPage],
  [/^exchanges\/([^/]+)\/([^/]+)$/, exchangePage],
  [/^queues$/, queuesPage],
  [/^queues\/([^/]+)\/([^/]+)$/, queuePage],
  [/^admin(?:\/(users|vhosts|policies|tracing))?$/, adminPage],
];

let current = null; // { refresh, destroy, gen }
let generation = 0;
let timer = null;

function route() {
  const hash = location.hash.replace(/^#\/?/, "");
  if (!api.credentials() && hash !== "login") {
    sessionStorage.setItem("warren.dashboard.after", hash);
    location.hash = "#/login";
    return;
  }
  if (current?.destroy) current.destroy();
  clearTimeout(timer);
  current = null;
  const gen = ++generation;
  let page = null;
  let params = [];
  for (const [re, fn] of routes) {
    const m = hash.match(re);
    if (m) {
      page = fn;
      params = m.slice(1).map((p) => (p === undefined ? undefined : decodeURIComponent(p)));
      break;
    }
  }
  const loggedIn = !!api.credentials();
  $("#top").hidden = !loggedIn || hash === "login";
  $("#who-name").textContent = api.userName();
  const section = hash.split("/")[0] || "overview";
  $$("nav a").forEach((a) => a.classList.toggle("active", a.dataset.nav === section));
  // Each page gets a fresh element, so the listeners it adds go away with it.
  const el = document.createElement("div");
  el.className = "page";
  main.replaceChildren(el);
  if (!page) {
    setHtml(el, html`<h1>Not found</h1><p>No page at <code>${location.hash}</code>. <a href="#/">Overview</a></p>`);
    return;
  }
  el.dataset.page = page.name;
  current = page(el, ...params) || {};
  current.gen = gen;
  if (current.refresh) tick(gen);
}

async function tick(gen) {
  if (gen !== generation || !current?.refresh) return;
  if (!document.hidden) {
    try {
      await current.refresh();
      main.classList.remove("stale");
    } catch (e) {
      if (gen !== generation) return;
      if (e instanceof ApiError && e.status === 401) return;
      if (e instanceof ApiError && e.status === 404 && current.gone) {
        // The object this page shows no longer exists: say so and stop refreshing.
        setHtml(main.firstElementChild, html`<h1>Not found</h1><p>${current.gone}</p>`);
        return;
      }
      main.classList.add("stale");
      notice(e.message, "error");
    }
  }
  if (gen === generation) timer = setTimeout(() => tick(gen), REFRESH_MS);
}

// Runs an action from a button or form, reports its outcome and refreshes the page.
async function act(fn, okMessage) {
  try {
    await fn();
    if (okMessage) notice(okMessage, "ok");
    if (current?.refresh) await current.refresh().catch(() => {});
    return true;
  } catch (e) {
    notice(e.message, "error");
    return false;
  }
}

window.addEventListener("hashchange", route);
window.addEventListener("warren-unauthorized", () => {
  location.hash = "#/login";
});
$("#logout").addEventListener("click", () => {
  api.logout();
  location.hash = "#/login";
});
document.addEventListener("visibilitychange", () => {
  if (!document.hidden && current?.refresh) {
    clearTimeout(timer);
    tick(current.gen);
  }
});

// Links to a queue's or an exchange's page; the default exchange ("") is "amq.default".
const queueHref = (q) => `#/queues/${encodeURIComponent(q.vhost)}/${encodeURIComponent(q.name)}`;
const exchangeHref = (vhost, name) =>
  `#/exchanges/${encodeURIComponent(vhost)}/${encodeURIComponent(name || "amq.default")}`;
const exchangeName = (name) => (name === "" ? "(AMQP default)" : name);

function features(o) {
  const f = [];
  if (o.durable) f.push(html`<abbr class="tag" title="durable">D</abbr>`);
  if (o.auto_delete) f.push(html`<abbr class="tag" title="auto-delete">AD</abbr>`);
  if (o.exclusive) f.push(html`<abbr class="tag" title="exclusive">Excl</abbr>`);
  if (o.internal) f.push(html`<abbr class="tag" title="internal">I</abbr>`);
  if (o.arguments && Object.keys(o.arguments).length) {
    f.push(html`<abbr class="tag" title="${JSON.stringify(o.arguments)}">Args</abbr>`);
  }
  if (o.policy) f.push(html`<abbr class="tag policy" title="policy">${o.policy}</abbr>`);
  return f;
}

async function vhostNames() {
  const vs = await api.get("/vhosts");
  return vs.map((v) => v.name);
}

function vhostOptions(names, selected = "/") {
  return names.map((n) => html`<option value="${n}" ${n === selected ? raw("selected") : ""}>${n}</option>`);
}

// ---------------------------------------------------------------------------------------------
// Login

function loginPage(el) {
  setHtml(
    el,
    html`<section class="login">
      <h1>warren</h1>
      <form id="login-form" autocomplete="on">
        <label>Username <input name="username" id="username" autocomplete="username" required autofocus></label>
        <label>Password <input name="password" id="password" type="password" autocomplete="current-password"></label>
        <button type="submit">Log in</button>
        <p id="login-error" class="error" role="alert" hidden></p>
      </form></section>`,
  );
  const form = $("#login-form", el);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const { username, password } = formData(form);
    const err = $("#login-error", el);
    err.hidden = true;
    try {
      await api.login(username, password);
      const after = sessionStorage.getItem("warren.dashboard.after") || "";
      sessionStorage.removeItem("warren.dashboard.after");
      location.hash = `#/${after === "login" ? "" : after}`;
    } catch (e) {
      err.textContent =
        e instanceof ApiError && e.status === 401 ? "Login failed: wrong username or password." : `Login failed: ${e.message}`;
      err.hidden = false;
    }
  });
  return {};
}

// ---------------------------------------------------------------------------------------------
// Overview

// Samples survive leaving the overview, so coming back shows the last minutes again.
const history = { t: [], publish: [], deliver: [], ack: [], ready: [], unacked: [] };

function record(o) {
  const ms = o.message_stats || {};
  const qt = o.queue_totals || {};
  const t = Date.now() / 1000;
  const last = history.t[history.t.length - 1];
  if (last !== undefined && t - last < 1) return;
  history.t.push(t);
  history.publish.push(pick(ms, "publish_details.rate") ?? 0);
  history.deliver.push(pick(ms, "deliver_get_details.rate") ?? 0);
  history.ack.push(pick(ms, "ack_details.rate") ?? 0);
  history.ready.push(qt.messages_ready ?? 0);
  history.unacked.push(qt.messages_unacknowledged ?? 0);
  for (const k of Object.keys(history)) {
    if (history[k].length > HISTORY_LEN) history[k].splice(0, history[k].length - HISTORY_LEN);
  }
}

const palette = ["#2f6fde", "#1d9a6c", "#d97706", "#9333ea", "#dc2626"];

function timeRange() {
  const t = history.t;
  const max = t.length ? t[t.length - 1] : Date.now() / 1000;
  const min = t.length ? Math.min(t[0], max - 60) : max - 60;
  return [min, max];
}

// Axis steps for counts, which have no fractions.
const INTEGER_STEPS = [1, 2, 5].flatMap((m) => [1, 10, 100, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9].map((p) => m * p)).sort((a, b) => a - b);

function makeChart(el, title, series, unit, integer = false) {
  const opts = {
    title,
    width: Math.max(300, el.clientWidth),
    height: 220,
    cursor: { drag: { x: false, y: false } },
    // The time axis always spans at least a minute, so the first samples do not fill it.
    scales: { x: { time: true, range: timeRange }, y: { range: (u, min, max) => [0, Math.max(max * 1.1, 1)] } },
    axes: [{}, { size: 60, values: (u, vals) => vals.map((v) => (unit ? `${num(v)}${unit}` : num(v))), ...(integer ? { incrs: INTEGER_STEPS } : {}) }],
    series: [{}, ...series.map((s, i) => ({ label: s, stroke: palette[i], width: 2, points: { show: false } }))],
  };
  // eslint-disable-next-line no-undef
  const chart = new uPlot(opts, [[]], el);
  const ro = new ResizeObserver(() => chart.setSize({ width: Math.max(300, el.clientWidth), height: 220 }));
  ro.observe(el);
  return { chart, ro };
}

function overviewPage(el) {
  setHtml(
    el,
    html`<h1>Overview</h1>
      <div class="cards" id="ov-cards"></div>
      <div class="charts">
        <div class="chart" id="chart-rates"></div>
        <div class="chart" id="chart-queued"></div>
      </div>
      <section id="shards-section"><h2>Shards</h2><div id="shards"></div></section>
      <section><h2>Node</h2><div id="node"></div></section>`,
  );
  const charts = [];
  const waitForUplot = () => (window.uPlot ? Promise.resolve() : new Promise((r) => addEventListener("load", r, { once: true })));
  let rates;
  let queued;
  // warren's own: each shard's load, from /api/overview's warren_shards (RabbitMQ has no such
  // list, so the section stays hidden there). Rates are over the API's sampling interval.
  const percent = (ratio) => Math.round(Math.min(1, Math.max(0, ratio)) * 100);
  const shards = new Table(
    "shards",
    [
      { key: "id", label: "Shard", num: true },
      { key: "connections", label: "Connections", num: true, title: "Connections the shard accepted", cell: (s) => num(s.connections) },
      { key: "channels", label: "Channels", num: true, cell: (s) => num(s.channels) },
      { key: "queues", label: "Queues", num: true, title: "Queues the shard owns", cell: (s) => num(s.queues) },
      { key: "messages", label: "Messages", num: true, title: "Ready and unacked messages in the shard's queues", cell: (s) => num(s.messages) },
      { key: "publish_rate", label: "Publish", num: true, title: "Messages published by the shard's connections", cell: (s) => rate(s.publish_rate) },
      { key: "deliver_rate", label: "Deliver", num: true, title: "Messages delivered from the shard's queues", cell: (s) => rate(s.deliver_rate) },
      {
        key: "busy_ratio",
        label: "Busy",
        title: "Share of time the shard's reactor spent running tasks",
        cell: (s) =>
          s.busy_ratio === undefined
            ? ""
            : html`<span class="busy"><span class="bar"><span style="width:${raw(String(percent(s.busy_ratio)))}%"></span></span>${percent(s.busy_ratio)}%</span>`,
      },
    ],
    { defaultSort: "id", rowKey: (s) => s.id, empty: "No shards." },
  );
  shards.mount($("#shards", el));

  return {
    destroy() {
      charts.forEach((c) => {
        c.ro.disconnect();
        c.chart.destroy();
      });
    },
    async refresh() {
      const [o, nodes] = await Promise.all([api.get("/overview"), api.get("/nodes").catch(() => [])]);
      record(o);
      const node = nodes.find((n) => n.name === o.node) || nodes[0] || {};
      const ot = o.object_totals || {};
      const qt = o.queue_totals || {};
      const card = (label, value, id) => html`<div class="card" data-card="${id}"><span class="label">${label}</span><span class="value" title="${value}">${value}</span></div>`;
      setHtml(
        $("#ov-cards", el),
        html`${card("Node", o.node, "node")}
        ${card("Uptime", duration(node.uptime), "uptime")}
        ${card("Version", `${o.product_name || "warren"} ${o.product_version || o.rabbitmq_version || ""}`, "version")}
        ${card("Connections", num(ot.connections), "connections")}
        ${card("Channels", num(ot.channels), "channels")}
        ${card("Queues", num(ot.queues), "queues")}
        ${card("Consumers", num(ot.consumers), "consumers")}
        ${card("Ready", num(qt.messages_ready), "ready")}
        ${card("Unacked", num(qt.messages_unacknowledged), "unacked")}`,
      );
      await waitForUplot();
      if (!rates) {
        rates = makeChart($("#chart-rates", el), "Message rates (msg/s)", ["publish", "deliver", "ack"], "");
        queued = makeChart($("#chart-queued", el), "Queued messages", ["ready", "unacked"], "", true);
        charts.push(rates, queued);
      }
      rates.chart.setData([history.t, history.publish, history.deliver, history.ack]);
      $("#chart-rates", el).dataset.samples = history.t.length;
      queued.chart.setData([history.t, history.ready, history.unacked]);
      const ws = o.warren_shards;
      $("#shards-section", el).hidden = !Array.isArray(ws);
      if (Array.isArray(ws)) shards.update(ws);
      setHtml(
        $("#node", el),
        html`<dl class="facts">
          ${fact("Name", node.name || o.node)}
          ${fact("Memory used", bytes(node.mem_used))}
          ${fact("Memory limit", bytes(node.mem_limit))}
          ${fact("Disk free", bytes(node.disk_free))}
          ${fact("File descriptors", node.fd_used === undefined ? "" : `${num(node.fd_used)} / ${num(node.fd_total)}`)}
          ${fact("Alarms", [node.mem_alarm ? "memory" : "", node.disk_free_alarm ? "disk" : ""].filter(Boolean).join(", ") || "none")}
        </dl>`,
      );
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Connections and channels

async function closeConnection(name) {
  if (!(await confirmDialog(`Close connection ${name}?`, "Close"))) return;
  await act(
    () => api.request("DELETE", path("connections", name), undefined, api.credentials(), { "X-Reason": "Closed from the dashboard" }),
    `Connection ${name} closed.`,
  );
}

function connectionsPage(el) {
  setHtml(el, html`<h1>Connections</h1><div id="conns"></div>`);
  const t = new Table(
    "connections",
    [
      { key: "name", label: "Name", cell: (c) => html`<span title="${c.name}">${pick(c, "client_properties.connection_name") || c.name}</span>` },
      { key: "user", label: "User" },
      { key: "vhost", label: "Virtual host" },
      { key: "client", label: "Client", get: (c) => pick(c, "client_properties.product"), cell: (c) => `${pick(c, "client_properties.product") || ""} ${pick(c, "client_properties.version") || ""}` },
      { key: "state", label: "State" },
      { key: "channels", label: "Channels", num: true },
      { key: "recv", label: "From client", num: true, get: (c) => pick(c, "recv_oct_details.rate"), cell: (c) => `${bytes(pick(c, "recv_oct_details.rate"))}/s` },
      { key: "send", label: "To client", num: true, get: (c) => pick(c, "send_oct_details.rate"), cell: (c) => `${bytes(pick(c, "send_oct_details.rate"))}/s` },
      { key: "close", label: "", nosort: true, cell: (c) => html`<button class="small danger" data-close="${c.name}">Close</button>` },
    ],
    { filterKey: "name", empty: "No connections." },
  );
  t.mount($("#conns", el));
  el.addEventListener("click", (ev) => {
    const b = ev.target.closest("[data-close]");
    if (b) closeConnection(b.dataset.close);
  });
  return { refresh: async () => t.update(await api.get("/connections")) };
}

function channelsPage(el) {
  setHtml(el, html`<h1>Channels</h1><div id="chans"></div>`);
  const t = new Table(
    "channels",
    [
      { key: "name", label: "Channel" },
      { key: "user", label: "User" },
      { key: "vhost", label: "Virtual host" },
      { key: "mode", label: "Mode", get: (c) => (c.confirm ? "C" : "") + (c.transactional ? "T" : ""), cell: (c) => [c.confirm ? html`<abbr class="tag" title="confirm">C</abbr>` : "", c.transactional ? html`<abbr class="tag" title="transactional">T</abbr>` : ""] },
      { key: "state", label: "State" },
      { key: "prefetch_count", label: "Prefetch", num: true },
      { key: "consumer_count", label: "Consumers", num: true },
      { key: "messages_unacknowledged", label: "Unacked", num: true, cell: (c) => num(c.messages_unacknowledged) },
      { key: "publish", label: "Publish", num: true, get: (c) => pick(c, "message_stats.publish_details.rate"), cell: (c) => rate(pick(c, "message_stats.publish_details.rate") ?? 0) },
      { key: "deliver", label: "Deliver", num: true, get: (c) => pick(c, "message_stats.deliver_get_details.rate"), cell: (c) => rate(pick(c, "message_stats.deliver_get_details.rate") ?? 0) },
      { key: "ack", label: "Ack", num: true, get: (c) => pick(c, "message_stats.ack_details.rate"), cell: (c) => rate(pick(c, "message_stats.ack_details.rate") ?? 0) },
      // The API closes connections, not single channels: closing here closes the channel's connection.
      { key: "close", label: "", nosort: true, cell: (c) => (pick(c, "connection_details.name") ? html`<button class="small danger" data-close="${pick(c, "connection_details.name")}" title="Close this channel's connection">Close connection</button>` : "") },
    ],
    { filterKey: "name", empty: "No channels." },
  );
  t.mount($("#chans", el));
  el.addEventListener("click", (ev) => {
    const b = ev.target.closest("[data-close]");
    if (b) closeConnection(b.dataset.close);
  });
  return { refresh: async () => t.update(await api.get("/channels")) };
}

// ---------------------------------------------------------------------------------------------
// Exchanges

function exchangesPage(el) {
  setHtml(el, html`<h1>Exchanges</h1><div id="exs"></div>
    <details class="panel"><summary>Add an exchange</summary>
      <form id="add-exchange" class="inline">
        <label>Virtual host <select name="vhost"></select></label>
        <label>Name <input name="name" required></label>
        <label>Type <select name="type"><option>direct</option><option>fanout</option><option>topic</option><option>headers</option></select></label>
        <label class="check"><input type="checkbox" name="durable" checked> Durable</label>
        <button type="submit">Add exchange</button>
      </form></details>`);
  const t = new Table(
    "exchanges",
    [
      { key: "name", label: "Name", cell: (x) => html`<a href="${exchangeHref(x.vhost, x.name)}">${exchangeName(x.name)}</a>` },
      { key: "vhost", label: "Virtual host" },
      { key: "type", label: "Type" },
      { key: "features", label: "Features", nosort: true, cell: features },
      { key: "in", label: "Rate in", num: true, get: (x) => pick(x, "message_stats.publish_in_details.rate"), cell: (x) => rate(pick(x, "message_stats.publish_in_details.rate") ?? 0) },
      { key: "out", label: "Rate out", num: true, get: (x) => pick(x, "message_stats.publish_out_details.rate"), cell: (x) => rate(pick(x, "message_stats.publish_out_details.rate") ?? 0) },
    ],
    { filterKey: "name" },
  );
  t.mount($("#exs", el));
  const form = $("#add-exchange", el);
  vhostNames().then((names) => setHtml($("select[name=vhost]", form), vhostOptions(names)), () => {});
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const f = formData(form);
    act(() => api.put(path("exchanges", f.vhost, f.name), { type: f.type, durable: !!f.durable, auto_delete: false, internal: false, arguments: {} }), `Exchange ${f.name} added.`);
  });
  return { refresh: async () => t.update(await api.get("/exchanges")) };
}

function bindingTable(id, showSource) {
  return new Table(
    id,
    [
      showSource
        ? { key: "source", label: "From exchange", cell: (b) => html`<a href="${exchangeHref(b.vhost, b.source)}">${exchangeName(b.source)}</a>` }
        : {
            key: "destination",
            label: "To",
            cell: (b) =>
              b.destination_type === "queue"
                ? html`<a href="${queueHref({ vhost: b.vhost, name: b.destination })}">${b.destination}</a> <span class="muted">queue</span>`
                : html`<a href="${exchangeHref(b.vhost, b.destination)}">${b.destination}</a> <span class="muted">exchange</span>`,
          },
      { key: "routing_key", label: "Routing key" },
      { key: "arguments", label: "Arguments", nosort: true, cell: (b) => (Object.keys(b.arguments || {}).length ? JSON.stringify(b.arguments) : "") },
      {
        key: "unbind",
        label: "",
        nosort: true,
        cell: (b) =>
          b.source === ""
            ? ""
            : html`<button class="small secondary" data-unbind="${JSON.stringify([b.vhost, b.source, b.destination_type === "queue" ? "q" : "e", b.destination, b.properties_key])}">Unbind</button>`,
      },
    ],
    { empty: "No bindings." },
  );
}

function onUnbind(el) {
  el.addEventListener("click", async (ev) => {
    const b = ev.target.closest("[data-unbind]");
    if (!b) return;
    const [vhost, source, kind, dest, props] = JSON.parse(b.dataset.unbind);
    await act(() => api.del(path("bindings", vhost, "e", source, kind, dest, props)), "Binding removed.");
  });
}

function exchangePage(el, vhost, name) {
  const real = name === "amq.default" ? "" : name;
  const apiName = name; // The API names the default exchange "amq.default" in paths.
  setHtml(
    el,
    html`<p class="crumbs"><a href="#/exchanges">Exchanges</a> in virtual host <code>${vhost}</code></p>
    <h1>Exchange <span class="name">${exchangeName(real)}</span></h1>
    <div id="ex-details"></div>
    <h2>Bindings from this exchange</h2><div id="ex-bindings-src"></div>
    ${real === "" ? "" : html`<details class="panel"><summary>Add a binding from this exchange</summary>
      <form id="bind" class="inline">
        <label>To <select name="kind"><option value="q">queue</option><option value="e">exchange</option></select></label>
        <label>Name <input name="destination" required></label>
        <label>Routing key <input name="routing_key"></label>
        <button type="submit">Bind</button></form></details>`}
    <h2>Bindings to this exchange</h2><div id="ex-bindings-dst"></div>
    <h2>Publish a message</h2>
    <form id="publish" class="stack">
      <label>Routing key <input name="routing_key" id="publish-routing-key"></label>
      <label>Delivery mode <select name="delivery_mode"><option value="1">1 - non-persistent</option><option value="2">2 - persistent</option></select></label>
      <label>Headers (JSON object) <input name="headers" placeholder='{"x-example": "value"}'></label>
      <label>Payload <textarea name="payload" id="publish-payload" rows="4"></textarea></label>
      <div><button type="submit">Publish message</button> <span id="publish-result" class="muted"></span></div>
    </form>
    ${real === "" || real.startsWith("amq.") ? "" : html`<h2>Delete</h2><button id="delete-exchange" class="danger">Delete this exchange</button>`}`,
  );
  const src = bindingTable("ex-src", false);
  const dst = bindingTable("ex-dst", true);
  src.mount($("#ex-bindings-src", el));
  dst.mount($("#ex-bindings-dst", el));
  onUnbind(el);
  const bind = $("#bind", el);
  bind?.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const f = formData(bind);
    act(() => api.post(path("bindings", vhost, "e", real, f.kind, f.destination), { routing_key: f.routing_key, arguments: {} }), "Binding added.");
  });
  const pub = $("#publish", el);
  pub.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = formData(pub);
    let headers = {};
    if (f.headers.trim()) {
      try {
        headers = JSON.parse(f.headers);
      } catch {
        notice("Headers must be a JSON object.", "error");
        return;
      }
    }
    await act(async () => {
      const r = await api.post(path("exchanges", vhost, apiName, "publish"), {
        properties: { delivery_mode: Number(f.delivery_mode), headers },
        routing_key: f.routing_key,
        payload: f.payload,
        payload_encoding: "string",
      });
      $("#publish-result", el).textContent = r?.routed ? "Message published and routed." : "Message published, but not routed to any queue.";
    });
  });
  $("#delete-exchange", el)?.addEventListener("click", async () => {
    if (!(await confirmDialog(`Delete exchange ${real}?`, "Delete"))) return;
    if (await act(() => api.del(path("exchanges", vhost, real)), `Exchange ${real} deleted.`)) location.hash = "#/exchanges";
  });
  return {
    gone: html`There is no exchange <code>${real}</code> in virtual host <code>${vhost}</code>. <a href="#/exchanges">All exchanges</a>`,
    async refresh() {
      const base = ["exchanges", vhost, apiName];
      const [x, s, d] = await Promise.all([
        api.get(path(...base)),
        api.get(path(...base, "bindings", "source")),
        api.get(path(...base, "bindings", "destination")),
      ]);
      setHtml(
        $("#ex-details", el),
        html`<dl class="facts">${fact("Type", x.type)}${fact("Durable", x.durable ? "yes" : "no")}${fact("Auto-delete", x.auto_delete ? "yes" : "no")}${fact("Internal", x.internal ? "yes" : "no")}${fact("Policy", x.policy || "none")}
          ${fact("Rate in", rate(pick(x, "message_stats.publish_in_details.rate") ?? 0))}${fact("Rate out", rate(pick(x, "message_stats.publish_out_details.rate") ?? 0))}</dl>
          <h3>Arguments</h3>${args(x.arguments)}`,
      );
      src.update(s);
      dst.update(d);
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Queues

const qrate = (q, k) => pick(q, `message_stats.${k}_details.rate`);

function queuesPage(el) {
  setHtml(el, html`<h1>Queues</h1><div id="queues"></div>
    <details class="panel"><summary>Add a queue</summary>
      <form id="add-queue" class="inline">
        <label>Virtual host <select name="vhost"></select></label>
        <label>Name <input name="name" required></label>
        <label>Type <select name="type"><option>classic</option><option>quorum</option></select></label>
        <label class="check"><input type="checkbox" name="durable" checked> Durable</label>
        <button type="submit">Add queue</button>
      </form></details>`);
  const t = new Table(
    "queues",
    [
      { key: "name", label: "Name", cell: (q) => html`<a href="${queueHref(q)}">${q.name}</a>` },
      { key: "vhost", label: "Virtual host" },
      { key: "type", label: "Type" },
      { key: "features", label: "Features", nosort: true, cell: features },
      { key: "state", label: "State" },
      { key: "messages_ready", label: "Ready", num: true, cell: (q) => num(q.messages_ready) },
      { key: "messages_unacknowledged", label: "Unacked", num: true, cell: (q) => num(q.messages_unacknowledged) },
      { key: "messages", label: "Total", num: true, cell: (q) => num(q.messages) },
      { key: "publish", label: "Incoming", num: true, get: (q) => qrate(q, "publish"), cell: (q) => rate(qrate(q, "publish") ?? 0) },
      { key: "deliver", label: "Deliver / get", num: true, get: (q) => qrate(q, "deliver_get"), cell: (q) => rate(qrate(q, "deliver_get") ?? 0) },
      { key: "ack", label: "Ack", num: true, get: (q) => qrate(q, "ack"), cell: (q) => rate(qrate(q, "ack") ?? 0) },
      { key: "consumers", label: "Consumers", num: true, cell: (q) => num(q.consumers) },
    ],
    { filterKey: "name", empty: "No queues." },
  );
  t.mount($("#queues", el));
  const form = $("#add-queue", el);
  vhostNames().then((names) => setHtml($("select[name=vhost]", form), vhostOptions(names)), () => {});
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const f = formData(form);
    act(() => api.put(path("queues", f.vhost, f.name), { durable: !!f.durable, auto_delete: false, arguments: { "x-queue-type": f.type } }), `Queue ${f.name} added.`);
  });
  return { refresh: async () => t.update(await api.get("/queues")) };
}

function payloadView(m) {
  const enc = m.payload_encoding === "base64" ? html` <span class="muted">(base64)</span>` : "";
  return html`<div class="message">
    <dl class="facts">
      <div><dt>Exchange</dt><dd>${exchangeName(m.exchange)}</dd></div>
      <div><dt>Routing key</dt><dd>${m.routing_key}</dd></div>
      <div><dt>Redelivered</dt><dd>${m.redelivered ? "yes" : "no"}</dd></div>
      <div><dt>Remaining in queue</dt><dd>${num(m.message_count)}</dd></div>
      <div><dt>Payload size</dt><dd>${bytes(m.payload_bytes)}</dd></div>
    </dl>
    <h4>Properties</h4>${args(m.properties)}
    <h4>Payload${enc}</h4><pre class="payload">${m.payload}</pre></div>`;
}

function queuePage(el, vhost, name) {
  setHtml(
    el,
    html`<p class="crumbs"><a href="#/queues">Queues</a> in virtual host <code>${vhost}</code></p>
    <h1>Queue <span class="name">${name}</span></h1>
    <div class="cards" id="q-cards"></div>
    <div class="two">
      <section><h2>Details</h2><div id="q-details"></div></section>
      <section><h2>Arguments</h2><div id="q-args"></div><h2>Effective policy</h2><div id="q-policy"></div></section>
    </div>
    <h2>Consumers</h2><div id="q-consumers"></div>
    <h2>Bindings</h2><div id="q-bindings"></div>
    <details class="panel"><summary>Add a binding to this queue</summary>
      <form id="bind" class="inline">
        <label>From exchange <input name="source" required></label>
        <label>Routing key <input name="routing_key"></label>
        <button type="submit">Bind</button></form></details>
    <h2>Get messages</h2>
    <form id="get" class="inline">
      <label>Ack mode <select name="ackmode">
        <option value="ack_requeue_true">Nack, requeue</option>
        <option value="ack_requeue_false">Ack, remove from queue</option>
        <option value="reject_requeue_true">Reject, requeue</option>
      </select></label>
      <label>Messages <input name="count" type="number" value="1" min="1" max="1000"></label>
      <button type="submit" id="get-messages">Get messages</button>
    </form>
    <div id="q-messages"></div>
    <h2>Purge and delete</h2>
    <p><button id="purge" class="danger">Purge messages</button> <button id="delete-queue" class="danger">Delete queue</button></p>`,
  );
  const base = ["queues", vhost, name];
  const consumers = new Table(
    "q-consumers",
    [
      { key: "consumer_tag", label: "Consumer tag" },
      { key: "channel", label: "Channel", get: (c) => pick(c, "channel_details.name"), cell: (c) => pick(c, "channel_details.name") },
      { key: "ack_required", label: "Ack required", cell: (c) => (c.ack_required ? "yes" : "no") },
      { key: "prefetch_count", label: "Prefetch", num: true },
      { key: "exclusive", label: "Exclusive", cell: (c) => (c.exclusive ? "yes" : "no") },
      { key: "arguments", label: "Arguments", nosort: true, cell: (c) => (Object.keys(c.arguments || {}).length ? JSON.stringify(c.arguments) : "") },
    ],
    { empty: "No consumers." },
  );
  consumers.mount($("#q-consumers", el));
  const bindings = bindingTable("q-bindings", true);
  bindings.mount($("#q-bindings", el));
  onUnbind(el);

  const bind = $("#bind", el);
  bind.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const f = formData(bind);
    act(() => api.post(path("bindings", vhost, "e", f.source, "q", name), { routing_key: f.routing_key, arguments: {} }), "Binding added.");
  });
  const get = $("#get", el);
  get.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = formData(get);
    await act(async () => {
      const msgs = await api.post(path(...base, "get"), { count: Number(f.count) || 1, ackmode: f.ackmode, encoding: "auto", truncate: 50000 });
      setHtml($("#q-messages", el), msgs.length ? msgs.map(payloadView) : html`<p class="muted">The queue is empty.</p>`);
    });
  });
  $("#purge", el).addEventListener("click", async () => {
    if (!(await confirmDialog(`Purge all messages from queue ${name}?`, "Purge"))) return;
    await act(() => api.del(path(...base, "contents")), `Queue ${name} purged.`);
  });
  $("#delete-queue", el).addEventListener("click", async () => {
    if (!(await confirmDialog(`Delete queue ${name} and its messages?`, "Delete"))) return;
    if (await act(() => api.del(path(...base)), `Queue ${name} deleted.`)) location.hash = "#/queues";
  });

  return {
    gone: html`There is no queue <code>${name}</code> in virtual host <code>${vhost}</code>. <a href="#/queues">All queues</a>`,
    async refresh() {
      const [q, b] = await Promise.all([api.get(path(...base)), api.get(path(...base, "bindings"))]);
      const card = (label, value, id) => html`<div class="card" data-card="${id}"><span class="label">${label}</span><span class="value">${value}</span></div>`;
      setHtml(
        $("#q-cards", el),
        html`${card("Ready", num(q.messages_ready), "ready")}${card("Unacked", num(q.messages_unacknowledged), "unacked")}${card("Total", num(q.messages), "messages")}
        ${card("Consumers", num(q.consumers), "consumers")}${card("Incoming", rate(qrate(q, "publish") ?? 0), "publish")}${card("Deliver / get", rate(qrate(q, "deliver_get") ?? 0), "deliver")}
        ${card("Ack", rate(qrate(q, "ack") ?? 0), "ack")}`,
      );
      setHtml(
        $("#q-details", el),
        html`<dl class="facts">${fact("Type", q.type)}${fact("State", q.state)}${fact("Durable", q.durable ? "yes" : "no")}
          ${fact("Auto-delete", q.auto_delete ? "yes" : "no")}${fact("Exclusive", q.exclusive ? "yes" : "no")}
          ${fact("Node", q.node)}${fact("Memory", bytes(q.memory))}${fact("Message bytes", bytes(q.message_bytes))}</dl>`,
      );
      setHtml($("#q-args", el), args(q.arguments));
      const eff = q.effective_policy_definition;
      setHtml(
        $("#q-policy", el),
        html`<p>Policy: <strong>${q.policy || "none"}</strong>${q.operator_policy ? html`, operator policy: <strong>${q.operator_policy}</strong>` : ""}</p>
          ${eff && Object.keys(eff).length ? args(eff) : ""}`,
      );
      consumers.update(q.consumer_details || []);
      bindings.update(b);
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Admin: users, permissions, virtual hosts, policies, tracing

function adminPage(el, tab = "users") {
  const tabs = [
    ["users", "Users and permissions"],
    ["vhosts", "Virtual hosts"],
    ["policies", "Policies"],
    ["tracing", "Tracing"],
  ];
  setHtml(
    el,
    html`<h1>Admin</h1><nav class="tabs">${tabs.map(([k, l]) => html`<a href="#/admin/${k}" class="${k === tab ? "active" : ""}">${l}</a>`)}</nav><div id="admin"></div>`,
  );
  const body = $("#admin", el);
  return { users: usersTab, vhosts: vhostsTab, policies: policiesTab, tracing: tracingTab }[tab](body);
}

function deleteButtons(el, attr, fn) {
  el.addEventListener("click", async (ev) => {
    const b = ev.target.closest(`[${attr}]`);
    if (b) await fn(JSON.parse(b.getAttribute(attr)));
  });
}

function usersTab(el) {
  setHtml(
    el,
    html`<h2>Users</h2><div id="users"></div>
    <form id="add-user" class="inline">
      <label>Username <input name="name" id="new-user-name" required></label>
      <label>Password <input name="password" id="new-user-password" type="password"></label>
      <label>Tags <input name="tags" id="new-user-tags" placeholder="administrator, monitoring, policymaker, management" list="tag-list"></label>
      <datalist id="tag-list"><option>administrator</option><option>monitoring</option><option>policymaker</option><option>management</option></datalist>
      <button type="submit">Add user</button>
    </form>
    <h2>Permissions</h2><div id="perms"></div>
    <form id="set-perm" class="inline">
      <label>User <select name="user"></select></label>
      <label>Virtual host <select name="vhost"></select></label>
      <label>Configure <input name="configure" value=".*" size="8"></label>
      <label>Write <input name="write" value=".*" size="8"></label>
      <label>Read <input name="read" value=".*" size="8"></label>
      <button type="submit">Set permission</button>
    </form>`,
  );
  const tagsOf = (u) => (Array.isArray(u.tags) ? u.tags.join(", ") : u.tags || "");
  const users = new Table(
    "users",
    [
      { key: "name", label: "Name" },
      { key: "tags", label: "Tags", get: tagsOf, cell: tagsOf },
      { key: "del", label: "", nosort: true, cell: (u) => html`<button class="small danger" data-del-user="${JSON.stringify(u.name)}">Delete</button>` },
    ],
    { filterKey: "name" },
  );
  users.mount($("#users", el));
  const perms = new Table(
    "perms",
    [
      { key: "user", label: "User" },
      { key: "vhost", label: "Virtual host" },
      { key: "configure", label: "Configure" },
      { key: "write", label: "Write" },
      { key: "read", label: "Read" },
      { key: "del", label: "", nosort: true, cell: (p) => html`<button class="small secondary" data-del-perm="${JSON.stringify([p.vhost, p.user])}">Clear</button>` },
    ],
    { empty: "No permissions." },
  );
  perms.mount($("#perms", el));
  deleteButtons(el, "data-del-user", async (name) => {
    if (await confirmDialog(`Delete user ${name}?`, "Delete")) await act(() => api.del(path("users", name)), `User ${name} deleted.`);
  });
  deleteButtons(el, "data-del-perm", async ([vhost, user]) => {
    await act(() => api.del(path("permissions", vhost, user)), `Permissions of ${user} on ${vhost} cleared.`);
  });
  const add = $("#add-user", el);
  add.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = formData(add);
    const tags = f.tags.split(",").map((s) => s.trim()).filter(Boolean).join(",");
    if (await act(() => api.put(path("users", f.name), { password: f.password, tags }), `User ${f.name} added.`)) add.reset();
  });
  const perm = $("#set-perm", el);
  perm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const f = formData(perm);
    act(() => api.put(path("permissions", f.vhost, f.user), { configure: f.configure, write: f.write, read: f.read }), `Permissions of ${f.user} on ${f.vhost} set.`);
  });
  let known = "";
  return {
    async refresh() {
      const [u, p, v] = await Promise.all([api.get("/users"), api.get("/permissions"), vhostNames()]);
      users.update(u);
      perms.update(p);
      const key = JSON.stringify([u.map((x) => x.name), v]);
      if (key !== known) {
        // Refill the selects only when the lists change, so a choice in progress stays.
        known = key;
        const sel = $("select[name=user]", perm).value;
        setHtml($("select[name=user]", perm), u.map((x) => html`<option ${x.name === sel ? raw("selected") : ""}>${x.name}</option>`));
        setHtml($("select[name=vhost]", perm), vhostOptions(v, $("select[name=vhost]", perm).value || "/"));
      }
    },
  };
}

function vhostsTab(el) {
  setHtml(
    el,
    html`<h2>Virtual hosts</h2><div id="vhosts"></div>
    <form id="add-vhost" class="inline">
      <label>Name <input name="name" required></label>
      <label>Description <input name="description"></label>
      <button type="submit">Add virtual host</button>
    </form>`,
  );
  const t = new Table(
    "vhosts",
    [
      { key: "name", label: "Name" },
      { key: "description", label: "Description" },
      { key: "messages_ready", label: "Ready", num: true, cell: (v) => num(v.messages_ready) },
      { key: "messages_unacknowledged", label: "Unacked", num: true, cell: (v) => num(v.messages_unacknowledged) },
      { key: "tracing", label: "Tracing", cell: (v) => (v.tracing ? "on" : "off") },
      { key: "del", label: "", nosort: true, cell: (v) => html`<button class="small danger" data-del-vhost="${JSON.stringify(v.name)}">Delete</button>` },
    ],
    { filterKey: "name" },
  );
  t.mount($("#vhosts", el));
  deleteButtons(el, "data-del-vhost", async (name) => {
    if (await confirmDialog(`Delete virtual host ${name} and everything in it?`, "Delete")) {
      await act(() => api.del(path("vhosts", name)), `Virtual host ${name} deleted.`);
    }
  });
  const add = $("#add-vhost", el);
  add.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = formData(add);
    if (await act(() => api.put(path("vhosts", f.name), { description: f.description }), `Virtual host ${f.name} added.`)) add.reset();
  });
  return { refresh: async () => t.update(await api.get("/vhosts")) };
}

function policiesTab(el) {
  setHtml(
    el,
    html`<h2>Policies</h2><div id="policies"></div>
    <h3>Add or update a policy</h3>
    <form id="add-policy" class="stack">
      <label>Virtual host <select name="vhost"></select></label>
      <label>Name <input name="name" id="policy-name" required></label>
      <label>Pattern <input name="pattern" id="policy-pattern" required placeholder="^orders\\."></label>
      <label>Apply to <select name="apply-to"><option value="queues">queues</option><option value="exchanges">exchanges</option><option value="all">exchanges and queues</option></select></label>
      <label>Priority <input name="priority" type="number" value="0"></label>
      <label>Definition (JSON object) <textarea name="definition" id="policy-definition" rows="3" placeholder='{"max-length": 1000, "message-ttl": 60000}'></textarea></label>
      <div><button type="submit">Save policy</button></div>
    </form>`,
  );
  const t = new Table(
    "policies",
    [
      { key: "vhost", label: "Virtual host" },
      { key: "name", label: "Name" },
      { key: "pattern", label: "Pattern" },
      { key: "apply-to", label: "Apply to" },
      { key: "priority", label: "Priority", num: true },
      { key: "definition", label: "Definition", nosort: true, cell: (p) => args(p.definition) },
      { key: "del", label: "", nosort: true, cell: (p) => html`<button class="small danger" data-del-policy="${JSON.stringify([p.vhost, p.name])}">Delete</button>` },
    ],
    { filterKey: "name", empty: "No policies." },
  );
  t.mount($("#policies", el));
  deleteButtons(el, "data-del-policy", async ([vhost, name]) => {
    if (await confirmDialog(`Delete policy ${name}?`, "Delete")) await act(() => api.del(path("policies", vhost, name)), `Policy ${name} deleted.`);
  });
  const add = $("#add-policy", el);
  vhostNames().then((names) => setHtml($("select[name=vhost]", add), vhostOptions(names)), () => {});
  add.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = formData(add);
    let definition;
    try {
      definition = JSON.parse(f.definition || "{}");
      if (typeof definition !== "object" || Array.isArray(definition) || definition === null) throw new Error();
    } catch {
      notice("The definition must be a JSON object.", "error");
      return;
    }
    const body = { pattern: f.pattern, definition, priority: Number(f.priority) || 0, "apply-to": f["apply-to"] };
    await act(() => api.put(path("policies", f.vhost, f.name), body), `Policy ${f.name} saved.`);
  });
  return { refresh: async () => t.update(await api.get("/policies")) };
}

function tracingTab(el) {
  setHtml(
    el,
    html`<h2>Traces</h2><div id="traces"></div>
    <h3>Start a trace</h3>
    <form id="add-trace" class="inline">
      <label>Virtual host <select name="vhost"></select></label>
      <label>Name <input name="name" id="trace-name" required></label>
      <label>Format <select name="format"><option value="text">text</option><option value="json">json</option></select></label>
      <label>Pattern <input name="pattern" value="#" title="publish.EXCHANGE or deliver.QUEUE, with topic wildcards"></label>
      <label>Max payload bytes <input name="max_payload_bytes" type="number" min="0" placeholder="no limit"></label>
      <button type="submit">Start trace</button>
    </form>
    <h2>Trace log files</h2><div id="trace-files"></div>`,
  );
  const traces = new Table(
    "traces",
    [
      { key: "vhost", label: "Virtual host" },
      { key: "name", label: "Name" },
      { key: "pattern", label: "Pattern" },
      { key: "format", label: "Format" },
      { key: "max_payload_bytes", label: "Payload limit", num: true, cell: (t) => (t.max_payload_bytes === undefined ? "no limit" : bytes(t.max_payload_bytes)) },
      // warren's: records dropped because the file could not keep up (absent on RabbitMQ).
      { key: "dropped", label: "Dropped", num: true, cell: (t) => num(t.dropped) },
      { key: "stop", label: "", nosort: true, cell: (t) => html`<button class="small danger" data-stop-trace="${JSON.stringify([t.vhost, t.name])}">Stop</button>` },
    ],
    { empty: "No traces running." },
  );
  traces.mount($("#traces", el));
  const files = new Table(
    "trace-files",
    [
      { key: "name", label: "File" },
      { key: "size", label: "Size", num: true, cell: (f) => bytes(f.size) },
      {
        key: "act",
        label: "",
        nosort: true,
        cell: (f) => html`<button class="small" data-download="${JSON.stringify(f.name)}">Download</button>
          <button class="small danger" data-del-file="${JSON.stringify(f.name)}">Delete</button>`,
      },
    ],
    { empty: "No trace files." },
  );
  files.mount($("#trace-files", el));
  deleteButtons(el, "data-stop-trace", async ([vhost, name]) => {
    await act(() => api.del(path("traces", vhost, name)), `Trace ${name} stopped.`);
  });
  deleteButtons(el, "data-download", async (name) => {
    await act(() => api.download(path("trace-files", name), name));
  });
  deleteButtons(el, "data-del-file", async (name) => {
    if (await confirmDialog(`Delete trace file ${name}?`, "Delete")) await act(() => api.del(path("trace-files", name)), `Trace file ${name} deleted.`);
  });
  const add = $("#add-trace", el);
  vhostNames().then((names) => setHtml($("select[name=vhost]", add), vhostOptions(names)), () => {});
  add.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = formData(add);
    const body = { format: f.format, pattern: f.pattern || "#" };
    if (f.max_payload_bytes !== "") body.max_payload_bytes = Number(f.max_payload_bytes);
    await act(() => api.put(path("traces", f.vhost, f.name), body), `Trace ${f.name} started.`);
  });
  return {
    async refresh() {
      const [t, f] = await Promise.all([api.get("/traces"), api.get("/trace-files")]);
      traces.update(t);
      files.update(f);
    },
  };
}

route();

// Small view helpers: an escaping HTML template tag, number formats, sortable and filterable
// tables, confirmation dialogs and notices. Every name that comes from the broker (queue,
// exchange, user names, payloads) goes through the escaping tag, never into raw HTML.

class Raw {
  constructor(s) {
    this.s = s;
  }
  toString() {
    return this.s;
  }
}

export const raw = (s) => new Raw(s);

export function esc(v) {
  return String(v ?? "")
    .replaceAll("&", "&amp;")
    .replaceAll("<", "&lt;")
    .replaceAll(">", "&gt;")
    .replaceAll('"', "&quot;")
    .replaceAll("'", "&#39;");
}

function part(v) {
  if (v instanceof Raw) return v.s;
  if (Array.isArray(v)) return v.map(part).join("");
  if (v === null || v === undefined || v === false) return "";
  return esc(v);
}

// html`<td>${name}</td>` escapes name; nested html`` results and arrays of them pass through.
export function html(strings, ...values) {
  let out = strings[0];
  values.forEach((v, i) => {
    out += part(v) + strings[i + 1];
  });
  return new Raw(out);
}

export function setHtml(el, content) {
  el.innerHTML = part(content);
}

export function $(sel, root = document) {
  return root.querySelector(sel);
}

export function $$(sel, root = document) {
  return [...root.querySelectorAll(sel)];
}

const intFmt = new Intl.NumberFormat("en");
const rateFmt = new Intl.NumberFormat("en", { maximumFractionDigits: 1 });

export function num(n) {
  return n === undefined || n === null ? "" : intFmt.format(n);
}

export function rate(r) {
  return r === undefined || r === null ? "" : `${rateFmt.format(r)}/s`;
}

export function bytes(n) {
  if (n === undefined || n === null) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
}

export function duration(ms) {
  if (ms === undefined || ms === null) return "";
  let s = Math.floor(ms / 1000);
  const d = Math.floor(s / 86400);
  s -= d * 86400;
  const h = Math.floor(s / 3600);
  s -= h * 3600;
  const m = Math.floor(s / 60);
  s -= m * 60;
  if (d > 0) return `${d}d ${h}h`;
  if (h > 0) return `${h}h ${m}m`;
  if (m > 0) return `${m}m ${s}s`;
  return `${s}s`;
}

// Reads a dotted path ("message_stats.publish_details.rate") out of an API object.
export function pick(obj, dotted) {
  let v = obj;
  for (const k of dotted.split(".")) {
    if (v === null || v === undefined) return undefined;
    v = v[k];
  }
  return v;
}

export function vhostLabel(v) {
  return v;
}

// One fact of a <dl class="facts">; nothing when the broker does not report it (warren has no
// disk_free, fd_used or message_bytes), rather than a label over an empty value.
export function fact(label, value) {
  return value === undefined || value === null || value === "" ? "" : html`<div><dt>${label}</dt><dd>${value}</dd></div>`;
}

export function args(obj) {
  const entries = Object.entries(obj || {});
  if (entries.length === 0) return html`<span class="muted">none</span>`;
  return html`<dl class="args">${entries.map(
    ([k, v]) => html`<dt>${k}</dt><dd>${typeof v === "object" ? JSON.stringify(v) : String(v)}</dd>`,
  )}</dl>`;
}

// Sort and filter state per table, so a refresh or a return to the page keeps them.
const tableState = new Map();

// A table over rows with sortable columns and an optional name filter. columns:
// [{ key, label, title (header tooltip), get(row) (for sorting), cell(row) (html), num
// (right-aligned) }]. Each row's data-row attribute is rowKey(row): its name or user by default.
export class Table {
  constructor(id, columns, { filterKey, defaultSort, limit = 1000, empty = "Nothing here yet.", rowKey } = {}) {
    this.id = id;
    this.columns = columns;
    this.rowKey = rowKey || ((r) => r.name ?? r.user ?? "");
    this.filterKey = filterKey;
    this.limit = limit;
    this.empty = empty;
    if (!tableState.has(id)) {
      tableState.set(id, { sort: defaultSort || columns[0].key, desc: false, filter: "" });
    }
    this.state = tableState.get(id);
    this.rows = [];
  }

  // Mounts the filter box and the table into el; later calls to update() only redraw rows.
  mount(el) {
    this.el = el;
    const filter = this.filterKey
      ? html`<div class="tools"><input type="search" class="filter" data-table="${this.id}"
          placeholder="Filter by name (regular expression)" value="${this.state.filter}"></div>`
      : "";
    setHtml(
      el,
      html`${filter}<table class="grid" data-table="${this.id}"><thead><tr>${this.columns.map(
        (c) => html`<th data-key="${c.key}" class="${c.num ? "num" : ""} ${c.nosort ? "" : "sortable"}" title="${c.title ?? ""}">${c.label}</th>`,
      )}</tr></thead><tbody></tbody></table><p class="more muted"></p>`,
    );
    const input = $("input.filter", el);
    if (input) {
      input.addEventListener("input", () => {
        this.state.filter = input.value;
        this.draw();
      });
    }
    $$("th.sortable", el).forEach((th) =>
      th.addEventListener("click", () => {
        const key = th.dataset.key;
        if (this.state.sort === key) this.state.desc = !this.state.desc;
        else {
          this.state.sort = key;
          this.state.desc = !!this.columns.find((c) => c.key === key)?.num;
        }
        this.draw();
      }),
    );
  }

  update(rows) {
    this.rows = rows || [];
    this.draw();
  }

  draw() {
    if (!this.el) return;
    let rows = this.rows;
    if (this.filterKey && this.state.filter) {
      let re;
      try {
        re = new RegExp(this.state.filter, "i");
      } catch {
        const f = this.state.filter.toLowerCase();
        re = { test: (s) => s.toLowerCase().includes(f) };
      }
      rows = rows.filter((r) => re.test(String(r[this.filterKey] ?? "")));
    }
    const col = this.columns.find((c) => c.key === this.state.sort) || this.columns[0];
    const get = col.get || ((r) => r[col.key]);
    const dir = this.state.desc ? -1 : 1;
    rows = [...rows].sort((a, b) => {
      const x = get(a) ?? "";
      const y = get(b) ?? "";
      if (typeof x === "number" && typeof y === "number") return (x - y) * dir;
      return String(x).localeCompare(String(y)) * dir;
    });
    $$("th", this.el).forEach((th) => {
      th.classList.toggle("asc", th.dataset.key === col.key && !this.state.desc);
      th.classList.toggle("desc", th.dataset.key === col.key && this.state.desc);
    });
    const shown = rows.slice(0, this.limit);
    const body = $("tbody", this.el);
    setHtml(
      body,
      shown.length
        ? shown.map(
            (r) => html`<tr data-row="${String(this.rowKey(r))}">${this.columns.map((c) => html`<td class="${c.num ? "num" : ""}" data-col="${c.key}">${c.cell ? c.cell(r) : r[c.key]}</td>`)}</tr>`,
          )
        : html`<tr><td colspan="${this.columns.length}" class="muted empty">${this.empty}</td></tr>`,
    );
    const more = $("p.more", this.el);
    more.textContent =
      rows.length > shown.length
        ? `Showing ${shown.length} of ${rows.length}; filter to narrow down.`
        : this.rows.length > rows.length
          ? `${rows.length} of ${this.rows.length} match.`
          : "";
  }
}

// A modal confirmation built on <dialog>; resolves true when the user confirms.
export function confirmDialog(message, action = "Confirm") {
  return new Promise((resolve) => {
    const d = document.createElement("dialog");
    d.className = "confirm";
    setHtml(
      d,
      html`<form method="dialog"><p>${message}</p><div class="buttons">
        <button value="cancel" class="secondary">Cancel</button>
        <button value="ok" class="danger">${action}</button></div></form>`,
    );
    document.body.append(d);
    d.addEventListener("close", () => {
      resolve(d.returnValue === "ok");
      d.remove();
    });
    d.showModal();
  });
}

let noticeTimer;

// Shows a short notice at the top of the page: kind is "ok" or "error".
export function notice(message, kind = "ok") {
  const el = $("#notice");
  el.textContent = message;
  el.className = `notice ${kind}`;
  el.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => (el.hidden = true), kind === "error" ? 8000 : 4000);
}

// Reads a form's named fields into an object.
export function formData(form) {
  return Object.fromEntries(new FormData(form).entries());
}

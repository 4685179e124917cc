// End-to-end test of the dashboard in real headless browsers, against a running broker that
// serves the dashboard and its management API on one origin. The same steps run in each
// browser (see browsers.mjs): Debian's chromium driven by playwright-core and Debian's
// firefox-esr driven by puppeteer-core over WebDriver BiDi; neither library downloads a browser
// of its own.
//
//   WARREN_DASHBOARD_URL   the dashboard, e.g. http://127.0.0.1:15672/ (required)
//   WARREN_DASHBOARD_AMQP_URL or WARREN_TEST_AMQP_URL
//                          the same broker over AMQP (default amqp://guest:guest@127.0.0.1:5672/%2f)
//   WARREN_DASHBOARD_USER, WARREN_DASHBOARD_PASSWORD   an administrator (default guest/guest)
//   WARREN_DASHBOARD_BROWSERS  the browsers, in order (default "chromium firefox")
//   WARREN_DASHBOARD_SCREENSHOTS   where screenshots and the downloaded trace go, in a
//                          directory per browser (default: a new directory under the system's
//                          temp directory)
//   WARREN_DASHBOARD_SHARDS  the broker's shard count (default: what /api/nodes says)
//   CHROMIUM, FIREFOX      the browsers' executables (default /usr/bin/chromium, /usr/bin/firefox-esr)
//
// Each browser is a node:test suite whose steps are tests; they run in order and share one
// browser page. Waits are bounded by deadlines: the API's figures refresh every few seconds,
// so steps poll the page.
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import amqp from "amqplib";
import { launch } from "./browsers.mjs";

const baseUrl = process.env.WARREN_DASHBOARD_URL;
if (!baseUrl) {
  console.error("e2e: set WARREN_DASHBOARD_URL to the dashboard's URL, e.g. http://127.0.0.1:15672/");
  process.exit(2);
}
const dashboard = new URL(baseUrl);
const amqpUrl = process.env.WARREN_DASHBOARD_AMQP_URL || process.env.WARREN_TEST_AMQP_URL || "amqp://guest:guest@127.0.0.1:5672/%2f";
const user = process.env.WARREN_DASHBOARD_USER || "guest";
const password = process.env.WARREN_DASHBOARD_PASSWORD || "guest";
const shotsRoot = process.env.WARREN_DASHBOARD_SCREENSHOTS || mkdtempSync(join(tmpdir(), "warren-dashboard-e2e-"));
const browsers = (process.env.WARREN_DASHBOARD_BROWSERS || "chromium firefox").split(/[\s,]+/).filter(Boolean);

const DEADLINE_MS = 45_000;

// The management API, for cleanup only: the steps themselves go through the pages.
async function apiCall(method, path) {
  const auth = "Basic " + Buffer.from(`${user}:${password}`).toString("base64");
  return fetch(new URL(`api${path}`, dashboard), { method, headers: { Authorization: auth } }).catch(() => null);
}

// A CSS string literal (JSON's escapes of quotes and backslashes are CSS's too).
const str = (s) => JSON.stringify(String(s));
const row = (table, name) => `table[data-table="${table}"] tr[data-row=${str(name)}]`;
const cell = (table, name, col) => `${row(table, name)} td[data-col="${col}"]`;

// Reads the page: `what` of the elements matching css (see the switch). One function in the
// page serves every browser, so the drivers only need evaluate.
function inPage([css, what, arg]) {
  const els = [...document.querySelectorAll(css)];
  const el = els[0];
  switch (what) {
    case "count":
      return els.length;
    case "text":
      return el ? el.textContent.trim() : null;
    case "attr":
      return el ? el.getAttribute(arg) : null;
    case "visible":
      return !!el && el.getClientRects().length > 0 && getComputedStyle(el).visibility !== "hidden";
    case "row-with": {
      // The data-row of the first matching row whose text contains arg.
      const r = els.find((e) => e.textContent.includes(arg));
      return r ? r.dataset.row : null;
    }
    default:
      throw new Error(`inPage: unknown ${what}`);
  }
}

for (const browserName of browsers) describe(browserName, () => steps(browserName));

function steps(browserName) {
  // Names unique to this run and browser, so a rerun against the same broker starts clean.
  const run = Math.random().toString(36).slice(2, 8);
  const queue = `dashboard-e2e-${run}`;
  const newUser = `e2e-user-${run}`;
  const policy = `e2e-policy-${run}`;
  const trace = `e2e-trace-${run}`;
  const connectionName = `dashboard-e2e-${run}`;
  const shots = join(shotsRoot, browserName);
  const pageErrors = [];

  let b;
  let conn;
  let ch;

  const read = (css, what, arg) => b.evaluate(inPage, [css, what, arg ?? null]);
  const text = (css) => read(css, "text");
  const count = (css) => read(css, "count");

  async function shot(name) {
    const file = join(shots, `${name}.png`);
    await b.screenshot(file);
    return file;
  }

  async function until(what, fn, deadlineMs = DEADLINE_MS) {
    const end = Date.now() + deadlineMs;
    let last;
    for (;;) {
      try {
        last = await fn();
        if (last) return last;
      } catch (e) {
        last = e;
      }
      if (Date.now() > end) {
        await shot(`failed-${what.replace(/\W+/g, "-")}`).catch(() => {});
        assert.fail(`${browserName}: timed out waiting for ${what} (last: ${last instanceof Error ? last.message : last})`);
      }
      await new Promise((r) => setTimeout(r, 250));
    }
  }

  const go = (hash) => b.goto(new URL(`#/${hash}`, dashboard).href);

  // The driver's actions, with a screenshot of the page when one fails.
  async function act(what, action) {
    try {
      return await action();
    } catch (e) {
      await shot(`failed-${what.replace(/\W+/g, "-")}`).catch(() => {});
      throw e;
    }
  }
  const click = (css) => act(`click ${css}`, () => b.click(css));
  const fill = (css, value) => act(`fill ${css}`, () => b.fill(css, value));

  async function publish(n, prefix) {
    for (let i = 0; i < n; i++) ch.sendToQueue(queue, Buffer.from(`${prefix} ${i}`), { contentType: "text/plain" });
    await ch.waitForConfirms();
  }

  before(async () => {
    mkdirSync(shots, { recursive: true });
    b = await launch(browserName, {
      timeoutMs: DEADLINE_MS,
      onPageError: (e) => {
        pageErrors.push(e.message);
        console.error(`${browserName}: page error: ${e.message}`);
      },
    });
    conn = await amqp.connect(amqpUrl, { clientProperties: { connection_name: connectionName } });
    conn.on("error", () => {});
    ch = await conn.createConfirmChannel();
    await ch.assertQueue(queue, { durable: false, autoDelete: false });
    console.log(`e2e: ${b.version} on dashboard ${dashboard.href}, screenshots in ${shots}`);
  });

  after(async () => {
    await conn?.close().catch(() => {});
    await apiCall("DELETE", `/queues/%2F/${encodeURIComponent(queue)}`);
    await apiCall("DELETE", `/users/${encodeURIComponent(newUser)}`);
    await apiCall("DELETE", `/policies/%2F/${encodeURIComponent(policy)}`);
    await apiCall("DELETE", `/traces/%2F/${encodeURIComponent(trace)}`);
    await apiCall("DELETE", `/trace-files/${encodeURIComponent(trace)}.log`);
    await b?.close();
  });

  test("a failed login shows an error", async () => {
    await b.goto(dashboard.href);
    await fill("#username", user);
    await fill("#password", `${password}-wrong`);
    await click("#login-form button[type=submit]");
    await until("the login error", () => read("#login-error", "visible"));
    assert.match(await text("#login-error"), /Login failed/);
    await shot("login-failed");
  });

  test("logging in shows the overview", async () => {
    await fill("#password", password);
    await click("#login-form button[type=submit]");
    await until("the node card", () => read('[data-card="node"] .value', "visible"));
    assert.ok((await text('[data-card="node"] .value')).length > 0);
    assert.equal(await read("header#top", "visible"), true);
    // Two refreshes, so the charts have points to draw.
    await until("two chart samples", async () => Number(await read("#chart-rates", "attr", "data-samples")) >= 2);
    await shot("overview");
  });

  test("a queue declared over AMQP appears with its message count, which follows publishes", async () => {
    await publish(3, "first");
    await go("queues");
    await fill("input.filter", queue);
    await until("the queue with 3 messages", async () => (await text(cell("queues", queue, "messages"))) === "3");
    await shot("queues");
    await publish(2, "second");
    await until("the queue with 5 messages", async () => (await text(cell("queues", queue, "messages"))) === "5");
  });

  test("the overview's shard panel lists every shard, the queue's messages on its shard's row", async (t) => {
    // warren_shards is warren's own: RabbitMQ's overview has no per-shard list.
    const nodes = await (await apiCall("GET", "/nodes"))?.json().catch(() => null);
    const shardCount = Number(process.env.WARREN_DASHBOARD_SHARDS || nodes?.[0]?.warren_shards);
    if (!shardCount) {
      t.skip("the broker reports no shards (not warren)");
      return;
    }
    const q = await (await apiCall("GET", `/queues/%2F/${encodeURIComponent(queue)}`)).json();
    const owner = String(q.warren_shard);
    await go("");
    await until(`${shardCount} shard rows`, async () => (await count('table[data-table="shards"] tr[data-row]')) === shardCount);
    for (let i = 0; i < shardCount; i++) assert.equal(await count(row("shards", i)), 1, `shard ${i}'s row`);
    await until("the queue's 5 messages on its shard's row", async () => (await text(cell("shards", owner, "messages"))) === "5");
    for (let i = 0; i < shardCount; i++) {
      if (String(i) !== owner) assert.equal(await text(cell("shards", i, "messages")), "0", `shard ${i} holds no messages`);
    }
    assert.match(await text(cell("shards", owner, "busy_ratio")), /^\d+%$/);
    await shot("overview-shards");
  });

  test("the exchange page publishes a test message", async () => {
    await go("exchanges");
    await until("the exchange list", async () => (await count('table[data-table="exchanges"] a')) > 0);
    await shot("exchanges");
    await go("exchanges/%2F/amq.default");
    await fill("#publish-routing-key", queue);
    await fill("#publish-payload", "from the dashboard");
    await click('#publish button[type="submit"]');
    await until("the publish result", async () => /routed/.test(await text("#publish-result")));
    assert.match(await text("#publish-result"), /published and routed/);
    await shot("exchange");
  });

  test("the queue page peeks a message and purges the queue", async () => {
    await go("queues");
    await click(`${row("queues", queue)} td[data-col="name"] a`);
    await until("the queue page with 6 messages", async () => (await text('[data-card="messages"] .value')) === "6");
    await click("#get-messages");
    await until("a peeked message", () => text("#q-messages pre.payload"));
    assert.equal(await text("#q-messages pre.payload"), "first 0");
    await shot("queue");
    await click("#purge");
    await click('dialog.confirm button[value="ok"]');
    await until("the queue to be empty", async () => (await text('[data-card="messages"] .value')) === "0");
  });

  test("the connections and channels pages list the AMQP client", async () => {
    await go("connections");
    await until("the client's connection", () => read('table[data-table="connections"] tr[data-row]', "row-with", connectionName));
    await shot("connections");
    await go("channels");
    await until("a channel", async () => (await count('table[data-table="channels"] tr[data-row]')) > 0);
    await shot("channels");
  });

  test("admin adds a user", async () => {
    await go("admin/users");
    await fill("#new-user-name", newUser);
    await fill("#new-user-password", "e2e-secret");
    await fill("#new-user-tags", "monitoring");
    await click('#add-user button[type="submit"]');
    await until("the new user", async () => (await text(cell("users", newUser, "tags"))) === "monitoring");
    await shot("admin-users");
  });

  test("admin adds a policy, which the queue page shows", async () => {
    await go("admin/policies");
    await fill("#policy-name", policy);
    await fill("#policy-pattern", `^${queue}$`);
    await fill("#policy-definition", '{"max-length": 1000}');
    await click('#add-policy button[type="submit"]');
    await until("the new policy", async () => (await count(row("policies", policy))) > 0);
    await shot("admin-policies");
    await go(`queues/%2F/${encodeURIComponent(queue)}`);
    await until("the queue's effective policy", async () => ((await text("#q-policy")) ?? "").includes(policy));
  });

  test("admin starts a trace, downloads its log file and stops it", async () => {
    await go("admin/tracing");
    await fill("#trace-name", trace);
    await click('#add-trace button[type="submit"]');
    await until("the new trace", async () => (await count(row("traces", trace))) > 0);
    await publish(1, "traced");
    const file = `${trace}.log`;
    await until("a non-empty trace file", async () => {
      const size = await text(cell("trace-files", file, "size"));
      return size !== null && size !== "0 B";
    });
    await shot("admin-tracing");
    const saved = join(shots, file);
    await b.download(`${row("trace-files", file)} [data-download]`, file, saved);
    assert.match(readFileSync(saved, "utf8"), /traced 0/);
    await click(`${row("traces", trace)} [data-stop-trace]`);
    await until("the trace to stop", async () => (await count(row("traces", trace))) === 0);
  });

  test("the connections page closes a connection", async () => {
    const closed = new Promise((resolve) => conn.once("close", resolve));
    await go("connections");
    const key = await until("the client's connection", () => read('table[data-table="connections"] tr[data-row]', "row-with", connectionName));
    await click(`${row("connections", key)} [data-close]`);
    await click('dialog.confirm button[value="ok"]');
    let timer;
    const deadline = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error("the connection was not closed")), DEADLINE_MS);
    });
    // The timer is cleared, so that it does not hold the process open for its whole deadline.
    await Promise.race([closed, deadline]).finally(() => clearTimeout(timer));
    conn = null;
  });

  test("the queue page deletes the queue", async () => {
    await go(`queues/%2F/${encodeURIComponent(queue)}`);
    await until("the queue page's figures", () => text('[data-card="messages"] .value'));
    await click("#delete-queue");
    await click('dialog.confirm button[value="ok"]');
    await until("the queue list", async () => new URL(b.url()).hash === "#/queues");
    const resp = await apiCall("GET", `/queues/%2F/${encodeURIComponent(queue)}`);
    assert.equal(resp?.status, 404);
  });

  test("no page raised an uncaught exception", () => {
    assert.deepEqual(pageErrors, []);
  });
}

// End-to-end test of the dashboard in a real headless browser: Debian's chromium driven by
// playwright-core (which never downloads a browser of its own), against a running broker that
// serves the dashboard and its management API on one origin.
//
//   WARREN_DASHBOARD_URL   the dashboard, e.g. http://127.0.0.1:15672/ (required)
//   WARREN_DASHBOARD_AMQP_URL or WARREN_TEST_AMQP_URL
//                          the same broker over AMQP (default amqp://guest:guest@127.0.0.1:5672/%2f)
//   WARREN_DASHBOARD_USER, WARREN_DASHBOARD_PASSWORD   an administrator (default guest/guest)
//   WARREN_DASHBOARD_SCREENSHOTS   where screenshots and the downloaded trace go
//                          (default: a new directory under the system's temp directory)
//   WARREN_DASHBOARD_SHARDS  the broker's shard count (default: what /api/nodes says)
//   CHROMIUM               the browser (default /usr/bin/chromium)
//
// Each step is a node:test test; they run in order and share one browser page. Waits are
// bounded by deadlines: the API's figures refresh every few seconds, so steps poll the page.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import amqp from "amqplib";
import { chromium } from "playwright-core";

const baseUrl = process.env.WARREN_DASHBOARD_URL;
if (!baseUrl) {
  console.error("e2e: set WARREN_DASHBOARD_URL to the dashboard's URL, e.g. http://127.0.0.1:15672/");
  process.exit(2);
}
const dashboard = new URL(baseUrl);
const amqpUrl = process.env.WARREN_DASHBOARD_AMQP_URL || process.env.WARREN_TEST_AMQP_URL || "amqp://guest:guest@127.0.0.1:5672/%2f";
const user = process.env.WARREN_DASHBOARD_USER || "guest";
const password = process.env.WARREN_DASHBOARD_PASSWORD || "guest";
const shots = process.env.WARREN_DASHBOARD_SCREENSHOTS || mkdtempSync(join(tmpdir(), "warren-dashboard-e2e-"));
mkdirSync(shots, { recursive: true });
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";

// Names unique to this run, so a rerun against the same broker starts clean.
const run = Math.random().toString(36).slice(2, 8);
const queue = `dashboard-e2e-${run}`;
const newUser = `e2e-user-${run}`;
const policy = `e2e-policy-${run}`;
const trace = `e2e-trace-${run}`;
const connectionName = `dashboard-e2e-${run}`;

const DEADLINE_MS = 45_000;

let browser;
let page;
let conn;
let ch;

// The management API, for cleanup only: the steps themselves go through the pages.
async function apiCall(method, path) {
  const auth = "Basic " + Buffer.from(`${user}:${password}`).toString("base64");
  return fetch(new URL(`api${path}`, dashboard), { method, headers: { Authorization: auth } }).catch(() => null);
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
      assert.fail(`timed out waiting for ${what} (last: ${last instanceof Error ? last.message : last})`);
    }
    await new Promise((r) => setTimeout(r, 250));
  }
}

async function shot(name) {
  const file = join(shots, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

async function go(hash) {
  await page.goto(new URL(`#/${hash}`, dashboard).href);
}

const row = (table, name) => page.locator(`table[data-table="${table}"] tr[data-row="${name}"]`);
const cell = (table, name, col) => row(table, name).locator(`td[data-col="${col}"]`);
const text = async (loc) => ((await loc.count()) ? (await loc.first().textContent()).trim() : null);

async function publish(n, prefix) {
  for (let i = 0; i < n; i++) ch.sendToQueue(queue, Buffer.from(`${prefix} ${i}`), { contentType: "text/plain" });
  await ch.waitForConfirms();
}

before(async () => {
  browser = await chromium.launch({ executablePath, args: ["--no-sandbox"] });
  const context = await browser.newContext({ viewport: { width: 1366, height: 900 }, acceptDownloads: true });
  page = await context.newPage();
  page.on("pageerror", (e) => console.error(`page error: ${e.message}`));
  conn = await amqp.connect(amqpUrl, { clientProperties: { connection_name: connectionName } });
  conn.on("error", () => {});
  ch = await conn.createConfirmChannel();
  await ch.assertQueue(queue, { durable: false, autoDelete: false });
  console.log(`e2e: dashboard ${dashboard.href}, screenshots in ${shots}`);
});

after(async () => {
  await conn?.close().catch(() => {});
  await apiCall("DELETE", `/queues/%2F/${encodeURIComponent(queue)}`);
  await apiCall("DELETE", `/users/${encodeURIComponent(newUser)}`);
  await apiCall("DELETE", `/policies/%2F/${encodeURIComponent(policy)}`);
  await apiCall("DELETE", `/traces/%2F/${encodeURIComponent(trace)}`);
  await apiCall("DELETE", `/trace-files/${encodeURIComponent(trace)}.log`);
  await browser?.close();
});

test("a failed login shows an error", async () => {
  await page.goto(dashboard.href);
  await page.locator("#username").fill(user);
  await page.locator("#password").fill(`${password}-wrong`);
  await page.locator("#login-form button[type=submit]").click();
  await page.locator("#login-error").waitFor({ state: "visible", timeout: DEADLINE_MS });
  assert.match(await page.locator("#login-error").textContent(), /Login failed/);
  await shot("login-failed");
});

test("logging in shows the overview", async () => {
  await page.locator("#password").fill(password);
  await page.locator("#login-form button[type=submit]").click();
  await page.locator('[data-card="node"] .value').waitFor({ timeout: DEADLINE_MS });
  assert.ok((await text(page.locator('[data-card="node"] .value'))).length > 0);
  assert.equal(await page.locator("header#top").isVisible(), true);
  // Two refreshes, so the charts have points to draw.
  await until("two chart samples", async () => Number(await page.locator("#chart-rates").getAttribute("data-samples")) >= 2);
  await shot("overview");
});

test("a queue declared over AMQP appears with its message count, which follows publishes", async () => {
  await publish(3, "first");
  await go("queues");
  await page.locator("input.filter").fill(queue);
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
  await until(`${shardCount} shard rows`, async () => (await page.locator('table[data-table="shards"] tr[data-row]').count()) === shardCount);
  for (let i = 0; i < shardCount; i++) assert.equal(await row("shards", String(i)).count(), 1, `shard ${i}'s row`);
  await until("the queue's 5 messages on its shard's row", async () => (await text(cell("shards", owner, "messages"))) === "5");
  for (let i = 0; i < shardCount; i++) {
    if (String(i) !== owner) assert.equal(await text(cell("shards", String(i), "messages")), "0", `shard ${i} holds no messages`);
  }
  assert.match(await text(cell("shards", owner, "busy_ratio")), /^\d+%$/);
  await shot("overview-shards");
});

test("the exchange page publishes a test message", async () => {
  await go("exchanges");
  await page.locator('table[data-table="exchanges"]').waitFor();
  await until("the exchange list", async () => (await page.locator('table[data-table="exchanges"] a').count()) > 0);
  await shot("exchanges");
  await go("exchanges/%2F/amq.default");
  await page.locator("#publish-routing-key").fill(queue);
  await page.locator("#publish-payload").fill("from the dashboard");
  await page.locator('#publish button[type="submit"]').click();
  await until("the publish result", async () => /routed/.test(await page.locator("#publish-result").textContent()));
  assert.match(await page.locator("#publish-result").textContent(), /published and routed/);
  await shot("exchange");
});

test("the queue page peeks a message and purges the queue", async () => {
  await go("queues");
  await page.locator(`table[data-table="queues"] a:text-is("${queue}")`).click();
  await until("the queue page with 6 messages", async () => (await text(page.locator('[data-card="messages"] .value'))) === "6");
  await page.locator("#get-messages").click();
  await page.locator("#q-messages pre.payload").first().waitFor({ timeout: DEADLINE_MS });
  assert.equal((await page.locator("#q-messages pre.payload").first().textContent()).trim(), "first 0");
  await shot("queue");
  await page.locator("#purge").click();
  await page.locator('dialog.confirm button[value="ok"]').click();
  await until("the queue to be empty", async () => (await text(page.locator('[data-card="messages"] .value'))) === "0");
});

test("the connections and channels pages list the AMQP client", async () => {
  await go("connections");
  await until("the client's connection", async () => (await page.locator(`table[data-table="connections"] td:has-text("${connectionName}")`).count()) > 0);
  await shot("connections");
  await go("channels");
  await until("a channel", async () => (await page.locator('table[data-table="channels"] tr[data-row]').count()) > 0);
  await shot("channels");
});

test("admin adds a user", async () => {
  await go("admin/users");
  await page.locator("#new-user-name").fill(newUser);
  await page.locator("#new-user-password").fill("e2e-secret");
  await page.locator("#new-user-tags").fill("monitoring");
  await page.locator('#add-user button[type="submit"]').click();
  await until("the new user", async () => (await text(cell("users", newUser, "tags"))) === "monitoring");
  await shot("admin-users");
});

test("admin adds a policy, which the queue page shows", async () => {
  await go("admin/policies");
  await page.locator("#policy-name").fill(policy);
  await page.locator("#policy-pattern").fill(`^${queue}$`);
  await page.locator("#policy-definition").fill('{"max-length": 1000}');
  await page.locator('#add-policy button[type="submit"]').click();
  await until("the new policy", async () => (await row("policies", policy).count()) > 0);
  await shot("admin-policies");
  await go(`queues/%2F/${encodeURIComponent(queue)}`);
  await until("the queue's effective policy", async () => (await page.locator("#q-policy").textContent()).includes(policy));
});

test("admin starts a trace, downloads its log file and stops it", async () => {
  await go("admin/tracing");
  await page.locator("#trace-name").fill(trace);
  await page.locator('#add-trace button[type="submit"]').click();
  await until("the new trace", async () => (await row("traces", trace).count()) > 0);
  await publish(1, "traced");
  const file = `${trace}.log`;
  await until("a non-empty trace file", async () => {
    const size = await text(cell("trace-files", file, "size"));
    return size !== null && size !== "0 B";
  });
  await shot("admin-tracing");
  const [download] = await Promise.all([page.waitForEvent("download", { timeout: DEADLINE_MS }), row("trace-files", file).locator("[data-download]").click()]);
  const saved = join(shots, file);
  await download.saveAs(saved);
  const log = readFileSync(saved, "utf8");
  assert.match(log, /traced 0/);
  await row("traces", trace).locator("[data-stop-trace]").click();
  await until("the trace to stop", async () => (await row("traces", trace).count()) === 0);
});

test("the connections page closes a connection", async () => {
  const closed = new Promise((resolve) => conn.once("close", resolve));
  await go("connections");
  const button = page.locator(`table[data-table="connections"] tr:has-text("${connectionName}") [data-close]`);
  await until("the close button", async () => (await button.count()) > 0);
  await button.first().click();
  await page.locator('dialog.confirm button[value="ok"]').click();
  await Promise.race([closed, new Promise((_, reject) => setTimeout(() => reject(new Error("the connection was not closed")), DEADLINE_MS))]);
  conn = null;
});

test("the queue page deletes the queue", async () => {
  await go(`queues/%2F/${encodeURIComponent(queue)}`);
  await page.locator("#delete-queue").click();
  await page.locator('dialog.confirm button[value="ok"]').click();
  await until("the queue list", async () => new URL(page.url()).hash === "#/queues");
  const resp = await apiCall("GET", `/queues/%2F/${encodeURIComponent(queue)}`);
  assert.equal(resp?.status, 404);
});

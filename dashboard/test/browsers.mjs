// The browsers the dashboard's end-to-end test (e2e.mjs) runs in, behind one small driver
// interface, so that its steps are written once. Debian's chromium is driven by playwright-core
// over the DevTools protocol; Debian's firefox-esr by puppeteer-core over WebDriver BiDi (the
// Firefox that playwright-core drives is its own patched build, which Debian does not ship).
// Neither library downloads a browser: both are given the installed one's executable.
//
// A driver has:
//   goto(url)                      navigate (a change of the URL's hash stays on the page)
//   fill(css, value)               replace the text of the first matching input or textarea
//   click(css)                     click the first matching element
//   evaluate(fn, arg)              run fn(arg) in the page and return its (JSON) result
//   screenshot(file)               a full-page PNG
//   url()                          the page's URL
//   download(css, name, saveTo)    click the first matching element, wait for the download it
//                                  starts (a file called name) and save it as saveTo
//   close()
// fill and click wait (up to timeoutMs) for the element to be visible and enabled, and click
// only where the element, not something over it, takes the click; the test reads the page
// through evaluate and polls with its own deadlines.
import { copyFileSync, existsSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const VIEWPORT = { width: 1366, height: 900 };

export const BROWSERS = {
  chromium: { executable: () => process.env.CHROMIUM || "/usr/bin/chromium", launch: chromium },
  firefox: { executable: () => process.env.FIREFOX || "/usr/bin/firefox-esr", launch: firefox },
};

// Starts browser `name` (a key of BROWSERS) with one page; onPageError gets the page's
// uncaught exceptions.
export async function launch(name, { timeoutMs, onPageError }) {
  const b = BROWSERS[name];
  if (!b) throw new Error(`unknown browser ${name} (known: ${Object.keys(BROWSERS).join(", ")})`);
  return b.launch(b.executable(), { timeoutMs, onPageError });
}

async function chromium(executablePath, { timeoutMs, onPageError }) {
  const { chromium } = await import("playwright-core");
  const browser = await chromium.launch({ executablePath, args: ["--no-sandbox"] });
  const context = await browser.newContext({ viewport: VIEWPORT, acceptDownloads: true });
  const page = await context.newPage();
  page.setDefaultTimeout(timeoutMs);
  page.on("pageerror", onPageError);
  return {
    version: browser.version(),
    goto: async (url) => {
      await page.goto(url);
    },
    fill: (css, value) => page.locator(css).first().fill(value),
    click: (css) => page.locator(css).first().click(),
    evaluate: (fn, arg) => page.evaluate(fn, arg),
    screenshot: (path) => page.screenshot({ path, fullPage: true }),
    url: () => page.url(),
    download: async (css, _name, saveTo) => {
      const [download] = await Promise.all([page.waitForEvent("download"), page.locator(css).first().click()]);
      await download.saveAs(saveTo);
    },
    close: () => browser.close(),
  };
}

async function firefox(executablePath, { timeoutMs, onPageError }) {
  const { default: puppeteer } = await import("puppeteer-core");
  // WebDriver BiDi has no download control in this puppeteer, so Firefox's own preferences
  // send every download, without asking, to a directory of this run's own.
  const downloads = mkdtempSync(join(tmpdir(), "warren-dashboard-e2e-downloads-"));
  const browser = await puppeteer.launch({
    browser: "firefox",
    executablePath,
    headless: true,
    defaultViewport: VIEWPORT,
    timeout: timeoutMs,
    extraPrefsFirefox: {
      "browser.download.folderList": 2,
      "browser.download.dir": downloads,
      "browser.download.useDownloadDir": true,
      "browser.download.always_ask_before_handling_new_types": false,
    },
  });
  const page = await browser.newPage();
  page.setDefaultTimeout(timeoutMs);
  page.on("pageerror", onPageError);
  const version = await browser.version();
  return {
    version,
    goto: async (url) => {
      await page.goto(url);
    },
    fill: (css, value) => page.locator(css).fill(value),
    click: async (css) => {
      // Where the element is, checked by hit-testing its centre just before the mouse clicks
      // there, as playwright-core does: puppeteer-core's own wait for a stable box misses an
      // element that a page's refresh moves (say, cards filled in above it) after that wait.
      const end = Date.now() + timeoutMs;
      for (;;) {
        const at = await page.evaluate(clickPoint, css);
        if (at) return page.mouse.click(at.x, at.y);
        if (Date.now() > end) throw new Error(`click ${css}: no visible, enabled element there to click in ${timeoutMs} ms`);
        await new Promise((r) => setTimeout(r, 100));
      }
    },
    evaluate: (fn, arg) => page.evaluate(fn, arg),
    screenshot: (path) => page.screenshot({ path, fullPage: true }),
    url: () => page.url(),
    download: async (css, name, saveTo) => {
      await page.locator(css).click();
      // Firefox writes NAME.part and renames it to NAME when the download completes.
      const file = join(downloads, name);
      const end = Date.now() + timeoutMs;
      while (!existsSync(file) || readdirSync(downloads).some((f) => f.endsWith(".part"))) {
        if (Date.now() > end) throw new Error(`no download ${name} in ${timeoutMs} ms (have: ${readdirSync(downloads).join(", ") || "nothing"})`);
        await new Promise((r) => setTimeout(r, 100));
      }
      copyFileSync(file, saveTo);
    },
    close: async () => {
      await browser.close();
      rmSync(downloads, { recursive: true, force: true });
    },
  };
}

// Runs in the page: scrolls the first element matching css into view and returns its centre,
// or null while there is none, it is disabled or hidden, or another element (an overlay, a
// modal dialog's backdrop) would take a click there.
function clickPoint(css) {
  const el = document.querySelector(css);
  if (!el || el.disabled) return null;
  el.scrollIntoView({ block: "center", inline: "center" });
  const r = el.getBoundingClientRect();
  if (r.width === 0 || r.height === 0) return null;
  const x = r.left + r.width / 2;
  const y = r.top + r.height / 2;
  const hit = document.elementFromPoint(x, y);
  return hit && (hit === el || el.contains(hit)) ? { x, y } : null;
}

// Development server: serves dashboard/dist (or DASHBOARD_DIR) at / and proxies /api/ to a
// broker's management API, so the pages can be worked on against warren or RabbitMQ without
// rebuilding the broker. No dependencies beyond node itself.
//
//   DASHBOARD_API=http://127.0.0.1:15672 DASHBOARD_PORT=8080 node serve.mjs
import http from "node:http";
import { readFile } from "node:fs/promises";
import { extname, join, normalize } from "node:path";
import { fileURLToPath } from "node:url";

const here = fileURLToPath(new URL(".", import.meta.url));
const root = process.env.DASHBOARD_DIR || join(here, "dist");
const api = new URL(process.env.DASHBOARD_API || "http://127.0.0.1:15672");
const port = Number(process.env.DASHBOARD_PORT || 8080);
const host = process.env.DASHBOARD_HOST || "127.0.0.1";

const types = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".LICENSE": "text/plain; charset=utf-8",
};

function proxy(req, res) {
  const up = http.request(
    { host: api.hostname, port: api.port || 80, method: req.method, path: req.url, headers: { ...req.headers, host: api.host } },
    (r) => {
      res.writeHead(r.statusCode, r.headers);
      r.pipe(res);
    },
  );
  up.on("error", (e) => {
    res.writeHead(502, { "content-type": "application/json" });
    res.end(JSON.stringify({ error: "bad_gateway", reason: e.message }));
  });
  req.pipe(up);
}

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, "http://x");
  if (url.pathname.startsWith("/api/")) return proxy(req, res);
  const rel = url.pathname === "/" ? "index.html" : normalize(decodeURIComponent(url.pathname)).replace(/^[/\\]+/, "");
  if (rel.split(/[/\\]/).includes("..")) {
    res.writeHead(400).end();
    return;
  }
  try {
    const body = await readFile(join(root, rel));
    res.writeHead(200, { "content-type": types[extname(rel)] || "application/octet-stream", "cache-control": "no-cache" });
    res.end(body);
  } catch {
    res.writeHead(404, { "content-type": "text/plain" }).end("not found\n");
  }
});

server.listen(port, host, () => {
  const a = server.address();
  console.log(`dashboard on http://${a.address}:${a.port}/ (API: ${api.origin})`);
});

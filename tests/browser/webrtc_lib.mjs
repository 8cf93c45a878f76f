// Shared parts of the webrtc_*.mjs scripts (tests/integration/webrtc_sdk.rs): the meeting
// page's own HTTP server (another origin than flowmeter), Chromium with fake
// media devices, error collection and the rollup wait.
import http from 'node:http';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { URL_, getJson, log, waitFor } from './lib.mjs';

const env = process.env;

/**
 * Starts flowmeter through `ctx.server()` and arms a watchdog: a script
 * still running after `ms` fails (exit 1) instead of hanging the Rust test;
 * the server child is killed when node exits however it exits.
 */
export async function startGuarded(ctx, ms = 90000) {
  const child = await ctx.server();
  process.once('exit', () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  setTimeout(() => {
    console.error(`FAIL: watchdog: still running after ${ms} ms`);
    process.exit(1);
  }, ms).unref();
  return child;
}

/** Chromium flags: fake camera and microphone, permission granted. */
export const MEDIA_ARGS = [
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
  '--autoplay-policy=no-user-gesture-required',
];

/**
 * Serves the test page on 127.0.0.1:`port`. `GET /?csp=worker-none` adds a
 * CSP forbidding workers; `module=1` loads the SDK with `import()` instead of
 * `<script src>`. The SDK always comes from flowmeter (`FM_URL`).
 */
export async function pageServer(port) {
  const helper = readFileSync(join(env.FM_REPO, 'tests/browser/webrtc_page.js'));
  const server = http.createServer((req, res) => {
    const u = new URL(req.url, 'http://x');
    if (u.pathname === '/webrtc_page.js') {
      res.writeHead(200, { 'content-type': 'text/javascript' });
      res.end(helper);
      return;
    }
    if (u.pathname === '/favicon.ico') {
      res.writeHead(204).end();
      return;
    }
    if (u.pathname !== '/') {
      res.writeHead(404).end();
      return;
    }
    const headers = { 'content-type': 'text/html; charset=utf-8' };
    if (u.searchParams.get('csp') === 'worker-none') {
      headers['content-security-policy'] = "worker-src 'none'";
    }
    const sdk = `${URL_}/sdk/webrtc-stats.js`;
    const load = u.searchParams.get('module')
      ? `<script type="module">await import(${JSON.stringify(sdk)}); window.sdkLoaded = !!globalThis.FlowmeterWebRTC;</script>`
      : `<script src="${sdk}"></script><script>window.sdkLoaded = !!window.FlowmeterWebRTC;</script>`;
    res.writeHead(200, headers);
    res.end(`<!doctype html><meta charset="utf-8"><title>meeting</title>
<script src="/webrtc_page.js"></script>
${load}
<p>meeting page</p>`);
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', resolve);
  });
  const origin = `http://127.0.0.1:${port}`;
  log('meeting page at', origin);
  return { origin, close: () => server.close() };
}

/** Opens `url` in a new page and waits for the SDK; collects errors. */
export async function openPage(browser, url) {
  const page = await browser.newPage();
  const errors = { page: [], console: [], warnings: [] };
  page.on('pageerror', (e) => errors.page.push(String(e && e.stack ? e.stack : e)));
  page.on('console', (m) => {
    if (m.type() === 'error') errors.console.push(m.text());
    else if (m.type() === 'warning') errors.warnings.push(m.text());
    if (m.text().includes('[flowmeter]')) log('page:', m.type(), m.text());
  });
  await page.goto(url);
  await page.waitForFunction(() => window.sdkLoaded === true, null, { timeout: 10000 });
  return { page, errors };
}

/** Σ bytes of the meeting's webrtc_hourly rows, through the API. */
export async function rollupTotals(meeting, readToken) {
  const q = `/v1/rollups/hourly?kind=webrtc&meeting_id=${encodeURIComponent(meeting)}`;
  const rows = (await getJson(q, readToken)).rows;
  const sum = (c) => rows.reduce((n, r) => n + Number(r[c] || 0), 0);
  return {
    samples: sum('samples'),
    bytes_sent: sum('bytes_sent'),
    bytes_received: sum('bytes_received'),
    relay_bytes: sum('relay_bytes'),
  };
}

/** Waits until the meeting's rollup holds `bytes` (sent + received). */
export async function waitForRollup(meeting, readToken, bytes, ms = 20000) {
  let last;
  await waitFor(`webrtc_hourly of ${meeting} to hold ${bytes} bytes`, async () => {
    last = await rollupTotals(meeting, readToken);
    return last.bytes_sent + last.bytes_received === bytes;
  }, ms, 250).catch((e) => {
    throw new Error(`${e.message}; last rollup: ${JSON.stringify(last)}`);
  });
  return last;
}

/** The collector options every test page uses (short intervals). */
export function collectorOptions(meeting, extra = {}) {
  return {
    endpoint: `${URL_}/v1/events`,
    token: env.FM_INGEST_TOKEN,
    meetingId: meeting,
    pollIntervalMs: 500,
    flushIntervalMs: 1000,
    retryMinMs: 300,
    retryMaxMs: 2000,
    ...extra,
  };
}

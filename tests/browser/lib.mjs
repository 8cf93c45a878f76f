// Shared helpers of the browser tests (run by tests/integration/common/browser.rs):
// start/stop the flowmeter child, launch Chromium, post events, wait.
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

const env = process.env;
const require = createRequire(join(env.FM_REPO, 'web', 'package.json'));
export const { chromium } = require('playwright-core');

export const URL_ = env.FM_URL;
export const OUT = env.FM_OUT;

const t0 = Date.now();
export function log(...args) {
  console.log(`[${((Date.now() - t0) / 1000).toFixed(2)}s]`, ...args);
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `fn` until it returns a truthy value; throws `what` after `ms`. */
export async function waitFor(what, fn, ms = 10000, every = 100) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    await sleep(every);
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what} (last: ${last})`);
}

/** Starts `flowmeter serve` (roles: all unless given) and waits for /healthz. */
export async function startServer(roles = 'ingest,api,rollup,hub') {
  const child = spawn(env.FM_BIN, ['--config', env.FM_CONFIG, 'serve', '--roles', roles], {
    stdio: ['ignore', 'inherit', 'inherit'],
    env: { ...env, RUST_LOG: env.RUST_LOG || 'warn' },
  });
  await waitFor('the server to answer /healthz', async () => {
    if (child.exitCode !== null) throw new Error(`serve exited with ${child.exitCode}`);
    const r = await fetch(`${URL_}/healthz`);
    return r.ok;
  }, 30000);
  return child;
}

/** Stops a server child: SIGTERM (graceful) or SIGKILL. */
export async function stopServer(child, signal = 'SIGTERM') {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const done = new Promise((r) => child.once('exit', r));
  child.kill(signal);
  await done;
}

/** Launches headless Chromium; `args` are added to the defaults. */
export async function launch(args = []) {
  return chromium.launch({
    executablePath: env.FM_CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-dev-shm-usage', ...args],
  });
}

/** POSTs events to /v1/events (JSON array); throws unless 202. */
export async function postEvents(events, token) {
  const headers = { 'content-type': 'application/json' };
  if (token) headers.authorization = `Bearer ${token}`;
  const r = await fetch(`${URL_}/v1/events`, { method: 'POST', headers, body: JSON.stringify(events) });
  if (r.status !== 202) throw new Error(`ingest answered ${r.status}: ${await r.text()}`);
  return r.json();
}

/** GETs JSON from the API with the read token; throws unless 200. */
export async function getJson(path, token) {
  const headers = token ? { authorization: `Bearer ${token}` } : {};
  const r = await fetch(`${URL_}${path}`, { headers });
  if (r.status !== 200) throw new Error(`GET ${path} answered ${r.status}: ${await r.text()}`);
  return r.json();
}

/** Writes results.json for the Rust side to check. */
export function results(obj) {
  writeFileSync(join(OUT, 'results.json'), JSON.stringify(obj, null, 2));
}

/** Runs `main`, exits 1 with the error on failure; kills `cleanup` children. */
export async function run(main) {
  const children = [];
  const browsers = [];
  const ctx = {
    async server(roles) { const c = await startServer(roles); children.push(c); return c; },
    async browser(args) { const b = await launch(args); browsers.push(b); return b; },
    track(child) { children.push(child); return child; },
  };
  let code = 0;
  try {
    await main(ctx);
    log('PASS');
  } catch (e) {
    console.error('FAIL:', e && e.stack ? e.stack : e);
    code = 1;
  }
  for (const b of browsers) await b.close().catch(() => {});
  for (const c of children) await stopServer(c, 'SIGKILL').catch(() => {});
  process.exit(code);
}

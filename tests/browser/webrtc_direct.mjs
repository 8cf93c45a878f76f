// A loopback call on a direct path, measured by /sdk/webrtc-stats.js on a
// page of another origin (tests/integration/webrtc_sdk.rs checks results.json against
// the stream and the rollup). The page goes hidden once mid-call (beacon,
// then visible again) and is closed at the end without stop(): its last
// deltas can only arrive by the pagehide beacon.
import { run, log, sleep, results } from './lib.mjs';
import { startGuarded, MEDIA_ARGS, pageServer, openPage, collectorOptions, waitForRollup } from './webrtc_lib.mjs';

const env = process.env;
const meeting = env.FM_MEETING;

run(async (ctx) => {
  await startGuarded(ctx);
  const site = await pageServer(Number(env.FM_PAGE_PORT));
  const browser = await ctx.browser(MEDIA_ARGS);
  const { page, errors } = await openPage(browser, `${site.origin}/`);
  const requests = [];
  page.on('request', (r) => {
    if (r.url().includes('/v1/events')) {
      const h = r.headers();
      requests.push({ type: r.resourceType(), method: r.method(), token: r.url().includes('token='), contentType: h['content-type'] || null, authorization: 'authorization' in h });
    }
  });

  const started = Date.now();
  await page.evaluate(async (opts) => {
    window.call = await fmTest.loopback();
    window.c = FlowmeterWebRTC.start({ ...opts, onEvent: fmTest.onEvent });
    c.addPeer(call.a, 'a');
    c.addPeer(call.b, 'b');
  }, collectorOptions(meeting, { peerIdPrefix: 'p-', userId: 'u-1' }));
  log('call connected, collector started');

  await sleep(7000);
  await page.waitForFunction(() => c.stats().pendingBytes > 0, null, { timeout: 5000 });
  // The tab goes to the background and comes back: what is pending leaves by beacon.
  const hidden = await page.evaluate(() => {
    const before = c.stats();
    Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => 'hidden' });
    document.dispatchEvent(new Event('visibilitychange'));
    const after = c.stats();
    delete document.visibilityState;
    document.dispatchEvent(new Event('visibilitychange'));
    return { pendingBefore: before.pendingBytes, queuedBefore: before.queued, beacons: after.beacons, beaconEvents: after.beaconEvents };
  });
  log('hidden once:', JSON.stringify(hidden));

  // After the next regular events, freeze the counters: what moved since
  // then is pending when the page closes.
  await page.waitForFunction(() => {
    const i = fmTest.events.findIndex((e) => e.reason === 'hidden');
    return ['p-a', 'p-b'].every((p) => fmTest.events.slice(i).some((e) => e.peer_id === p && e.reason === 'interval'));
  }, null, { timeout: 15000 });
  await sleep(1500);
  const frozen = await page.evaluate(() => fmTest.freeze([call.a, call.b], c));
  const atClose = await page.evaluate(() => ({ stats: c.stats(), events: fmTest.events.slice() }));
  log('closing the page; collector:', JSON.stringify({ ...atClose.stats, perPeer: undefined }));
  const runMs = Date.now() - started;
  await page.close({ runBeforeUnload: true });

  const expected = {
    'p-a': { sent: frozen[0].sent, received: frozen[0].received },
    'p-b': { sent: frozen[1].sent, received: frozen[1].received },
  };
  const total = frozen.reduce((n, f) => n + f.sent + f.received, 0);
  const rollup = await waitForRollup(meeting, env.FM_READ_TOKEN, total);
  log('rollup holds', JSON.stringify(rollup));
  results({ meeting, expected, rollup, hidden, atClose, requests, errors, runMs });
});

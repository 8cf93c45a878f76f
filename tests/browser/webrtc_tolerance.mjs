// Bad input and failures (tests/integration/webrtc_sdk.rs checks results.json):
// - page 1 (allowed origin, CSP without workers, SDK loaded by import()):
//   a real call whose second peer is closed mid-run, fake peers with sparse,
//   odd and flapping stats, one whose getStats() throws and then closes, and
//   one whose peer id the server rejects (400);
// - page 2 (an origin not in ingest.cors_origins, worker mode): every POST
//   is refused, the collector keeps polling, backs off, bounds its queue.
import { URL_, run, log, sleep, results } from './lib.mjs';
import { startGuarded, MEDIA_ARGS, pageServer, openPage, collectorOptions, waitForRollup } from './webrtc_lib.mjs';

const env = process.env;
const meeting = env.FM_MEETING;
const badMeeting = `${meeting}-refused`;
const LONG_ID = 'x'.repeat(200);

run(async (ctx) => {
  await startGuarded(ctx);
  const good = await pageServer(Number(env.FM_PAGE_PORT));
  const bad = await pageServer(Number(env.FM_BAD_PORT));
  const browser = await ctx.browser(MEDIA_ARGS);
  const [p1, p2] = await Promise.all([
    openPage(browser, `${good.origin}/?csp=worker-none&module=1`),
    openPage(browser, `${bad.origin}/`),
  ]);

  const started = Date.now();
  const setup = await p1.page.evaluate(async ({ opts, longId }) => {
    window.call = await fmTest.loopback();
    window.c = FlowmeterWebRTC.start({ ...opts, onEvent: fmTest.onEvent });
    window.fakes = {};
    c.addPeer(call.a, 'live-a');
    c.addPeer(call.b, 'live-b');
    for (const k of ['sparse', 'weird', 'flapper', 'rejecting']) {
      fakes[k] = fmTest.fake(k);
      c.addPeer(fakes[k], k);
    }
    fakes.toolong = fmTest.fake('toolong');
    c.addPeer(fakes.toolong, longId);
    // Misuse fails at once, with a message.
    const misuse = [];
    for (const f of [
      () => c.addPeer({}, 'nope'),
      () => FlowmeterWebRTC.start({ endpoint: opts.endpoint }),
      () => c.addPeer(fmTest.fake('steady'), 'sparse'),
    ]) {
      try {
        f();
        misuse.push(null);
      } catch (e) {
        misuse.push(String(e.message));
      }
    }
    return { misuse };
  }, { opts: collectorOptions(meeting, { pollIntervalMs: 250 }), longId: LONG_ID });
  log('page 1 running:', JSON.stringify(setup));

  await p2.page.evaluate((opts) => {
    window.c = FlowmeterWebRTC.start({ ...opts, onEvent: fmTest.onEvent });
    window.fakes = { noclone: fmTest.fake('noclone'), steady: fmTest.fake('steady') };
    c.addPeer(fakes.noclone, 'nc');
    c.addPeer(fakes.steady, 'steady');
  }, collectorOptions(badMeeting, {
    pollIntervalMs: 250, minEventIntervalMs: 500, maxEventsPerMinute: 1000,
    maxQueueEvents: 5, flushIntervalMs: 500, stopTimeoutMs: 1000,
  }));

  // The server's side of the refusal, seen without a browser.
  const refused = await fetch(`${URL_}/v1/events?token=${env.FM_INGEST_TOKEN}`, {
    method: 'POST', headers: { origin: bad.origin, 'content-type': 'text/plain' }, body: '[]',
  });
  const refusedStatus = refused.status;
  const refusedBody = await refused.text();
  log('a POST from', bad.origin, 'answers', refusedStatus, refusedBody);

  await sleep(4000);
  const liveB = await p1.page.evaluate(() => {
    call.b.close(); // no removePeer: the collector finds it closed
    return call.b.fm.last;
  });
  log('closed live-b at', JSON.stringify(liveB));
  await sleep(4000);
  await p1.page.evaluate(() => { fakes.rejecting.fm.closeNow = true; });
  const badMid = await p2.page.evaluate(() => c.stats());
  await sleep(4000);

  const frozen = await p1.page.evaluate(() => fmTest.freeze([call.a], c));
  const page1 = await p1.page.evaluate(async () => {
    const peersBeforeStop = c.stats().peers;
    const stopped = await c.stop();
    return {
      peersBeforeStop, stopped, mode: stopped.mode, events: fmTest.events.slice(),
      truth: Object.fromEntries(Object.entries(fakes).map(([k, f]) => [k, f.fm.truth])),
    };
  });
  const page2 = await p2.page.evaluate(async () => {
    const before = c.stats();
    const stopped = await c.stop();
    return { before, stopped, mode: stopped.mode, events: fmTest.events.slice(), truth: fakes.noclone.fm.truth };
  });
  page2.mid = badMid;
  const runMs = Date.now() - started;
  log('page 1:', JSON.stringify({ ...page1.stopped, perPeer: undefined }));
  log('page 2:', JSON.stringify({ ...page2.stopped, perPeer: undefined }));

  const expected = {
    'live-a': { sent: frozen[0].sent, received: frozen[0].received },
    'live-b': { sent: liveB.sent, received: liveB.received },
  };
  for (const k of ['sparse', 'weird', 'flapper', 'rejecting']) {
    expected[k] = { sent: page1.truth[k].sent, received: page1.truth[k].received };
  }
  const total = Object.values(expected).reduce((n, e) => n + e.sent + e.received, 0);
  const rollup = await waitForRollup(meeting, env.FM_READ_TOKEN, total);
  log('rollup holds', JSON.stringify(rollup));
  results({
    meeting, badMeeting, longId: LONG_ID, expected, rollup, setup, page1, page2,
    refusedStatus, refusedBody, errors: { page1: p1.errors, page2: p2.errors }, runMs,
  });
});

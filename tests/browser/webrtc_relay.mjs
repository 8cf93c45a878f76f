// A loopback call forced through a private coturn (iceTransportPolicy
// "relay"): the collector must report `relay` over udp, and the relayed
// bytes must land in webrtc_hourly.relay_bytes (tests/integration/webrtc_sdk.rs).
import { run, log, sleep, results } from './lib.mjs';
import { startTurn } from './turn.mjs';
import { startGuarded, MEDIA_ARGS, pageServer, openPage, collectorOptions, waitForRollup } from './webrtc_lib.mjs';

const env = process.env;
const meeting = env.FM_MEETING;

run(async (ctx) => {
  const turn = await startTurn();
  try {
    await startGuarded(ctx);
    const site = await pageServer(Number(env.FM_PAGE_PORT));
    const browser = await ctx.browser(MEDIA_ARGS);
    const { page, errors } = await openPage(browser, `${site.origin}/`);

    const rtc = {
      iceTransportPolicy: 'relay',
      iceServers: [{ urls: turn.url, username: turn.username, credential: turn.credential }],
    };
    const started = Date.now();
    await page.evaluate(async ({ opts, rtc }) => {
      window.call = await fmTest.loopback(rtc);
      window.c = FlowmeterWebRTC.start({ ...opts, onEvent: fmTest.onEvent });
      c.addPeer(call.a, 'a');
      c.addPeer(call.b, 'b');
    }, { opts: collectorOptions(meeting, { peerIdPrefix: 'r-' }), rtc });
    log('relayed call connected');

    await sleep(9000);
    const frozen = await page.evaluate(() => fmTest.freeze([call.a, call.b], c));
    // stop(): final events for both peers, delivered with fetch.
    const stopped = await page.evaluate(() => c.stop());
    const events = await page.evaluate(() => fmTest.events.slice());
    const runMs = Date.now() - started;
    log('collector stopped:', JSON.stringify({ ...stopped, perPeer: undefined }));

    const expected = {
      'r-a': { sent: frozen[0].sent, received: frozen[0].received },
      'r-b': { sent: frozen[1].sent, received: frozen[1].received },
    };
    const total = frozen.reduce((n, f) => n + f.sent + f.received, 0);
    const rollup = await waitForRollup(meeting, env.FM_READ_TOKEN, total);
    log('rollup holds', JSON.stringify(rollup));
    await page.close();
    results({ meeting, expected, rollup, stopped, events, errors, runMs });
  } finally {
    await turn.stop();
  }
});

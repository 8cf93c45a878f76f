// Runs inside the test pages of the webrtc_*.mjs scripts (served by
// webrtc_lib.mjs on its own origin): loopback calls between two
// RTCPeerConnections of one page, fake peers, and counters the tests compare
// the collector's events with.
(function () {
  'use strict';

  // Σ transport bytes of a stats report: the counters the collector reads.
  function totals(report) {
    let sent = 0, received = 0, transports = 0;
    report.forEach((s) => {
      if (s.type === 'transport' && typeof s.bytesSent === 'number') {
        sent += s.bytesSent;
        received += s.bytesReceived || 0;
        transports++;
      }
    });
    return { sent, received, transports };
  }

  // Wraps pc.getStats so a test can freeze it: the next call (the
  // collector's poll) is recorded and returned from then on, as if the
  // connection had stopped moving data; `pc.fm.frozen` are its counters.
  function instrument(pc) {
    const orig = pc.getStats.bind(pc);
    pc.fm = { freeze: false, frozen: null, report: null, polls: 0, last: null };
    pc.getStats = async (...args) => {
      if (pc.fm.report) return pc.fm.report;
      const r = await orig(...args);
      pc.fm.polls++;
      const t = totals(r);
      if (t.transports) pc.fm.last = t; // a closed connection's report has none
      if (pc.fm.freeze) {
        pc.fm.report = r;
        pc.fm.frozen = totals(r);
      }
      return r;
    };
    pc.fm.raw = orig;
    return pc;
  }

  async function until(what, fn, ms) {
    const end = Date.now() + ms;
    while (Date.now() < end) {
      if (fn()) return;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`timed out waiting for ${what}`);
  }

  // Two connected peers with fake camera and microphone, signalled in-page.
  async function loopback(config = {}) {
    const a = new RTCPeerConnection(config);
    const b = new RTCPeerConnection(config);
    a.onicecandidate = (e) => e.candidate && b.addIceCandidate(e.candidate).catch(() => {});
    b.onicecandidate = (e) => e.candidate && a.addIceCandidate(e.candidate).catch(() => {});
    const constraints = { audio: true, video: { width: 320, height: 240, frameRate: 15 } };
    for (const pc of [a, b]) {
      const media = await navigator.mediaDevices.getUserMedia(constraints);
      for (const t of media.getTracks()) pc.addTrack(t, media);
    }
    await a.setLocalDescription();
    await b.setRemoteDescription(a.localDescription);
    await b.setLocalDescription();
    await a.setRemoteDescription(b.localDescription);
    await until('both peers to connect', () => a.connectionState === 'connected' && b.connectionState === 'connected', 15000);
    return { a: instrument(a), b: instrument(b) };
  }

  // Freezes the counters of `pcs` and waits until the collector has polled
  // the frozen report twice (so its engine has seen the last counters).
  async function freeze(pcs, collector) {
    for (const pc of pcs) pc.fm.freeze = true;
    await until('the collector to poll the frozen peers', () => pcs.every((pc) => pc.fm.frozen), 10000);
    const polls = collector.stats().polls;
    await until('two more polls', () => collector.stats().polls >= polls + 2 * pcs.length, 10000);
    await new Promise((r) => setTimeout(r, 200)); // the engine's answer
    return pcs.map((pc) => pc.fm.frozen);
  }

  // Fake peers: objects with getStats() and connectionState, as odd as a
  // browser may be. `fm.truth` is what they moved: what their events must sum
  // to (bytes moved before a counter restart count once, the restarted
  // counter from zero).
  function fake(kind) {
    let n = 0, sent = 0, recv = 0;
    const truth = { sent: 0, received: 0 };
    const pc = { connectionState: 'connected', signalingState: 'stable', fm: { truth, kind, closeNow: false } };
    const moved = { sent: 0, received: 0 };
    const move = (s, r) => { sent += s; recv += r; moved.sent += s; moved.received += r; Object.assign(truth, moved); };
    const restart = (s, r) => { sent = s; recv = r; moved.sent += s; moved.received += r; Object.assign(truth, moved); };
    const report = (list) => new Map(list.map((s, i) => [s && s.id ? s.id : `x${i}`, s]));
    const builders = {
      // Only some counters; no candidate pairs, no jitter, no loss, no RTT.
      sparse() {
        move(1000, 0);
        return report([
          { id: 'T', type: 'transport', bytesSent: sent },
          { id: 'I', type: 'inbound-rtp', packetsReceived: n * 10 },
          { id: 'R', type: 'remote-inbound-rtp' },
        ]);
      },
      // Counters that restart, NaN, negative and string values, dangling ids.
      weird() {
        const received = truth.received;
        if (n === 8) restart(50, 20);
        else move(700, 300);
        const hidden = n % 3 === 0 && n !== 8; // NaN: no delta now, the next poll has it
        if (hidden) truth.received = received;
        else truth.received = moved.received;
        const pairId = n % 4 === 0 ? 'missing' : 'CP';
        return report([
          { id: 'T', type: 'transport', bytesSent: sent, bytesReceived: hidden ? NaN : recv, selectedCandidatePairId: pairId },
          { id: 'CP', type: 'candidate-pair', localCandidateId: 'L', remoteCandidateId: 'nowhere', currentRoundTripTime: -1, bytesSent: 'many' },
          { id: 'L', type: 'local-candidate', candidateType: n % 2 ? 'bogus' : 'srflx', relayProtocol: 42 },
          { id: 'I', type: 'inbound-rtp', packetsReceived: n * 5, packetsLost: n % 2 ? -3 : n, jitter: '0.5' },
          { type: 'inbound-rtp', packetsReceived: null },
          null,
          { id: 'R', type: 'remote-inbound-rtp', roundTripTime: Infinity },
        ]);
      },
      // A peer flapping between a TCP relay and a direct path, and between
      // good and poor RTT, on every poll: the budget must hold it.
      flapper() {
        move(2000, 1000);
        const relay = n % 2 === 0;
        return report([
          { id: 'T', type: 'transport', bytesSent: sent, bytesReceived: recv, selectedCandidatePairId: relay ? 'CPr' : 'CPh' },
          { id: 'CPr', type: 'candidate-pair', localCandidateId: 'Lr', remoteCandidateId: 'Rh', currentRoundTripTime: 0.6 },
          { id: 'CPh', type: 'candidate-pair', localCandidateId: 'Lh', remoteCandidateId: 'Rh', currentRoundTripTime: 0.02 },
          { id: 'Lr', type: 'local-candidate', candidateType: 'relay', relayProtocol: 'tcp' },
          { id: 'Lh', type: 'local-candidate', candidateType: 'host' },
          { id: 'Rh', type: 'remote-candidate', candidateType: 'host' },
          { id: 'I', type: 'inbound-rtp', packetsReceived: n * 50, packetsLost: n, jitter: 0.004 },
        ]);
      },
      // Stats with a function in them (not cloneable into a worker).
      noclone() {
        move(1500, 500);
        return report([
          { id: 'T', type: 'transport', bytesSent: sent, bytesReceived: recv, selectedCandidatePairId: 'CP', toJSON() { return {}; } },
          { id: 'CP', type: 'candidate-pair', localCandidateId: 'L', remoteCandidateId: 'R', currentRoundTripTime: 0.01 },
          { id: 'L', type: 'local-candidate', candidateType: 'host' },
          { id: 'R', type: 'remote-candidate', candidateType: 'host' },
        ]);
      },
    };
    builders.rejecting = builders.noclone;
    builders.toolong = builders.noclone;
    builders.steady = builders.noclone;
    pc.getStats = function () {
      if (pc.fm.closeNow) {
        pc.connectionState = 'closed';
        pc.signalingState = 'closed';
        return Promise.reject(new DOMException('closed', 'InvalidStateError'));
      }
      n++;
      if (kind === 'rejecting' && n % 3 === 0) throw new Error('getStats exploded');
      if (kind === 'rejecting' && n % 3 === 1 && n > 1) return Promise.reject(new Error('getStats failed'));
      return Promise.resolve(builders[kind]());
    };
    return pc;
  }

  // Every event the collector queued, with its reason (onEvent).
  const events = [];
  function onEvent(e, reason) {
    events.push({ ...e, reason });
  }

  window.fmTest = { totals, instrument, loopback, freeze, fake, events, onEvent, until };
})();

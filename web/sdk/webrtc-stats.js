/*! flowmeter browser WebRTC collector — served at /sdk/webrtc-stats.js (docs/collector.md)
 *
 * One file, no dependencies, no build step. Load it with a plain
 * `<script src="https://flowmeter.example/sdk/webrtc-stats.js"></script>` (or
 * `import 'https://flowmeter.example/sdk/webrtc-stats.js'` as a side-effect
 * ES module import, or require() it): it defines one global, `FlowmeterWebRTC`.
 *
 *   const c = FlowmeterWebRTC.start({
 *     endpoint: 'https://flowmeter.example/v1/events',   // required
 *     token: '…',                                        // a token with the `ingest` scope
 *     meetingId: 'm-42',                                 // required
 *     userId: 'u-7',                                     // optional
 *   });
 *   c.addPeer(pc, 'alice');          // → peer_id `${peerIdPrefix}alice`; returns it
 *   await c.removePeer(pc);          // or by peer id: a final event with what is left
 *   await c.stop();                  // final events for every peer, then a last send
 *   c.stats();                       // counters: mode, polls, events, sent, dropped, …
 *
 * Options (defaults):
 *   endpoint            —        URL of flowmeter's `POST /v1/events`
 *   meetingId           —        `meeting_id` of every event
 *   token               none     sent as `?token=` (see tokenInQuery)
 *   userId              none     `user_id` (addPeer(pc, id, {userId}) overrides it per peer)
 *   peerIdPrefix        ''       prepended to the peer ids given to addPeer
 *   pollIntervalMs      2000     how often getStats() runs for each peer
 *   minEventIntervalMs  6000     at most one regular event per peer this often
 *   maxEventsPerMinute  10       per-peer budget: events in any 60 s window
 *   flushIntervalMs     5000     how often queued events are POSTed
 *   maxBatchEvents      100      events per request at most
 *   maxQueueEvents      1000     events held while flowmeter is unreachable; beyond, the oldest are dropped
 *   retryMinMs          1000     first retry delay (doubles, with jitter) …
 *   retryMaxMs          30000    … up to this
 *   stopTimeoutMs       5000     how long stop() tries to deliver before it falls back to sendBeacon
 *   tokenInQuery        true     token in the query string: the POST is a CORS "simple request"
 *                                (text/plain body, no preflight) and sendBeacon can carry it;
 *                                false sends `Authorization: Bearer` (one preflight per origin)
 *   useWorker           true     compute in a Web Worker (Blob URL); falls back to the main thread
 *   onEvent             none     function (event, reason) called for every event queued; reason is
 *                                first | interval | path | quality | final | hidden | pagehide,
 *                                or previous-path (the share of a path just left)
 *   logger              console  an object with debug/info/warn/error
 *   debug               false    log every request and decision
 *
 * What it measures, per peer connection and per event (the webrtc schema,
 * schemas/webrtc.v1.json, exactly; `v: 1` pins that version):
 *   bytes_sent/received  Δ of the `transport` stats' bytesSent/bytesReceived (all the
 *                        connection moved: media, RTCP, retransmissions, data channels —
 *                        what a TURN server relays), summed over transports; browsers without
 *                        transport stats: Δ of the candidate pairs' counters. Counted from zero
 *                        (the first event holds everything the connection moved before
 *                        addPeer). A counter that goes backwards restarted: its new value is
 *                        the delta. Deltas accumulate until an event takes them, so the
 *                        events of a peer add up to its counters at the last poll.
 *   rtt_ms               the selected candidate pair's currentRoundTripTime, else the mean of
 *                        remote-inbound-rtp roundTripTime; else the last known value; else 0.
 *   jitter_ms            the largest inbound-rtp jitter among streams that received packets;
 *                        else the last known value; else 0.
 *   packet_loss          Δlost / (Δlost + Δreceived) of inbound-rtp over the event's interval;
 *                        no packets: the last value sent; else 0.
 *   candidate_type       of the selected pair (transport.selectedCandidatePairId, else the
 *                        nominated succeeded pair): `relay` when either end is a TURN relay
 *                        (relay_protocol from the local candidate's relayProtocol when the local
 *                        end is the relay), else the local type: host, srflx, prflx. Unknown
 *                        path: the last known, else `host`.
 *
 * Throttling (per peer): an event at once when a path is first known, when the path (type,
 * relay protocol or selected pair) or the quality class changes (the thresholds of the
 * `classify` measure of processors/webrtc_rollup.toml), else one every minEventIntervalMs — and
 * never more than maxEventsPerMinute in any 60 s (final flushes excepted). Bytes are attributed
 * to the path of the poll that saw them; a path change closes the old path's share with its own
 * event. Nothing is lost by throttling: deltas wait for the next event.
 *
 * Delivery: batches as a JSON array, retried with backoff on network errors, 429 and 5xx
 * (the batch is kept); on 400 the events the answer names are dropped and logged and the
 * rest resent; 401/403/404/413 drop the batch (logged). When the page is hidden or closing
 * (visibilitychange, pagehide) the queue and every peer's not yet sent deltas go out with
 * navigator.sendBeacon. A 403 for an origin missing from `ingest.cors_origins` reaches the page
 * as a network error (the browser hides it): it is retried and logged as such.
 *
 * removePeer(pc) before pc.close() catches the last interval: a closed connection's stats no
 * longer hold its counters. Closed connections (connectionState 'closed') and getStats()
 * failures are tolerated; a closed peer gets its final event and is removed.
 *
 * One file on purpose (meeting pages load it as is, no build step): the engine, then the
 * page side. The engine must stay self-contained — its source text becomes the worker.
 * Tests: tests/integration/webrtc_sdk.rs (headless Chromium, real server).
 */
(function (root) {
  'use strict';

  var DEFAULTS = {
    endpoint: null, token: null, meetingId: null, userId: null, peerIdPrefix: '',
    pollIntervalMs: 2000, minEventIntervalMs: 6000, maxEventsPerMinute: 10,
    flushIntervalMs: 5000, maxBatchEvents: 100, maxQueueEvents: 1000,
    retryMinMs: 1000, retryMaxMs: 30000, stopTimeoutMs: 5000,
    tokenInQuery: true, useWorker: true, onEvent: null, logger: null, debug: false,
  };
  // The stats types the engine reads; the rest of a report never leaves getStats().
  var WANTED = {
    'transport': 1, 'candidate-pair': 1, 'local-candidate': 1, 'remote-candidate': 1,
    'inbound-rtp': 1, 'remote-inbound-rtp': 1,
  };
  var BEACON_MAX_BYTES = 60000; // sendBeacon and keepalive fetches share a 64 KiB budget

  // ---------------------------------------------------------------------------
  // The engine: deltas, classification, throttling. It runs in the worker, so
  // it must be self-contained (its source text is the worker's script) and
  // only sees messages: {t:'add'|'sample'|'drain', …} → outputs {t:'out', …}.
  // ---------------------------------------------------------------------------
  function createEngine(cfg) {
    var MAX_BYTES = 1099511627776;
    var MAX_MS = 600000;
    var peers = {};

    function num(v) { return typeof v === 'number' && isFinite(v) && v >= 0 ? v : undefined; }
    function str(v) { return typeof v === 'string' ? v : undefined; }
    function clamp(v, hi) { return v > hi ? hi : v; }
    function round3(v) { return Math.round(v * 1000) / 1000; }

    // Same thresholds as the `classify` measure of processors/webrtc_rollup.toml.
    function classify(rtt, loss, jitter) {
      if (rtt < 150 && loss < 0.01 && jitter < 20) return 'excellent';
      if (rtt < 300 && loss < 0.03 && jitter < 50) return 'good';
      if (rtt < 500 && loss < 0.08 && jitter < 100) return 'fair';
      return 'poor';
    }

    // A non-negative delta of one counter of one stats object, remembered per id.
    function delta(st, key, cur, restarts) {
      if (cur === undefined) return 0; // missing: no delta, keep the last value
      var prev = st.prev[key];
      st.prev[key] = cur;
      if (prev === undefined) return st.baselineFirst ? 0 : cur;
      if (cur >= prev) return cur - prev;
      return restarts ? cur : 0; // backwards: a restarted counter, or a loss correction
    }

    function candidateType(c) {
      var t = c && str(c.candidateType);
      return t === 'host' || t === 'srflx' || t === 'prflx' || t === 'relay' ? t : undefined;
    }

    function readPath(byId, transports, pairs) {
      var pair, i;
      for (i = 0; i < transports.length && !pair; i++) {
        var sel = str(transports[i].selectedCandidatePairId);
        if (sel && byId[sel] && byId[sel].type === 'candidate-pair') pair = byId[sel];
      }
      for (i = 0; i < pairs.length && !pair; i++) if (pairs[i].selected === true) pair = pairs[i];
      for (i = 0; i < pairs.length && !pair; i++) {
        if (pairs[i].nominated === true && pairs[i].state === 'succeeded') pair = pairs[i];
      }
      if (!pair) return null;
      var local = byId[str(pair.localCandidateId)];
      var remote = byId[str(pair.remoteCandidateId)];
      var lt = candidateType(local), rt = candidateType(remote);
      if (!lt && !rt) return null;
      var type = lt === 'relay' || rt === 'relay' ? 'relay' : (lt || 'host');
      var proto = null;
      if (lt === 'relay') {
        var p = str(local.relayProtocol);
        proto = p === 'udp' || p === 'tcp' || p === 'tls' ? p : null;
      }
      return { type: type, proto: proto, key: type + '/' + (proto || ''), pair: str(pair.id) || null };
    }

    function bucketFor(st, key) {
      var bs = st.buckets, b = null, i;
      var cur = bs.length ? bs[bs.length - 1] : null;
      if (cur && (cur.key === key || cur.key === null || key === null)) {
        if (cur.key === null && key !== null) cur.key = key; // bytes seen before the path was known
        return cur;
      }
      for (i = 0; i < bs.length; i++) if (bs[i].key === key) { b = bs.splice(i, 1)[0]; break; }
      if (!b) b = { key: key, sent: 0, recv: 0, lost: 0, rcvd: 0, rtt: 0, jitter: 0, t: 0 };
      bs.push(b);
      return b;
    }

    function lossOf(st, b) {
      var n = b.lost + b.rcvd;
      return n > 0 ? b.lost / n : st.lastLoss;
    }

    function build(st, b, ts) {
      var key = b.key || 'host/';
      var slash = key.indexOf('/');
      var type = key.slice(0, slash), proto = key.slice(slash + 1);
      var e = {
        kind: 'webrtc', v: 1, ts: Math.round(ts), meeting_id: st.meetingId, peer_id: st.peerId,
      };
      if (st.userId !== null && st.userId !== undefined) e.user_id = st.userId;
      e.bytes_sent = clamp(Math.round(b.sent), MAX_BYTES);
      e.bytes_received = clamp(Math.round(b.recv), MAX_BYTES);
      e.rtt_ms = clamp(round3(b.rtt), MAX_MS);
      e.jitter_ms = clamp(round3(b.jitter), MAX_MS);
      e.packet_loss = clamp(round3(lossOf(st, b) * 1000) / 1000, 1);
      e.candidate_type = type;
      if (type === 'relay' && proto) e.relay_protocol = proto;
      return { e: e, m: { key: b.key, lost: b.lost, rcvd: b.rcvd, sent: b.sent, recv: b.recv } };
    }

    function empty(b) { return b.sent + b.recv + b.lost + b.rcvd === 0; }

    function snapshot(st, ts) {
      var items = [];
      for (var i = 0; i < st.buckets.length; i++) {
        var b = st.buckets[i];
        if (!empty(b)) items.push(build(st, b, b.t || ts));
      }
      return { epoch: st.epoch, items: items };
    }

    // Sends the buckets (all non-empty ones and, unless final, the current one).
    function emit(st, ts, reason, final) {
      var out = [], bs = st.buckets;
      for (var i = 0; i < bs.length; i++) {
        var b = bs[i], isCur = i === bs.length - 1;
        if (empty(b) && (final || !isCur || b.key === null)) continue;
        var it = build(st, b, isCur ? ts : (b.t || ts));
        it.m.reason = isCur || final ? reason : 'previous-path';
        st.lastLoss = it.e.packet_loss;
        out.push(it);
        st.recent.push(ts);
      }
      if (out.length) {
        var last = out[out.length - 1].e;
        st.last = {
          t: ts, key: st.path ? st.path.key : null, pair: st.path ? st.path.pair : null,
          q: classify(last.rtt_ms, last.packet_loss, last.jitter_ms),
        };
        st.epoch++;
      }
      st.buckets = [];
      return out;
    }

    function onSample(st, m) {
      var stats = Array.isArray(m.stats) ? m.stats : [];
      var byId = {}, transports = [], pairs = [], inbound = [], rinbound = [], i, s;
      for (i = 0; i < stats.length; i++) {
        s = stats[i];
        if (!s || typeof s !== 'object') continue;
        var id = str(s.id) || (s.type + '#' + i);
        byId[id] = s;
        if (s.type === 'transport') transports.push(s);
        else if (s.type === 'candidate-pair') pairs.push(s);
        else if (s.type === 'inbound-rtp') inbound.push(s);
        else if (s.type === 'remote-inbound-rtp') rinbound.push(s);
      }
      // Bytes: transport counters, else candidate pairs (a source once chosen stays).
      var dSent = 0, dRecv = 0, list = null, tag;
      var hasBytes = function (xs) {
        for (var j = 0; j < xs.length; j++) {
          if (num(xs[j].bytesSent) !== undefined || num(xs[j].bytesReceived) !== undefined) return true;
        }
        return false;
      };
      if (st.src !== 'pair' && hasBytes(transports)) { st.src = 'transport'; list = transports; tag = 't|'; }
      else if (st.src !== 'transport' && hasBytes(pairs)) { st.src = 'pair'; list = pairs; tag = 'p|'; }
      for (i = 0; list && i < list.length; i++) {
        var key = tag + (str(list[i].id) || i);
        dSent += delta(st, key + '|s', num(list[i].bytesSent), true);
        dRecv += delta(st, key + '|r', num(list[i].bytesReceived), true);
      }
      // Loss and jitter from what this peer receives.
      var dLost = 0, dRcvd = 0, jitter;
      for (i = 0; i < inbound.length; i++) {
        s = inbound[i];
        var ik = 'i|' + (str(s.id) || i);
        dLost += delta(st, ik + '|l', num(s.packetsLost), false);
        var got = delta(st, ik + '|n', num(s.packetsReceived), true);
        dRcvd += got;
        var j = num(s.jitter);
        if (got > 0 && j !== undefined && (jitter === undefined || j * 1000 > jitter)) jitter = j * 1000;
      }
      if (jitter !== undefined) st.jitter = jitter;
      // RTT: the selected pair, else what the remote end reports.
      var path = readPath(byId, transports, pairs);
      var rtt = path && byId[path.pair] ? num(byId[path.pair].currentRoundTripTime) : undefined;
      if (rtt === undefined) {
        var sum = 0, n = 0;
        for (i = 0; i < rinbound.length; i++) {
          var r = num(rinbound[i].roundTripTime);
          if (r !== undefined) { sum += r; n++; }
        }
        if (n) rtt = sum / n;
      }
      if (rtt !== undefined) st.rtt = rtt * 1000;
      if (path) st.path = path;

      var b = bucketFor(st, st.path ? st.path.key : null);
      b.sent += dSent; b.recv += dRecv; b.lost += dLost; b.rcvd += dRcvd;
      b.rtt = st.rtt; b.jitter = st.jitter; b.t = m.ts;

      var ts = m.ts, events = [], reason = null;
      while (st.recent.length && st.recent[0] <= ts - 60000) st.recent.shift();
      if (m.final) {
        events = emit(st, ts, 'final', true);
      } else {
        var q = classify(st.rtt, lossOf(st, b), st.jitter);
        if (!st.last) {
          if (st.path || ts - st.start >= cfg.minEventIntervalMs) reason = 'first';
        } else if (st.path && (st.path.key !== st.last.key ||
                   (st.path.pair && st.last.pair && st.path.pair !== st.last.pair))) {
          reason = 'path';
        } else if (q !== st.last.q) {
          reason = 'quality';
        } else if (ts - st.last.t >= cfg.minEventIntervalMs) {
          reason = 'interval';
        }
        if (reason) {
          var need = 0;
          for (i = 0; i < st.buckets.length; i++) {
            if (!empty(st.buckets[i]) || i === st.buckets.length - 1) need++;
          }
          if (st.recent.length + need <= cfg.maxEventsPerMinute) events = emit(st, ts, reason, false);
          else st.throttled++;
        }
      }
      return events;
    }

    // The page sent the not yet emitted deltas of epoch `m.epoch` with
    // sendBeacon: take them out, unless an event took them meanwhile (then the
    // page subtracts them from that event).
    function onDrain(st, m) {
      if (m.epoch !== st.epoch) return;
      for (var i = 0; i < m.items.length; i++) {
        var d = m.items[i];
        for (var k = 0; k < st.buckets.length; k++) {
          var b = st.buckets[k];
          if (b.key !== d.key) continue;
          b.sent = Math.max(0, b.sent - d.sent); b.recv = Math.max(0, b.recv - d.recv);
          b.lost = Math.max(0, b.lost - d.lost); b.rcvd = Math.max(0, b.rcvd - d.rcvd);
        }
        st.recent.push(m.ts);
      }
      st.buckets = st.buckets.filter(function (b) { return !empty(b); });
      st.last = {
        t: m.ts, key: st.path ? st.path.key : null, pair: st.path ? st.path.pair : null,
        q: st.last ? st.last.q : classify(st.rtt, st.lastLoss, st.jitter),
      };
      st.epoch++;
    }

    return {
      classify: classify,
      handle: function (m) {
        if (m.t === 'add') {
          peers[m.peer] = {
            peerId: m.peerId, meetingId: m.meetingId, userId: m.userId, start: m.ts,
            baselineFirst: !!m.baselineFirst, prev: {}, src: null, buckets: [], path: null,
            rtt: 0, jitter: 0, lastLoss: 0, last: null, recent: [], epoch: 0, throttled: 0,
          };
          return [];
        }
        var st = peers[m.peer];
        if (!st) return [];
        var before = st.epoch, events = [];
        if (m.t === 'sample') events = onSample(st, m);
        else if (m.t === 'drain') onDrain(st, m);
        var gone = m.t === 'sample' && !!m.final;
        if (gone) delete peers[m.peer];
        return [{
          t: 'out', peer: m.peer, epoch: before, events: events, gone: gone,
          pending: gone ? { epoch: st.epoch, items: [] } : snapshot(st, m.ts), throttled: st.throttled,
        }];
      },
    };
  }

  // The worker's script: the engine behind postMessage.
  function workerBoot(createEngine) {
    var engine = null;
    self.onmessage = function (ev) {
      var m = ev.data, outs;
      try {
        if (m.t === 'init') { engine = createEngine(m.cfg); return; }
        outs = engine.handle(m);
      } catch (e) {
        self.postMessage({ t: 'error', message: String((e && e.stack) || e) });
        return;
      }
      if (outs.length) self.postMessage({ t: 'outs', outs: outs });
    };
    self.postMessage({ t: 'ready' });
  }

  // ---------------------------------------------------------------------------
  // Main thread: options, peers, polling, the worker link, delivery.
  // ---------------------------------------------------------------------------
  function start(options) {
    var o = {}, k;
    for (k in DEFAULTS) o[k] = DEFAULTS[k];
    for (k in options || {}) {
      if (!(k in DEFAULTS)) throw new TypeError('FlowmeterWebRTC.start: unknown option ' + k);
      if (options[k] !== undefined) o[k] = options[k];
    }
    if (typeof o.endpoint !== 'string' || !o.endpoint) {
      throw new TypeError('FlowmeterWebRTC.start: `endpoint` (the URL of POST /v1/events) is required');
    }
    if (typeof o.meetingId !== 'string' || !o.meetingId) {
      throw new TypeError('FlowmeterWebRTC.start: `meetingId` (a non-empty string) is required');
    }
    var logger = o.logger || (typeof console !== 'undefined' ? console : {});
    var log = {};
    ['debug', 'info', 'warn', 'error'].forEach(function (level) {
      log[level] = function () {
        if (level === 'debug' && !o.debug) return;
        var f = logger[level] || logger.log;
        if (typeof f !== 'function') return;
        var args = Array.prototype.slice.call(arguments);
        args.unshift('[flowmeter]');
        try { f.apply(logger, args); } catch (e) { /* a broken logger must not break the page */ }
      };
    });
    var url = new URL(o.endpoint, typeof location !== 'undefined' ? location.href : undefined);
    if (o.token && o.tokenInQuery) url.searchParams.set('token', o.token);
    url = url.toString();

    var counters = {
      polls: 0, pollErrors: 0, events: 0, sent: 0, requests: 0, retries: 0, rejected: 0,
      dropped: 0, beacons: 0, beaconEvents: 0, lastError: null,
    };
    var perPeer = {}; // peer_id → {events, bytesSent, bytesReceived}
    var peers = [];   // {key, pc, peerId, userId, done}
    var nextKey = 1, autoId = 0;
    var seen = typeof WeakSet !== 'undefined' ? new WeakSet() : null; // connections ever added
    var stopped = false, polling = false, pollTimer = null;
    var pending = {};  // peer key → the worker's latest not-yet-sent snapshot {epoch, items}
    var draining = {}; // peer key → {epoch, items} sent by beacon, not yet acknowledged
    var finals = {};   // peer key → resolvers waiting for the peer's final events
    var throttledBy = {}; // peer key → emissions the budget held back

    // --- the engine link: a worker when possible, else this thread --------
    var mode = 'main-thread', worker = null, workerUrl = null, local = null;
    var unconfirmed = []; // messages posted before the worker said it runs
    var engineCfg = { minEventIntervalMs: o.minEventIntervalMs, maxEventsPerMinute: o.maxEventsPerMinute };

    function useLocal(why) {
      if (local) return;
      if (why) log.warn('computing on the main thread:', why);
      if (worker) { try { worker.terminate(); } catch (e) { /* gone already */ } }
      if (workerUrl) URL.revokeObjectURL(workerUrl);
      worker = null; workerUrl = null; mode = 'main-thread';
      local = createEngine(engineCfg);
      var replay = unconfirmed;
      unconfirmed = null;
      replay.forEach(post);
    }

    function post(m) {
      if (local) { receive(local.handle(m)); return; }
      if (unconfirmed) unconfirmed.push(m);
      try {
        worker.postMessage(m);
      } catch (e) {
        if (m.t !== 'sample') throw e;
        // Stats holding something that cannot be cloned: keep plain values only.
        m.stats = m.stats.map(function (s) {
          var c = {};
          for (var f in s) if (s[f] === null || typeof s[f] !== 'object' && typeof s[f] !== 'function') c[f] = s[f];
          return c;
        });
        worker.postMessage(m);
      }
    }

    if (o.useWorker && typeof Worker !== 'undefined' && typeof Blob !== 'undefined' && typeof URL !== 'undefined' && URL.createObjectURL) {
      try {
        var src = '"use strict";\nvar createEngine = ' + createEngine.toString() + ';\n(' +
          workerBoot.toString() + ')(createEngine);\n';
        workerUrl = URL.createObjectURL(new Blob([src], { type: 'text/javascript' }));
        worker = new Worker(workerUrl);
        mode = 'worker';
        worker.onmessage = function (ev) {
          var m = ev.data;
          if (m.t === 'ready') { unconfirmed = null; log.debug('worker running'); }
          else if (m.t === 'outs') receive(m.outs);
          else if (m.t === 'error') { counters.lastError = m.message; log.error('engine error:', m.message); }
        };
        worker.onerror = function (ev) {
          if (ev && ev.preventDefault) ev.preventDefault();
          if (unconfirmed) { useLocal('the worker did not start (' + ((ev && ev.message) || 'CSP worker-src?') + ')'); return; }
          // Died after it ran: its state is gone; count from the next poll on.
          log.error('the worker failed:', (ev && ev.message) || ev, '— continuing on the main thread');
          unconfirmed = [];
          useLocal(null);
          peers.forEach(function (p) { post(addMessage(p, true)); });
        };
        post({ t: 'init', cfg: engineCfg });
        setTimeout(function () { if (unconfirmed && !local) useLocal('the worker did not answer within 5 s'); }, 5000);
      } catch (e) {
        unconfirmed = [];
        useLocal('no worker (' + (e && e.message) + ')');
      }
    } else {
      unconfirmed = [];
      useLocal(null);
    }

    function addMessage(p, baselineFirst) {
      return {
        t: 'add', peer: p.key, peerId: p.peerId, meetingId: o.meetingId, userId: p.userId,
        ts: Date.now(), baselineFirst: baselineFirst,
      };
    }

    // --- outputs of the engine ------------------------------------------
    function subtract(it, d) {
      var e = it.e, m = it.m;
      e.bytes_sent = Math.max(0, e.bytes_sent - d.sent); m.sent = e.bytes_sent;
      e.bytes_received = Math.max(0, e.bytes_received - d.recv); m.recv = e.bytes_received;
      m.lost = Math.max(0, m.lost - d.lost); m.rcvd = Math.max(0, m.rcvd - d.rcvd);
      if (m.lost + m.rcvd > 0) e.packet_loss = Math.round(m.lost / (m.lost + m.rcvd) * 1e6) / 1e6;
      return m.sent + m.recv + m.lost + m.rcvd > 0;
    }

    function receive(outs) {
      for (var i = 0; i < outs.length; i++) {
        var out = outs[i], d = draining[out.peer];
        throttledBy[out.peer] = out.throttled || 0;
        var items = out.events.filter(function (it) {
          if (!d || out.epoch !== d.epoch) return true;
          // This event took deltas the beacon already carried: keep only the rest.
          for (var j = 0; j < d.items.length; j++) {
            if (d.items[j].key === it.m.key) return subtract(it, d.items[j]);
          }
          return true;
        });
        if (d && out.pending.epoch > d.epoch) { delete draining[out.peer]; d = null; }
        if (!d) pending[out.peer] = out.pending;
        enqueue(items.map(function (it) { return it.e; }), items.map(function (it) { return it.m.reason; }));
        if (out.gone) {
          delete pending[out.peer];
          delete draining[out.peer];
          (finals[out.peer] || []).forEach(function (f) { f(); });
          delete finals[out.peer];
        }
      }
    }

    function noteEmitted(e, reason) {
      counters.events++;
      var t = perPeer[e.peer_id] || (perPeer[e.peer_id] = { events: 0, bytesSent: 0, bytesReceived: 0 });
      t.events++; t.bytesSent += e.bytes_sent; t.bytesReceived += e.bytes_received;
      log.debug('event', reason, e);
      if (typeof o.onEvent === 'function') {
        try { o.onEvent(e, reason); } catch (err) { log.warn('onEvent threw:', err); }
      }
    }

    // --- delivery ----------------------------------------------------------
    var queue = [], inflight = false, retryAt = 0, backoff = 0, flushTimer = null, failing = false;
    var dropLoggedAt = 0;

    function enqueue(events, reasons) {
      for (var i = 0; i < events.length; i++) noteEmitted(events[i], reasons[i]);
      Array.prototype.push.apply(queue, events);
      var excess = queue.length - o.maxQueueEvents;
      if (excess > 0) {
        queue.splice(0, excess);
        counters.dropped += excess;
        var now = Date.now();
        if (now - dropLoggedAt > 10000) {
          dropLoggedAt = now;
          log.error('queue full (maxQueueEvents ' + o.maxQueueEvents + '): dropped the ' + excess +
            ' oldest event(s); ' + counters.dropped + ' dropped so far');
        }
      }
      if (queue.length >= o.maxBatchEvents) flush();
    }

    function scheduleFlush() {
      if (flushTimer || stopped) return;
      flushTimer = setTimeout(function () { flushTimer = null; flush(); scheduleFlush(); }, o.flushIntervalMs);
    }

    function retryLater(batch, why, retryAfterSecs) {
      Array.prototype.unshift.apply(queue, batch);
      counters.retries++;
      backoff = backoff ? Math.min(o.retryMaxMs, backoff * 2) : o.retryMinMs;
      var wait = retryAfterSecs > 0 ? Math.max(retryAfterSecs * 1000, backoff) : backoff;
      wait = Math.round(wait * (0.8 + Math.random() * 0.4));
      retryAt = Date.now() + wait;
      counters.lastError = why;
      (failing ? log.debug : log.warn)('could not send ' + batch.length + ' event(s): ' + why +
        '; retrying in ' + wait + ' ms (the events are kept)');
      failing = true;
      setTimeout(flush, wait + 10);
    }

    function rejected(batch, status, body) {
      var errs = body && Array.isArray(body.errors) ? body.errors : [];
      var bad = {}, lines = [], n = 0;
      errs.forEach(function (x) {
        if (typeof x.index !== 'number' || !batch[x.index]) return;
        if (!bad[x.index]) n++;
        bad[x.index] = true;
        var peer = String(batch[x.index].peer_id);
        if (peer.length > 40) peer = peer.slice(0, 40) + '…';
        lines.push('#' + x.index + ' (peer ' + peer + ') field ' + x.field + ': ' + x.reason);
      });
      if (!n) {
        counters.dropped += batch.length;
        counters.rejected += batch.length;
        log.error('flowmeter rejected a batch (' + status + '): ' + ((body && body.error) || 'no reason given') +
          '; dropped its ' + batch.length + ' event(s)');
        return;
      }
      counters.rejected += n;
      counters.dropped += n;
      log.error('flowmeter rejected ' + n + ' event(s), dropped them: ' + lines.join('; '));
      var rest = batch.filter(function (_, i) { return !bad[i]; });
      Array.prototype.unshift.apply(queue, rest); // not written (all or nothing): send again
    }

    function flush() {
      if (inflight || !queue.length) return Promise.resolve(!queue.length && !inflight);
      if (Date.now() < retryAt) return Promise.resolve(false);
      var batch = queue.splice(0, o.maxBatchEvents);
      var body = JSON.stringify(batch);
      var headers = { 'Content-Type': 'text/plain;charset=UTF-8' };
      if (o.token && !o.tokenInQuery) headers.Authorization = 'Bearer ' + o.token;
      inflight = true;
      counters.requests++;
      return fetch(url, {
        method: 'POST', body: body, headers: headers, mode: 'cors', credentials: 'omit',
        keepalive: body.length <= BEACON_MAX_BYTES,
      }).then(function (r) {
        return r.text().then(function (text) {
          var parsed = null;
          try { parsed = JSON.parse(text); } catch (e) { /* not JSON */ }
          return { status: r.status, body: parsed, retryAfter: Number(r.headers.get('retry-after')) || 0 };
        });
      }).then(function (a) {
        inflight = false;
        if (a.status >= 200 && a.status < 300) {
          counters.sent += batch.length;
          backoff = 0; retryAt = 0;
          if (failing) log.info('sending again: ' + batch.length + ' event(s) accepted');
          failing = false;
          log.debug('sent', batch.length, 'event(s)');
          if (queue.length >= o.maxBatchEvents) return flush();
          return true;
        }
        if (a.status === 400) { rejected(batch, a.status, a.body); return flush(); }
        if (a.status === 408 || a.status === 429 || a.status >= 500) {
          retryLater(batch, 'HTTP ' + a.status, a.retryAfter);
          return false;
        }
        counters.dropped += batch.length;
        counters.lastError = 'HTTP ' + a.status;
        log.error('flowmeter answered ' + a.status + ' (' + ((a.body && a.body.error) || 'no reason') +
          '): dropped ' + batch.length + ' event(s); check the token and ingest.cors_origins');
        return false;
      }, function (err) {
        inflight = false;
        retryLater(batch, 'network error (' + ((err && err.message) || err) +
          '): flowmeter unreachable, or this page\'s origin is not in ingest.cors_origins ' +
          '(the browser hides that 403)', 0);
        return false;
      });
    }

    // The page is hidden or going away: everything not yet sent goes by beacon.
    function flushForUnload(reason) {
      var items = queue.splice(0).map(function (e) { return { e: e }; });
      var drains = {};
      peers.forEach(function (p) {
        var snap = pending[p.key];
        if (!snap || draining[p.key] || !snap.items.length) return;
        drains[p.key] = { epoch: snap.epoch, items: [] };
        snap.items.forEach(function (it) { items.push({ e: it.e, m: it.m, peer: p.key }); });
      });
      var i = 0;
      while (i < items.length) {
        var chunk = [], size = 2;
        while (i < items.length) {
          var len = JSON.stringify(items[i].e).length + 1;
          if (chunk.length && size + len > BEACON_MAX_BYTES) break;
          chunk.push(items[i++]); size += len;
        }
        var ok = sendBeacon(JSON.stringify(chunk.map(function (x) { return x.e; })));
        chunk.forEach(function (x) {
          if (!ok) { if (!x.m) queue.push(x.e); return; }
          counters.beaconEvents++;
          if (x.m) {
            drains[x.peer].items.push({ key: x.m.key, sent: x.m.sent, recv: x.m.recv, lost: x.m.lost, rcvd: x.m.rcvd });
            noteEmitted(x.e, reason);
          }
        });
        if (ok) counters.beacons++;
        else log.warn('sendBeacon refused ' + chunk.length + ' event(s); they stay queued');
      }
      Object.keys(drains).forEach(function (key) {
        var d = drains[key];
        if (!d.items.length) return;
        draining[key] = d;
        delete pending[key];
        post({ t: 'drain', peer: Number(key), epoch: d.epoch, items: d.items, ts: Date.now() });
      });
    }

    function sendBeacon(body) {
      try {
        if (typeof navigator !== 'undefined' && navigator.sendBeacon) return navigator.sendBeacon(url, body);
        fetch(url, { method: 'POST', body: body, keepalive: true, mode: 'cors', credentials: 'omit',
          headers: { 'Content-Type': 'text/plain;charset=UTF-8' } }).catch(function () {});
        return true;
      } catch (e) {
        log.warn('sendBeacon failed:', e && e.message);
        return false;
      }
    }

    function onVisibility() { if (document.visibilityState === 'hidden') flushForUnload('hidden'); }
    function onPageHide() { flushForUnload('pagehide'); }
    if (typeof document !== 'undefined' && document.addEventListener) {
      document.addEventListener('visibilitychange', onVisibility);
    }
    if (typeof addEventListener === 'function') root.addEventListener('pagehide', onPageHide);

    // --- polling -------------------------------------------------------------
    function isClosed(pc) {
      return pc.connectionState === 'closed' || pc.signalingState === 'closed';
    }

    function collect(report) {
      var out = [];
      if (report && typeof report.forEach === 'function') {
        report.forEach(function (s) { if (s && WANTED[s.type]) out.push(s); });
      }
      return out;
    }

    // One getStats() of one peer, handed to the engine. `final` ends the peer.
    function pollPeer(p, final) {
      return Promise.resolve().then(function () {
        // A getStats() that never settles must not stall the other peers.
        return Promise.race([p.pc.getStats(), new Promise(function (_, reject) {
          setTimeout(function () { reject(new Error('getStats() did not answer within 10 s')); }, 10000);
        })]);
      }).then(collect, function (err) {
        counters.pollErrors++;
        if (!isClosed(p.pc)) log.debug('getStats failed for', p.peerId, err && err.message);
        return null;
      }).then(function (stats) {
        if (p.done) return;
        var fin = final || isClosed(p.pc);
        if (stats === null && !fin) return;
        counters.polls++;
        if (fin) retire(p);
        post({ t: 'sample', peer: p.key, ts: Date.now(), stats: stats || [], final: fin });
      });
    }

    function retire(p) {
      p.done = true;
      peers = peers.filter(function (q) { return q !== p; });
    }

    function finalOf(p) {
      return new Promise(function (resolve) {
        (finals[p.key] || (finals[p.key] = [])).push(resolve);
        pollPeer(p, true);
        setTimeout(resolve, 3000); // a dead worker must not hang the caller
      });
    }

    function tick() {
      pollTimer = null;
      if (stopped) return;
      polling = true;
      var ps = peers.slice();
      Promise.all(ps.map(function (p) { return pollPeer(p, false); })).then(function () {
        polling = false;
        if (!stopped) pollTimer = setTimeout(tick, o.pollIntervalMs);
      });
    }

    // --- the public object -----------------------------------------------------
    function find(pcOrId) {
      for (var i = 0; i < peers.length; i++) {
        if (peers[i].pc === pcOrId || peers[i].peerId === pcOrId || peers[i].peerId === o.peerIdPrefix + pcOrId) return peers[i];
      }
      return null;
    }

    var api = {
      get mode() { return mode; },
      addPeer: function (pc, peerId, peerOptions) {
        if (stopped) throw new Error('FlowmeterWebRTC: addPeer after stop()');
        if (!pc || typeof pc.getStats !== 'function') {
          throw new TypeError('FlowmeterWebRTC.addPeer: an RTCPeerConnection (something with getStats()) is required');
        }
        var known = find(pc);
        if (known) return known.peerId;
        var id = o.peerIdPrefix + (peerId === undefined || peerId === null || peerId === '' ? 'peer' + (++autoId) : String(peerId));
        if (find(id)) throw new Error('FlowmeterWebRTC.addPeer: peer id ' + id + ' is already in use');
        var userId = peerOptions && peerOptions.userId !== undefined ? peerOptions.userId : o.userId;
        var p = { key: nextKey++, pc: pc, peerId: id, userId: userId === undefined ? null : userId, done: false };
        peers.push(p);
        // A connection handed in again counts from its next poll: its history was counted.
        var again = seen ? seen.has(pc) : false;
        if (seen) seen.add(pc);
        post(addMessage(p, again));
        if (!pollTimer && !polling && !stopped) pollTimer = setTimeout(tick, 0);
        return id;
      },
      removePeer: function (pcOrId) {
        var p = find(pcOrId);
        return p ? finalOf(p) : Promise.resolve();
      },
      flush: function () { retryAt = 0; return flush(); },
      stats: function () {
        var pendingBytes = 0;
        Object.keys(pending).forEach(function (k) {
          pending[k].items.forEach(function (it) { pendingBytes += it.e.bytes_sent + it.e.bytes_received; });
        });
        var s = { mode: mode, peers: peers.length, queued: queue.length, pendingBytes: pendingBytes, perPeer: {} };
        for (var c in counters) s[c] = counters[c];
        s.throttled = Object.keys(throttledBy).reduce(function (n, k) { return n + throttledBy[k]; }, 0);
        for (var id in perPeer) s.perPeer[id] = { events: perPeer[id].events, bytesSent: perPeer[id].bytesSent, bytesReceived: perPeer[id].bytesReceived };
        return s;
      },
      stop: function () {
        if (stopped) return Promise.resolve(api.stats());
        stopped = true;
        if (pollTimer) clearTimeout(pollTimer);
        if (flushTimer) clearTimeout(flushTimer);
        if (typeof document !== 'undefined' && document.removeEventListener) {
          document.removeEventListener('visibilitychange', onVisibility);
        }
        if (typeof removeEventListener === 'function') root.removeEventListener('pagehide', onPageHide);
        var deadline = Date.now() + o.stopTimeoutMs;
        return Promise.all(peers.slice().map(finalOf)).then(function deliver() {
          retryAt = 0;
          return flush().then(function () {
            if (!queue.length && !inflight) return;
            if (Date.now() >= deadline) { flushForUnload('final'); return; }
            return new Promise(function (r) { setTimeout(r, Math.min(250, o.retryMinMs)); }).then(deliver);
          });
        }).then(function () {
          if (worker) worker.terminate();
          if (workerUrl) URL.revokeObjectURL(workerUrl);
          return api.stats();
        });
      },
    };
    scheduleFlush();
    return api;
  }

  var FlowmeterWebRTC = {
    version: 1,
    defaults: DEFAULTS,
    start: start,
    classify: createEngine({}).classify,
  };
  root.FlowmeterWebRTC = FlowmeterWebRTC;
  if (typeof module === 'object' && module && module.exports) module.exports = FlowmeterWebRTC;
})(typeof globalThis !== 'undefined' ? globalThis : typeof self !== 'undefined' ? self : this);

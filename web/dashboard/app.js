// flowmeter dashboard (docs/dashboard.md). Plain browser JavaScript, no
// framework: live data over /v1/ws (snapshot, update, resume), history from
// /v1/rollups, alerts from /v1/alerts; charts by uPlot when the build
// embedded it. Exposes `window.flowmeter` for tests and debugging.
'use strict';
(() => {
  const $ = (s) => document.querySelector(s);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };

  // ---------------------------------------------------------------- token
  const TOKEN_KEY = 'flowmeter.token';
  const Token = {
    get() { try { return localStorage.getItem(TOKEN_KEY) || ''; } catch { return ''; } },
    set(t) { try { if (t) localStorage.setItem(TOKEN_KEY, t); else localStorage.removeItem(TOKEN_KEY); } catch { /* private mode */ } },
  };
  {
    // `/?token=…` opens the dashboard with a token; keep it, drop it from the address bar
    const u = new URL(location.href);
    const t = u.searchParams.get('token');
    if (t) {
      Token.set(t);
      u.searchParams.delete('token');
      history.replaceState(null, '', u.pathname + u.search + u.hash);
    }
  }
  let asking = null;
  function askToken(reason) {
    if (asking) return asking;
    const d = $('#token-dialog');
    notice(reason || 'This flowmeter needs a read token.');
    $('#token-input').value = Token.get();
    asking = new Promise((resolve) => {
      d.addEventListener('close', () => {
        asking = null;
        if (d.returnValue === 'ok') {
          Token.set($('#token-input').value.trim());
          notice('');
          live.reconnect();
          route(true);
        }
        resolve();
      }, { once: true });
    });
    if (!d.open) d.showModal();
    return asking;
  }
  $('#token-btn').addEventListener('click', () => askToken('Set the read token used for /v1/ws and the API.'));

  function notice(text) {
    const n = $('#notice');
    n.textContent = text;
    n.hidden = !text;
  }

  // ---------------------------------------------------------------- format
  const nf = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });
  const nf2 = new Intl.NumberFormat(undefined, { maximumFractionDigits: 2 });
  function si(v, unit) {
    if (v === null || v === undefined || Number.isNaN(v)) return '–';
    const a = Math.abs(v);
    const [d, p] = a >= 1e9 ? [1e9, 'G'] : a >= 1e6 ? [1e6, 'M'] : a >= 1e3 ? [1e3, 'k'] : [1, ''];
    return `${nf.format(v / d)} ${p}${unit}`;
  }
  const fmt = {
    bits: (bytesPerSec) => si(bytesPerSec * 8, 'bit/s'),
    bps: (bitsPerSec) => si(bitsPerSec, 'bit/s'),
    num: (v) => (v === null || v === undefined ? '–' : nf2.format(v)),
    pct: (v) => (v === null || v === undefined ? '–' : `${nf2.format(v * 100)} %`),
    ms: (v) => (v === null || v === undefined ? '–' : `${nf.format(v)} ms`),
    time: (ms) => new Date(ms).toLocaleTimeString(),
    when: (iso) => (iso ? new Date(iso).toLocaleString() : '–'),
  };

  // ---------------------------------------------------------------- api
  async function api(path, accept) {
    const headers = {};
    const t = Token.get();
    if (t) headers.authorization = `Bearer ${t}`;
    if (accept) headers.accept = accept;
    const r = await fetch(path, { headers });
    if (r.status === 401 || r.status === 403) {
      askToken(r.status === 401 ? 'A read token is required.' : 'This token lacks the read scope.');
      throw new Error(`${path}: ${r.status}`);
    }
    if (!r.ok) {
      let msg = `${r.status}`;
      try { msg = (await r.json()).error || msg; } catch { /* not json */ }
      throw new Error(`${path}: ${msg}`);
    }
    return r;
  }

  // ---------------------------------------------------------------- charts
  const hasCharts = typeof window.uPlot === 'function';
  /** At most about one point per pixel: bucket means over `width` buckets. */
  function downsample(data, width) {
    const n = data[0].length;
    const max = Math.max(2, Math.floor(width));
    if (n <= max) return data;
    const out = data.map(() => []);
    const per = n / max;
    for (let b = 0; b < max; b++) {
      const from = Math.floor(b * per);
      const to = Math.max(from + 1, Math.floor((b + 1) * per));
      out[0].push(data[0][from]);
      for (let s = 1; s < data.length; s++) {
        let sum = 0, k = 0;
        for (let i = from; i < to && i < n; i++) {
          const v = data[s][i];
          if (v !== null && v !== undefined) { sum += v; k++; }
        }
        out[s].push(k ? sum / k : null);
      }
    }
    return out;
  }
  /** The font of the History chart's x labels (also used to measure them). */
  const AXIS_FONT = '11px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif';
  class Chart {
    constructor(host, series, fmtY, height = 200) {
      this.host = host;
      this.height = height;
      this.series = series;
      this.fmtY = fmtY;
      this.u = null;
      this.data = null;
      this.xAxis = null; // uPlot options of the x axis (History: fitted to its grain)
      this.xRange = null; // [min, max] of the x scale, seconds
      if (!hasCharts) {
        host.appendChild(el('div', 'nochart',
          'Charts are not in this build: npm was not available when flowmeter was built. Install Node.js and npm, rebuild (cargo build), or see docs/dashboard.md.'));
      }
    }
    ensure() {
      if (!hasCharts || this.u || this.host.clientWidth === 0) return;
      const palette = ['#2563eb', '#16a34a', '#dc2626', '#d97706', '#7c3aed', '#0891b2', '#db2777', '#65a30d'];
      this.u = new window.uPlot({
        width: this.host.clientWidth,
        height: this.height,
        legend: { live: false },
        cursor: { drag: { x: false, y: false } },
        series: [{}, ...this.series.map((s, i) => ({ label: s, stroke: palette[i % palette.length], width: this.xAxis ? 2 : 1.5, points: { show: (u) => !this.xAxis && u.data[0].length < 50 } }))],
        axes: [this.xAxis || {}, { values: (u, vals) => vals.map((v) => this.fmtY(v)), size: 70 }],
        scales: { x: { time: true } },
      }, [[], ...this.series.map(() => [])], this.host);
      new ResizeObserver(() => {
        if (this.u && this.host.clientWidth > 0 && this.host.clientWidth !== this.u.width) { this.u.setSize({ width: this.host.clientWidth, height: this.height }); this.draw(); }
      }).observe(this.host);
    }
    /** data: [xs (unix seconds), ...ys] */
    set(data) { this.data = data; this.draw(); }
    draw() {
      if (!this.data || document.hidden) return;
      this.ensure();
      if (!this.u) return;
      const d = downsample(this.data, this.u.bbox.width / devicePixelRatio || this.host.clientWidth);
      this.u.setData(d);
      if (this.xRange) this.u.setScale('x', { min: this.xRange[0], max: this.xRange[1] });
      // one bucket: give it an hour of room either side
      else if (d[0].length === 1) this.u.setScale('x', { min: d[0][0] - 3600, max: d[0][0] + 3600 });
    }
    /** The x axis labels as drawn: text and left/right edges in CSS px
     * (labels are centred on their ticks), for tests and debugging. */
    xLabels() {
      if (!this.u) return [];
      const a = this.u.axes[0];
      const ctx = document.createElement('canvas').getContext('2d');
      ctx.font = AXIS_FONT;
      return (a._splits || []).map((v, i) => {
        const text = String((a._values || [])[i] ?? '');
        const x = this.u.valToPos(v, 'x');
        const w = ctx.measureText(text).width;
        return { text, left: x - w / 2, right: x + w / 2 };
      }).filter((l) => l.text && l.left >= -1 && l.right <= this.u.bbox.width / devicePixelRatio + 1);
    }
  }
  document.addEventListener('visibilitychange', () => { if (!document.hidden) for (const c of charts()) c.draw(); });

  // ---------------------------------------------------------------- live
  /** One WebSocket to /v1/ws: subscriptions, snapshot/update with hole
   * checks, reconnect with backoff and resume from the last seq. */
  class Live {
    constructor() {
      this.ws = null;
      this.channels = new Map(); // name -> {handler, seq}
      this.state = 'connecting';
      this.attempt = 0;
      this.timer = null;
      this.connects = 0;
      this.resumes = 0;
      this.snapshots = 0;
      this.reasons = [];
    }
    setState(state, text) {
      this.state = state;
      const c = $('#conn');
      c.dataset.state = state;
      c.querySelector('span').textContent = text || state;
    }
    subscribe(name, handler) {
      if (this.channels.has(name)) return;
      this.channels.set(name, { handler, seq: 0 });
      if (this.ws && this.ws.readyState === WebSocket.OPEN) this.send({ op: 'subscribe', channels: [name], interval_ms: 1000 });
    }
    send(msg) { try { this.ws.send(JSON.stringify(msg)); } catch { /* reconnect handles it */ } }
    connect() {
      clearTimeout(this.timer);
      const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
      const t = Token.get();
      const url = `${proto}//${location.host}/v1/ws${t ? `?token=${encodeURIComponent(t)}` : ''}`;
      this.setState(this.attempt ? 'reconnecting' : 'connecting', this.attempt ? `reconnecting (attempt ${this.attempt})…` : 'connecting…');
      let ws;
      try { ws = new WebSocket(url); } catch { this.retry(); return; }
      this.ws = ws;
      let opened = false;
      ws.onopen = () => {
        opened = true;
        this.connects++;
        const fresh = [], resume = {};
        for (const [name, ch] of this.channels) {
          if (ch.seq && name !== 'alerts') resume[name] = ch.seq; else fresh.push(name);
        }
        if (fresh.length) this.send({ op: 'subscribe', channels: fresh, interval_ms: 1000 });
        if (Object.keys(resume).length) this.send({ op: 'subscribe', channels: Object.keys(resume), resume, interval_ms: 1000 });
      };
      ws.onmessage = (e) => {
        if (this.ws !== ws) return;
        if (this.state !== 'live') { this.attempt = 0; this.setState('live', 'live'); }
        let m;
        try { m = JSON.parse(e.data); } catch { return; }
        this.onMessage(m);
      };
      ws.onclose = () => {
        if (this.ws !== ws) return;
        this.ws = null;
        if (!opened) this.checkAccess();
        this.retry();
      };
      ws.onerror = () => { /* onclose follows */ };
    }
    async checkAccess() {
      // a refused upgrade shows no status to scripts: ask the API why
      try { await api('/v1/alerts?limit=1'); } catch { /* api() asks for a token on 401/403 */ }
    }
    retry() {
      this.attempt++;
      const delay = Math.min(10000, 500 * 2 ** Math.min(this.attempt - 1, 5)) * (0.8 + Math.random() * 0.4);
      this.setState(this.attempt > 6 ? 'offline' : 'reconnecting', `reconnecting in ${Math.ceil(delay / 1000)} s…`);
      this.timer = setTimeout(() => this.connect(), delay);
    }
    reconnect() {
      if (this.ws) { const w = this.ws; this.ws = null; w.close(); }
      this.attempt = 0;
      this.connect();
    }
    onMessage(m) {
      if (m.type === 'error') { console.warn('hub:', m.error); return; }
      if (m.type === 'alert') { const ch = this.channels.get('alerts'); if (ch) ch.handler.alert(m); return; }
      const ch = m.channel && this.channels.get(m.channel);
      if (!ch) return;
      if (m.type === 'snapshot') {
        this.snapshots++;
        this.reasons.push(`${m.channel}:${m.reason}`);
        if (this.reasons.length > 50) this.reasons.shift();
        ch.seq = m.seq;
        ch.handler.snapshot(m);
      } else if (m.type === 'update') {
        if (ch.seq && m.after !== ch.seq) {
          // a hole: start this channel over from a snapshot
          ch.seq = 0;
          this.send({ op: 'subscribe', channels: [m.channel], interval_ms: 1000 });
          return;
        }
        if (m.resumed) this.resumes++;
        ch.seq = m.seq;
        ch.handler.update(m);
      }
    }
  }
  const live = new Live();

  // ---------------------------------------------------------------- overview
  const SECS = 300;
  const overview = {
    http: { t: [], in: [], out: [], ok: [], e4: [], e5: [] },
    lat: { t: [], p50: [], p95: [], p99: [] },
    charts: {
      bw: new Chart($('#ch-bw'), ['in', 'out'], (v) => si(v, 'b/s')),
      lat: new Chart($('#ch-lat'), ['p50', 'p95', 'p99'], (v) => `${nf.format(v)} ms`),
      status: new Chart($('#ch-status'), ['2xx/3xx', '4xx', '5xx'], (v) => nf.format(v)),
    },
    push(p) {
      const h = this.http;
      const t = p.t / 1000;
      if (h.t.length && t <= h.t[h.t.length - 1]) return;
      h.t.push(t); h.in.push(p.bytes_in * 8); h.out.push(p.bytes_out * 8);
      h.ok.push(p.requests - p.errors_4xx - p.errors_5xx); h.e4.push(p.errors_4xx); h.e5.push(p.errors_5xx);
      while (h.t.length > SECS) for (const k in h) h[k].shift();
    },
    latPush(t, q) {
      const l = this.lat;
      if (l.t.length && t <= l.t[l.t.length - 1]) return;
      l.t.push(t); l.p50.push(q ? q.p50 : null); l.p95.push(q ? q.p95 : null); l.p99.push(q ? q.p99 : null);
      while (l.t.length > 3600) for (const k in l) l[k].shift();
    },
    draw() {
      const h = this.http, l = this.lat;
      this.charts.bw.set([h.t, h.in, h.out]);
      this.charts.status.set([h.t, h.ok, h.e4, h.e5]);
      this.charts.lat.set([l.t, l.p50, l.p95, l.p99]);
    },
    cards(s) {
      // no http event since the hub started: zeros, not blanks
      const m = (s && s['1m']) || { requests_per_sec: 0, bytes_in_per_sec: 0, bytes_out_per_sec: 0, error_rate: 0, latency_ms: null };
      $('#c-rps').textContent = fmt.num(m.requests_per_sec);
      $('#c-in').textContent = fmt.bits(m.bytes_in_per_sec);
      $('#c-out').textContent = fmt.bits(m.bytes_out_per_sec);
      $('#c-err').textContent = fmt.pct(m.error_rate);
      $('#c-p95').textContent = fmt.ms(m.latency_ms && m.latency_ms.p95);
      const tb = $('#top-endpoints tbody');
      const top = (s && s.top_endpoints) || [];
      tb.replaceChildren(...(top.length ? top.map((e) => {
        const tr = el('tr');
        tr.append(el('td', '', e.service), el('td', '', e.method), el('td', '', e.endpoint), el('td', 'num', fmt.bits(e.bytes_per_sec)));
        return tr;
      }) : [(() => { const tr = el('tr'); const td = el('td', 'empty', 'no traffic in the last minute'); td.colSpan = 4; tr.append(td); return tr; })()]));
    },
  };
  const httpHandler = {
    snapshot(m) {
      const h = overview.http;
      for (const k in h) h[k] = [];
      const s = m.series['1s'];
      for (let i = 0; i < s.requests.length; i++) {
        overview.push({ t: s.start + i * s.step_ms, requests: s.requests[i], errors_4xx: s.errors_4xx[i], errors_5xx: s.errors_5xx[i], bytes_in: s.bytes_in[i], bytes_out: s.bytes_out[i] });
      }
      const l = overview.lat;
      for (const k in l) l[k] = [];
      const mm = m.series['1m'];
      for (let i = 0; i < mm.t.length; i++) {
        overview.latPush(mm.t[i] / 1000, { p50: mm.p50 ? mm.p50[i] : null, p95: mm.p95[i], p99: mm.p99 ? mm.p99[i] : null });
      }
      if (m.summary['1m']) overview.latPush(m.seq, m.summary['1m'].latency_ms);
      overview.cards(m.summary);
      overview.draw();
    },
    update(m) {
      for (const p of m.points) overview.push(p);
      if (m.summary['1m']) overview.latPush(m.seq, m.summary['1m'].latency_ms);
      overview.cards(m.summary);
      overview.draw();
    },
  };
  const webrtcHandler = {
    show(s) {
      $('#c-meetings').textContent = fmt.num(s.active_meetings);
      $('#c-peers').textContent = `${fmt.num(s.active_peers)} peers`;
      $('#c-relay').textContent = s['1m'] ? fmt.pct(s['1m'].relayed_share) : '–';
    },
    snapshot(m) { this.show(m.summary); },
    update(m) { this.show(m.summary); },
  };

  // ---------------------------------------------------------------- virtual table
  /** A table that keeps only the visible rows in the DOM (plus a few). */
  class VirtualTable {
    constructor(root, columns, rowHeight = 30) {
      this.head = root.querySelector('.vhead');
      this.body = root.querySelector('.vbody');
      this.space = root.querySelector('.vspace');
      this.rowHeight = rowHeight;
      this.rows = [];
      this.view = [];
      this.pool = [];
      this.filter = '';
      this.setColumns(columns);
      this.body.addEventListener('scroll', () => this.schedule(), { passive: true });
      new ResizeObserver(() => this.schedule()).observe(this.body);
    }
    setColumns(columns) {
      this.columns = columns;
      this.sort = this.sort && columns.some((c) => c.key === this.sort.key) ? this.sort : null;
      this.head.style.setProperty('--cols', columns.map((c) => c.width || '1fr').join(' '));
      this.body.style.setProperty('--cols', columns.map((c) => c.width || '1fr').join(' '));
      this.head.style.minWidth = this.body.style.minWidth = columns.minWidth || '';
      this.head.replaceChildren(...columns.map((c) => {
        const s = el('span', c.num ? 'num' : '', c.label || c.key);
        s.dataset.key = c.key;
        if (c.title) s.title = c.title;
        s.addEventListener('click', () => {
          this.sort = this.sort && this.sort.key === c.key ? { key: c.key, asc: !this.sort.asc } : { key: c.key, asc: !c.num };
          this.refresh();
        });
        return s;
      }));
      for (const r of this.pool) r.remove();
      this.pool = [];
    }
    setRows(rows) { this.rows = rows; this.refresh(); }
    setFilter(f) { this.filter = f.toLowerCase(); this.body.scrollTop = 0; this.refresh(); }
    refresh() {
      let v = this.rows;
      if (this.filter) v = v.filter((r) => this.columns.some((c) => String(r[c.key] ?? '').toLowerCase().includes(this.filter)));
      if (this.sort) {
        const { key, asc } = this.sort;
        const dir = asc ? 1 : -1;
        v = v.slice().sort((a, b) => {
          const x = a[key], y = b[key];
          if (x === y) return 0;
          if (x === null || x === undefined) return 1;
          if (y === null || y === undefined) return -1;
          return (x < y ? -1 : 1) * dir;
        });
      }
      for (const s of this.head.children) {
        s.classList.toggle('sorted', !!this.sort && s.dataset.key === this.sort.key);
        s.classList.toggle('asc', !!this.sort && this.sort.asc);
      }
      this.view = v;
      this.space.style.height = `${v.length * this.rowHeight}px`;
      this.render();
    }
    schedule() {
      if (this.raf) return;
      this.raf = requestAnimationFrame(() => { this.raf = 0; this.render(); });
    }
    render() {
      const h = this.body.clientHeight || 600;
      const first = Math.max(0, Math.floor(this.body.scrollTop / this.rowHeight) - 5);
      const count = Math.min(this.view.length - first, Math.ceil(h / this.rowHeight) + 10);
      while (this.pool.length < count) {
        const r = el('div', 'vrow');
        for (const c of this.columns) r.appendChild(el('span', c.num ? 'num' : ''));
        this.body.appendChild(r);
        this.pool.push(r);
      }
      for (let i = 0; i < this.pool.length; i++) {
        const r = this.pool[i];
        if (i >= count) { r.hidden = true; continue; }
        const row = this.view[first + i];
        r.hidden = false;
        r.style.transform = `translateY(${(first + i) * this.rowHeight}px)`;
        for (let j = 0; j < this.columns.length; j++) {
          const c = this.columns[j];
          const cell = r.children[j];
          if (c.html) c.html(cell, row[c.key], row);
          else cell.textContent = c.fmt ? c.fmt(row[c.key], row) : (row[c.key] ?? '');
        }
      }
    }
    /** Rows currently in the DOM (for tests). */
    rendered() { return this.pool.filter((r) => !r.hidden).length; }
  }

  // ---------------------------------------------------------------- meetings
  let meetingsTable = null;
  let classes = [];
  function qualityCell(cell, q) {
    const i = classes.indexOf(q);
    const name = q ? String(q).replace(/^quality_/, '') : 'no data';
    cell.className = `q q-${name} q-${i}`;
    if (!cell.firstChild) cell.append(el('i'), el('span'));
    cell.lastChild.textContent = name;
  }
  const meetingsHandler = {
    show(s) {
      classes = s.classes || classes;
      meetingsTable.setRows(s.meetings || []);
      $('#m-count').textContent = `${s.active_meetings || 0} active meetings`;
    },
    snapshot(m) { this.show(m.summary); },
    update(m) { this.show(m.summary); },
  };
  function initMeetings() {
    meetingsTable = new VirtualTable($('#meetings'), [
      { key: 'meeting_id', label: 'meeting', width: '2fr' },
      { key: 'quality', label: 'quality', html: qualityCell },
      { key: 'peers', label: 'peers', num: true, fmt: fmt.num },
      { key: 'bitrate_bps', label: 'bitrate', num: true, fmt: fmt.bps },
      { key: 'relayed_share', label: 'relayed', num: true, fmt: fmt.pct },
      { key: 'rtt_avg_ms', label: 'rtt avg', num: true, fmt: fmt.ms },
      { key: 'loss_avg', label: 'loss avg', num: true, fmt: fmt.pct },
    ]);
    meetingsTable.sort = { key: 'bitrate_bps', asc: false };
    $('#m-filter').addEventListener('input', (e) => meetingsTable.setFilter(e.target.value));
    live.subscribe('webrtc:meetings', meetingsHandler);
  }

  // ---------------------------------------------------------------- alerts
  const open = new Map();
  function alertRow(a, history) {
    const tr = el('tr');
    const sev = el('td', `sev-${a.severity}`, a.severity);
    if (history) {
      tr.append(el('td', '', fmt.when(a.created_at)), el('td', '', a.resolved_at ? fmt.when(a.resolved_at) : 'open'), sev,
        el('td', '', a.rule), el('td', '', a.subject), el('td', 'num', fmt.num(a.value)), el('td', 'num', fmt.num(a.threshold)), el('td', '', a.message));
    } else {
      tr.append(el('td', '', fmt.when(a.created_at)), sev, el('td', '', a.rule), el('td', '', a.subject), el('td', '', a.message));
    }
    return tr;
  }
  function showOpen() {
    const list = [...open.values()].sort((a, b) => (a.created_at < b.created_at ? 1 : -1));
    const tb = $('#open-alerts tbody');
    tb.replaceChildren(...(list.length ? list.map((a) => alertRow(a, false))
      : [(() => { const tr = el('tr'); const td = el('td', 'empty', 'no open alerts'); td.colSpan = 5; tr.append(td); return tr; })()]));
    $('#open-count').textContent = `${list.length}`;
    const badge = $('#alert-count');
    badge.textContent = String(list.length);
    badge.hidden = list.length === 0;
  }
  let historyShown = false;
  async function loadAlertHistory() {
    try {
      const r = await api('/v1/alerts?limit=500');
      const j = await r.json();
      const tb = $('#alert-history tbody');
      tb.replaceChildren(...(j.alerts.length ? j.alerts.map((a) => alertRow(a, true))
        : [(() => { const tr = el('tr'); const td = el('td', 'empty', 'no alerts in the last 7 days'); td.colSpan = 8; tr.append(td); return tr; })()]));
    } catch (e) { notice(`alert history: ${e.message}`); }
  }
  const alertsHandler = {
    snapshot(m) { open.clear(); for (const a of m.open || []) open.set(a.id, a); showOpen(); },
    alert(m) {
      if (m.state === 'fired') open.set(m.alert.id, m.alert); else open.delete(m.alert.id);
      showOpen();
      if (historyShown) loadAlertHistory();
    },
  };

  // ---------------------------------------------------------------- history
  const hist = { table: null, chart: null, json: null, url: null, rows: [], meta: null };
  const pad = (n) => String(n).padStart(2, '0');
  const localInput = (d) => `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:00`;
  /** Sets the range inputs to the 24 hours before `to` (a Date). */
  function setRange(to, hours = 24) {
    $('#h-from').value = localInput(new Date(to.getTime() - hours * 3600 * 1000));
    $('#h-to').value = localInput(to);
  }
  function initHistory() {
    const to = new Date(); to.setMinutes(0, 0, 0); to.setHours(to.getHours() + 1);
    setRange(to);
    hist.table = new VirtualTable($('#history'), [{ key: '-' }]);
    hist.chart = new Chart($('#ch-history'), ['–'], (v) => si(v, ''), 240);
    $('#h-form').addEventListener('submit', (e) => { e.preventDefault(); loadHistory(); });
    $('#h-metric').addEventListener('change', drawHistory);
    $('#h-csv').addEventListener('click', () => exportHistory('csv'));
    $('#h-json').addEventListener('click', () => exportHistory('json'));
    openOnData();
  }
  /** The first view: the last 24 hours, or, when they hold no rows, the
   * latest day that does (found with the daily table, widening back to a
   * year and then to the daily table's longest range), said in the info line. */
  async function openOnData() {
    await loadHistory();
    if (hist.rows.length) return;
    const kind = $('#h-kind').value;
    const now = Date.now();
    for (const days of [30, 366, 1830]) {
      const from = new Date(now - days * 86400 * 1000).toISOString().slice(0, 10);
      const to = new Date(now + 86400 * 1000).toISOString().slice(0, 10);
      let j;
      try {
        j = await (await api(`/v1/rollups/daily?kind=${encodeURIComponent(kind)}&from=${from}T00:00:00Z&to=${to}T00:00:00Z&limit=100000`)).json();
      } catch { return; }
      if (!j.rows.length) continue;
      const day = String(j.rows.map((r) => r[j.time_column]).sort().pop()).slice(0, 10);
      setRange(new Date(Date.parse(`${day}T00:00:00Z`) + 86400 * 1000));
      await loadHistory();
      $('#h-info').textContent = `No ${kind} rows in the last 24 hours: showing ${day}, the latest day with data. ${$('#h-info').textContent}`;
      return;
    }
  }
  function historyUrl(format) {
    const p = new URLSearchParams();
    p.set('kind', $('#h-kind').value);
    const from = new Date($('#h-from').value), to = new Date($('#h-to').value);
    if (!Number.isNaN(from.getTime())) p.set('from', from.toISOString().replace('.000Z', 'Z'));
    if (!Number.isNaN(to.getTime())) p.set('to', to.toISOString().replace('.000Z', 'Z'));
    for (const kv of $('#h-filter').value.split(/[\s,&]+/)) {
      const i = kv.indexOf('=');
      if (i > 0) p.set(kv.slice(0, i), kv.slice(i + 1));
    }
    if (format) p.set('format', format);
    return `/v1/rollups/${$('#h-grain').value}?${p}`;
  }
  async function loadHistory() {
    const url = historyUrl();
    $('#h-info').textContent = 'loading…';
    try {
      const r = await api(url);
      const text = await r.text();
      const j = JSON.parse(text);
      hist.json = text; hist.url = url; hist.rows = j.rows; hist.meta = j;
      const cols = j.columns;
      const timeCol = j.time_column;
      const dims = j.dimensions;
      const metrics = cols.filter((c) => c !== timeCol && !dims.includes(c));
      hist.timeCol = timeCol; hist.dims = dims;
      const when = timeFormat(j.rows.map((r) => r[timeCol]));
      // the time first, then the dimensions, then the figures (exports keep the API's order)
      const shown = [timeCol, ...dims, ...metrics];
      hist.table.setColumns(fitColumns(shown.map((c) => ({
        key: c, num: metrics.includes(c),
        fmt: c === timeCol ? when : metrics.includes(c) ? fmt.num : null,
      })), j.rows));
      hist.table.setRows(j.rows);
      const sel = $('#h-metric');
      const prev = sel.value;
      sel.replaceChildren(...metrics.map((m) => { const o = el('option', '', m); o.value = m; return o; }));
      if (metrics.includes(prev)) sel.value = prev;
      $('#h-info').textContent = `${j.rows.length} rows of ${j.table} from ${fmt.when(j.from)} to ${fmt.when(j.to)}`;
      $('#h-csv').disabled = $('#h-json').disabled = false;
      drawHistory();
    } catch (e) {
      $('#h-info').textContent = e.message;
    }
  }
  /** Bucket times shown compactly, in local time like the range inputs:
   * `11-30 21:00` (hourly), `11-30` (daily); with the year when the rows
   * are not all from this year. */
  function timeFormat(values) {
    const year = String(new Date().getFullYear());
    const thisYear = values.every((t) => String(t).startsWith(year));
    return (t) => {
      if (!t) return '';
      if (String(t).length === 10) return thisYear ? String(t).slice(5) : String(t); // a day: already its own date
      const d = new Date(t);
      const date = `${thisYear ? '' : `${d.getFullYear()}-`}${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
      return `${date} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
    };
  }
  /** Column widths fitted to their content: the widest shown value of the
   * first rows, or the header's longest part (headers wrap after `_`). */
  function fitColumns(columns, rows) {
    const sample = rows.slice(0, 500);
    let total = 0;
    for (const c of columns) {
      const parts = c.key.split('_').map((p, i, a) => p.length + (i < a.length - 1 ? 1 : 0));
      let w = Math.max(...parts);
      for (const r of sample) w = Math.max(w, String(c.fmt ? c.fmt(r[c.key], r) : (r[c.key] ?? '')).length);
      const ch = Math.ceil(w * 1.05) + 1;
      c.width = `minmax(${ch}ch, ${c.num ? 1 : 2}fr)`;
      c.label = c.key.replace(/_/g, '_\u200b');
      c.title = c.key;
      total += ch;
    }
    columns.minWidth = `calc(${total}ch + ${columns.length - 1} * .5rem + 1.2rem)`;
    return columns;
  }
  /** The x axis of the History chart for buckets of `step` seconds:
   * ticks on whole buckets, labels that fit between them. */
  function historyAxis(step) {
    const hourly = step < 86400;
    const d = (v) => new Date(v * 1000);
    return {
      font: AXIS_FONT,
      space: hourly ? 100 : 80,
      incrs: hourly ? [3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800, 1209600, 2419200]
        : [86400, 172800, 604800, 1209600, 2419200, 7776000, 15552000, 31536000],
      values: (u, splits) => splits.map((v) => (hourly
        ? `${pad(d(v).getMonth() + 1)}-${pad(d(v).getDate())} ${pad(d(v).getHours())}:00`
        : `${d(v).getFullYear()}-${pad(d(v).getMonth() + 1)}-${pad(d(v).getDate())}`)),
    };
  }
  function drawHistory() {
    const metric = $('#h-metric').value;
    if (!metric || !hist.rows.length) { $('#h-caption').textContent = 'no rows in this range'; return; }
    // one line per subject (the top 8 by total), x = the time buckets
    const key = (r) => hist.dims.map((d) => r[d]).join(' ') || 'all';
    const totals = new Map();
    for (const r of hist.rows) totals.set(key(r), (totals.get(key(r)) || 0) + (r[metric] || 0));
    const top = [...totals.entries()].sort((a, b) => b[1] - a[1]).slice(0, 8).map((e) => e[0]);
    const times = [...new Set(hist.rows.map((r) => r[hist.timeCol]))].sort();
    const xi = new Map(times.map((t, i) => [t, i]));
    const ys = top.map(() => times.map(() => null));
    for (const r of hist.rows) {
      const s = top.indexOf(key(r));
      if (s >= 0) ys[s][xi.get(r[hist.timeCol])] = r[metric];
    }
    const starts = times.map((t) => Date.parse(t.length === 10 ? `${t}T00:00:00Z` : t) / 1000);
    const step = $('#h-grain').value === 'daily' ? 86400 : 3600;
    // each bucket is drawn across its width (start to end), as a step: one
    // hour of data is a flat line per subject, not a column of dots
    const xs = starts.flatMap((t) => [t, t + step - 1]);
    const steps = ys.map((y) => y.flatMap((v) => [v, v]));
    const first = starts[0], last = starts[starts.length - 1] + step;
    const padX = Math.max(step / 2, (last - first) * 0.02);
    $('#h-caption').textContent = `${metric} per ${hist.timeCol}${totals.size > 8 ? ` (top 8 of ${totals.size} by total)` : ''}`;
    if (hist.chart.u) { hist.chart.u.destroy(); hist.chart.u = null; }
    hist.chart.series = top;
    hist.chart.xAxis = historyAxis(step);
    hist.chart.xRange = [first - padX, last + padX];
    hist.chart.set([xs, ...steps]);
  }
  async function exportHistory(format) {
    if (!hist.url) return;
    let body, type;
    if (format === 'json') {
      body = hist.json; type = 'application/json';
    } else {
      // the API's own CSV of the same query: exactly the rows shown
      const r = await api(hist.url.replace(/^([^?]*\?)/, '$1format=csv&'));
      body = await r.text(); type = 'text/csv';
    }
    const a = document.createElement('a');
    a.href = URL.createObjectURL(new Blob([body], { type }));
    const m = hist.meta;
    a.download = `flowmeter-${m.table}-${m.from.slice(0, 13)}-${m.to.slice(0, 13)}.${format}`.replace(/[:]/g, '');
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  }

  // ---------------------------------------------------------------- routing
  const inited = new Set();
  function charts() {
    return [...Object.values(overview.charts), hist.chart].filter(Boolean);
  }
  function route(force) {
    const page = (location.hash.match(/^#\/(\w+)/) || [])[1] || 'overview';
    const known = ['overview', 'meetings', 'alerts', 'history'];
    const p = known.includes(page) ? page : 'overview';
    for (const k of known) $(`#page-${k}`).hidden = k !== p;
    for (const a of document.querySelectorAll('nav a')) a.classList.toggle('active', a.dataset.page === p);
    if (!inited.has(p) || force) {
      inited.add(p);
      if (p === 'meetings' && !meetingsTable) initMeetings();
      if (p === 'history') { if (!hist.table) initHistory(); else if (force) loadHistory(); }
    }
    if (p === 'alerts') { historyShown = true; loadAlertHistory(); } else historyShown = false;
    requestAnimationFrame(() => { for (const c of charts()) c.draw(); if (meetingsTable) meetingsTable.render(); });
  }
  window.addEventListener('hashchange', () => route(false));

  live.subscribe('http:overview', httpHandler);
  live.subscribe('webrtc:overview', webrtcHandler);
  live.subscribe('alerts', alertsHandler);
  route(false);
  live.connect();
  window.flowmeter = { live, overview, hist, get meetings() { return meetingsTable; }, hasCharts, downsample, openOnData };
})();

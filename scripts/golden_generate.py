#!/usr/bin/env python3
"""Generate flowmeter's golden test dataset and the demo sample dataset.

Writes, relative to the repository root:

  testdata/golden/events.ndjson   ~6,000 events, 2026-03-01 .. 2026-03-03 (UTC)
  testdata/sample/events.ndjson   ~500 events, a few hours of 2026-03-04 (UTC)

Both files are deterministic: each comes from its own fixed random.Random seed
and only the Python standard library is used, so re-running this script
reproduces them byte for byte (with the same Python version).

The data is meant to look like real traffic and to hit the awkward corners of
the ingest path:

  * `ts` is a mix of RFC 3339 strings ("Z" and non-UTC offsets, 0/1/3/6/9
    fractional digits) and integer epoch milliseconds;
  * the file is mostly chronological, but ~5% of events arrive late (1-30 h
    after their timestamp position in the golden file) and the rest jitter by
    up to two seconds;
  * events sit exactly on hour boundaries (hh:00:00.000) and on hh:59:59.999,
    and some have a local-offset date that differs from their UTC date;
  * http: 3 services, 4 route templates each, 2xx/3xx/4xx/5xx, zero-byte and
    very large bodies, 0.0 ms durations, user_id present / null / absent;
  * webrtc: 8 meetings with recurring sessions, ~20% relay samples (with
    relay_protocol udp/tcp/tls, sometimes absent or null), exact-zero packet
    loss, bad-network spells and samples exactly on the quality thresholds.

Every event is validated against schemas/http.v1.json or schemas/webrtc.v1.json
before anything is written. The expected rollups for the golden file come from
scripts/golden_expected.py, which re-reads the file and shares no code with
this script.

Usage:
  python3 scripts/golden_generate.py                 # both files
  python3 scripts/golden_generate.py --only golden   # or: --only sample
"""

import argparse
import json
import math
import random
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

NS_PER_MS = 10**6
NS_PER_SEC = 10**9
NS_PER_MIN = 60 * NS_PER_SEC
NS_PER_HOUR = 60 * NS_PER_MIN
EPOCH = datetime(1970, 1, 1)

# Sentinel for "leave the optional field out" (as opposed to JSON null).
ABSENT = object()


# ---------------------------------------------------------------------------
# Time helpers. Instants are integer nanoseconds since the epoch (UTC) so that
# nothing is ever rounded by accident.
# ---------------------------------------------------------------------------

def utc_ns(text):
    """'2026-03-01T09:00' (UTC) -> epoch nanoseconds."""
    dt = datetime.strptime(text, "%Y-%m-%dT%H:%M")
    return (dt - EPOCH) // timedelta(microseconds=1) * 1000


# RFC 3339 offsets used for string timestamps, in minutes east of UTC.
OFFSETS = {"Z": 0, "+00:00": 0, "+02:00": 120, "-05:30": -330,
           "+05:45": 345, "-08:00": -480, "+09:00": 540}


@dataclass(frozen=True)
class TsStyle:
    """How one event's `ts` is written: epoch millis, or RFC 3339 text."""
    epoch_ms: bool
    offset: str = "Z"      # key of OFFSETS
    frac_digits: int = 0   # 0 (whole seconds), 1, 3, 6 or 9


STYLE_MS = TsStyle(epoch_ms=True)


def written_instant(ns, style):
    """The instant the written `ts` denotes: precision is truncated, never rounded."""
    if style.epoch_ms:
        unit = NS_PER_MS
    else:
        unit = 10 ** (9 - style.frac_digits)
    return ns - ns % unit


def format_ts(ns, style):
    """Render `ns` (already truncated by written_instant) as a JSON `ts` value."""
    if style.epoch_ms:
        return ns // NS_PER_MS
    minutes = OFFSETS[style.offset]
    secs, sub = divmod(ns, NS_PER_SEC)
    local = EPOCH + timedelta(seconds=secs + minutes * 60)
    text = local.strftime("%Y-%m-%dT%H:%M:%S")
    if style.frac_digits:
        text += "." + f"{sub:09d}"[: style.frac_digits]
    return text + style.offset


def local_date_differs(ns, style):
    """True when the date written in the string differs from the UTC date."""
    if style.epoch_ms or OFFSETS[style.offset] == 0:
        return False
    secs = ns // NS_PER_SEC
    utc_day = (EPOCH + timedelta(seconds=secs)).date()
    local_day = (EPOCH + timedelta(seconds=secs + OFFSETS[style.offset] * 60)).date()
    return utc_day != local_day


def random_style(rng):
    """About half epoch millis, half RFC 3339 (half of those with a non-UTC offset)."""
    if rng.random() < 0.5:
        return STYLE_MS
    offset = rng.choices(list(OFFSETS), weights=[50, 5, 15, 10, 5, 10, 5])[0]
    digits = rng.choices([0, 1, 3, 6, 9], weights=[35, 3, 40, 15, 7])[0]
    return TsStyle(False, offset, digits)


# ---------------------------------------------------------------------------
# Scenarios: one per output file.
# ---------------------------------------------------------------------------

@dataclass
class Scenario:
    name: str
    path: str
    seed: int
    start: str                 # first hour of traffic, UTC
    hours: int                 # how many hours of http traffic
    n_http: int
    meetings: list             # (meeting_id, peers, [(start UTC, minutes), ...])
    day_weight: dict = field(default_factory=dict)  # 'YYYY-MM-DD' -> traffic factor
    incident: tuple = None     # (service, start UTC, end UTC): elevated 5xx
    late_fraction: float = 0.05
    late_hours: tuple = (1, 30)
    edge_cases: bool = True    # force boundary timestamps, threshold samples, ...
    sample_interval_s: int = 110


GOLDEN = Scenario(
    name="golden",
    path="testdata/golden/events.ndjson",
    seed=20261123,
    start="2026-03-01T00:00",
    hours=72,
    n_http=4000,
    meetings=[
        # Daily stand-up.
        ("m1", 6, [("2026-03-01T09:00", 25), ("2026-03-02T09:00", 25), ("2026-03-03T09:00", 25)]),
        # Lecture, twice.
        ("m2", 8, [("2026-03-01T13:30", 90), ("2026-03-03T13:30", 90)]),
        # Office hours across midnight (UTC day boundary).
        ("m3", 3, [("2026-03-01T22:40", 100)]),
        ("m4", 4, [("2026-03-02T10:15", 45), ("2026-03-02T16:05", 45)]),
        # Overlaps the video incident below and has a long bad-network spell.
        ("m5", 5, [("2026-03-02T14:50", 70)]),
        # One-to-one calls.
        ("m6", 2, [("2026-03-02T19:00", 30), ("2026-03-03T07:55", 30)]),
        ("m7", 7, [("2026-03-03T11:00", 120)]),
        ("m8", 4, [("2026-03-03T21:30", 140)]),
    ],
    # 2026-03-01 is a Sunday.
    day_weight={"2026-03-01": 0.6, "2026-03-02": 1.1, "2026-03-03": 1.0},
    incident=("video", "2026-03-02T14:00", "2026-03-02T15:30"),
)

SAMPLE = Scenario(
    name="sample",
    path="testdata/sample/events.ndjson",
    seed=20260304,
    start="2026-03-04T06:00",
    hours=6,
    n_http=300,
    meetings=[
        ("demo-standup", 5, [("2026-03-04T07:00", 30)]),
        ("demo-lecture", 6, [("2026-03-04T09:40", 60)]),
    ],
    late_fraction=0.03,
    late_hours=(1, 2),
    edge_cases=False,
    sample_interval_s=120,
)


# ---------------------------------------------------------------------------
# http model
# ---------------------------------------------------------------------------

@dataclass
class Endpoint:
    route: str
    methods: dict              # method -> weight
    share: float               # share of the service's traffic
    resp: tuple                # (median bytes, sigma) of successful responses
    latency: tuple             # (median ms, sigma)
    req: tuple = (600, 0.8)    # (median bytes, sigma) of POST/PUT bodies
    errors: tuple = (0.03, (400, 404))  # (rate, client error codes to pick from)
    cacheable: bool = False    # GETs may answer 304 Not Modified
    ok: dict = field(default_factory=dict)  # method -> success code override


# service -> (share of all http traffic, endpoints)
SERVICES = {
    "courses": (0.45, [
        Endpoint("/api/courses", {"GET": 1}, 0.30, resp=(18_000, 0.6),
                 latency=(45, 0.5), cacheable=True),
        Endpoint("/api/courses/:id", {"GET": 0.85, "PUT": 0.10, "DELETE": 0.05}, 0.35,
                 resp=(6_000, 0.5), latency=(28, 0.5), req=(2_500, 0.6),
                 errors=(0.04, (404, 404, 403, 400)), cacheable=True),
        Endpoint("/api/courses/:id/lessons", {"GET": 0.8, "POST": 0.2}, 0.25,
                 resp=(24_000, 0.7), latency=(60, 0.6), req=(4_000, 0.9),
                 errors=(0.03, (400, 404, 422))),
        Endpoint("/api/courses/:id/enroll", {"POST": 0.9, "DELETE": 0.1}, 0.10,
                 resp=(350, 0.3), latency=(80, 0.5), req=(120, 0.3),
                 errors=(0.06, (409, 409, 403, 404))),
    ]),
    "auth": (0.20, [
        Endpoint("/api/auth/login", {"POST": 1}, 0.30, resp=(900, 0.2),
                 latency=(140, 0.35), req=(180, 0.2),
                 errors=(0.10, (401, 401, 401, 400, 429)), ok={"POST": 200}),
        Endpoint("/api/auth/refresh", {"POST": 1}, 0.40, resp=(850, 0.1),
                 latency=(12, 0.4), req=(400, 0.1), errors=(0.04, (401,)),
                 ok={"POST": 200}),
        Endpoint("/api/auth/logout", {"POST": 1}, 0.10, resp=(0, 0),
                 latency=(6, 0.4), req=(0, 0), errors=(0.01, (401,)),
                 ok={"POST": 302}),
        Endpoint("/api/auth/me", {"GET": 1}, 0.20, resp=(450, 0.2),
                 latency=(8, 0.5), errors=(0.05, (401,)), cacheable=True),
    ]),
    "video": (0.35, [
        Endpoint("/api/videos/:id/manifest", {"GET": 1}, 0.25, resp=(3_500, 0.4),
                 latency=(20, 0.5), errors=(0.02, (404, 403)), cacheable=True),
        Endpoint("/api/videos/:id/segments/:seq", {"GET": 1}, 0.60,
                 resp=(1_200_000, 0.6), latency=(90, 0.7), errors=(0.01, (404, 416)),
                 cacheable=True),
        Endpoint("/api/videos/:id/progress", {"PUT": 1}, 0.12, resp=(0, 0),
                 latency=(15, 0.4), req=(90, 0.2), errors=(0.02, (400, 404)),
                 ok={"PUT": 204}),
        Endpoint("/api/videos", {"POST": 1}, 0.03, resp=(700, 0.2),
                 latency=(2_500, 0.8), req=(8_000_000, 1.1),
                 errors=(0.08, (413, 400, 415))),
    ]),
}

MAX_BODY = 50 * 1024 * 1024  # largest request/response body we generate (50 MiB)


def lognormal_bytes(rng, median, sigma):
    if median <= 0:
        return 0
    return min(MAX_BODY, int(rng.lognormvariate(math.log(median), sigma)))


def make_users(rng, n=300):
    """User ids and Zipf-like popularity weights (a few heavy users)."""
    users = [f"u{i:04d}" for i in range(1, n + 1)]
    rng.shuffle(users)
    weights = [1 / (rank ** 0.8) for rank in range(1, n + 1)]
    return users, weights


def pick_status(rng, ep, method, in_incident):
    if in_incident and rng.random() < 0.30:
        return rng.choice((502, 503, 503, 504))
    if rng.random() < 0.012:
        return rng.choice((500, 500, 502, 503, 504))
    rate, codes = ep.errors
    if rng.random() < rate:
        return rng.choice(codes)
    if method == "GET" and ep.cacheable and rng.random() < 0.12:
        return 304
    if method in ep.ok:
        return ep.ok[method]
    return {"GET": 200, "POST": 201, "PUT": 200, "DELETE": 204}[method]


def http_duration(rng, ep, status):
    median, sigma = ep.latency
    if status == 504:                     # gateway timeout after 30 s
        return 30_000 + rng.uniform(0, 50)
    if status in (502, 503):              # fails fast at the proxy
        return rng.uniform(0.5, 20)
    if status == 304 and rng.random() < 0.05:
        return 0.0                        # answered from an edge cache
    factor = {304: 0.3, 500: 2.0}.get(status, 0.5 if status >= 400 else 1.0)
    return rng.lognormvariate(math.log(median * factor), sigma)


def diurnal(hour):
    """Relative request rate by UTC hour: morning and afternoon peaks, quiet nights."""
    return (0.12 + math.exp(-((hour - 10) ** 2) / 8)
            + 0.9 * math.exp(-((hour - 15.5) ** 2) / 10)
            + 0.5 * math.exp(-((hour - 20) ** 2) / 6))


def gen_http(rng, sc, users, user_weights):
    """Returns [(ns, event-without-ts)] for sc.n_http requests."""
    start = utc_ns(sc.start)
    hour_starts = [start + h * NS_PER_HOUR for h in range(sc.hours)]
    weights = []
    for hs in hour_starts:
        dt = EPOCH + timedelta(microseconds=hs // 1000)
        weights.append(diurnal(dt.hour) * sc.day_weight.get(dt.strftime("%Y-%m-%d"), 1.0))
    if sc.incident:
        inc_service = sc.incident[0]
        inc_from, inc_to = utc_ns(sc.incident[1]), utc_ns(sc.incident[2])

    services = list(SERVICES)
    service_w = [SERVICES[s][0] for s in services]
    cum_users = []
    acc = 0.0
    for w in user_weights:
        acc += w
        cum_users.append(acc)

    out = []
    for _ in range(sc.n_http):
        ns = rng.choices(hour_starts, weights=weights)[0] + rng.randrange(NS_PER_HOUR)
        service = rng.choices(services, weights=service_w)[0]
        endpoints = SERVICES[service][1]
        ep = rng.choices(endpoints, weights=[e.share for e in endpoints])[0]
        method = rng.choices(list(ep.methods), weights=list(ep.methods.values()))[0]
        in_incident = bool(sc.incident) and service == inc_service and inc_from <= ns < inc_to
        status = pick_status(rng, ep, method, in_incident)

        if method in ("POST", "PUT"):
            req_bytes = lognormal_bytes(rng, *ep.req)
        else:
            req_bytes = 0                 # GET / DELETE carry no body
        if status in (204, 304):
            resp_bytes = 0
        elif status == 302:
            resp_bytes = lognormal_bytes(rng, 150, 0.1)
        elif status >= 400:
            resp_bytes = lognormal_bytes(rng, 220, 0.4)   # small JSON error body
        else:
            resp_bytes = lognormal_bytes(rng, *ep.resp)

        r = rng.random()
        if ep.route == "/api/auth/login" and status >= 400:
            user = None                   # failed login: nobody to attribute
        elif r < 0.08:
            user = ABSENT                 # anonymous traffic, field left out
        elif r < 0.12:
            user = None                   # collector knows the field, value unknown
        else:
            user = rng.choices(users, cum_weights=cum_users)[0]

        ev = {
            "kind": "http",
            "service": service,
            "endpoint": ep.route,
            "method": method,
            "status": status,
            "req_bytes": req_bytes,
            "resp_bytes": resp_bytes,
            "duration_ms": round(http_duration(rng, ep, status), 3),
        }
        if user is not ABSENT:
            ev["user_id"] = user
        out.append((ns, ev))

    # A few very large uploads / downloads near the 50 MiB cap.
    if sc.edge_cases:
        uploads = [ev for _, ev in out if ev["endpoint"] == "/api/videos" and ev["status"] == 201]
        for ev in rng.sample(uploads, min(3, len(uploads))):
            ev["req_bytes"] = MAX_BODY - rng.randrange(0, 2_000_000)
        segs = [ev for _, ev in out if ev["endpoint"].endswith("/segments/:seq") and ev["status"] == 200]
        for ev in rng.sample(segs, min(2, len(segs))):
            ev["resp_bytes"] = MAX_BODY
    return out


# ---------------------------------------------------------------------------
# webrtc model
# ---------------------------------------------------------------------------

CANDIDATES = ["host", "srflx", "prflx", "relay"]
CANDIDATE_W = [35, 40, 5, 20]
BASE_RTT = {"host": (8, 40), "srflx": (30, 120), "prflx": (30, 120), "relay": (60, 220)}


def relay_protocol_for_session(rng):
    return rng.choices(["udp", "tcp", "tls"], weights=[60, 25, 15])[0]


def gen_webrtc(rng, sc, users):
    """Returns [(ns, event-without-ts)] for every peer sample of every session."""
    out = []
    for meeting_id, n_peers, sessions in sc.meetings:
        # People are stable across a meeting's sessions; guests have no user_id.
        peer_users = []
        for p in range(n_peers):
            r = rng.random()
            peer_users.append(ABSENT if r < 0.15 else None if r < 0.22 else rng.choice(users))
        for start_text, minutes in sessions:
            start = utc_ns(start_text)
            end = start + minutes * NS_PER_MIN
            # Bad-network spells: (peer index or None for everyone, from, to).
            spells = []
            for _ in range(rng.choice((0, 1, 1, 2))):
                s = start + rng.randrange(minutes * NS_PER_MIN)
                spells.append((rng.randrange(n_peers), s, s + rng.randint(3, 12) * NS_PER_MIN))
            if meeting_id == "m5":        # everyone suffers during the incident
                spells.append((None, start + 10 * NS_PER_MIN, start + 35 * NS_PER_MIN))
            for p in range(n_peers):
                out.extend(gen_peer_session(rng, sc, meeting_id, p, peer_users[p],
                                            start, end, n_peers, spells))
    return out


def gen_peer_session(rng, sc, meeting_id, p, user, start, end, n_peers, spells):
    span = end - start
    join = start + int(rng.random() * 0.15 * span)
    leave = end if rng.random() < 0.85 else start + int(rng.uniform(0.5, 1.0) * span)
    ctype = rng.choices(CANDIDATES, weights=CANDIDATE_W)[0]
    proto = relay_protocol_for_session(rng)
    base_rtt = rng.uniform(*BASE_RTT[ctype])
    base_jitter = rng.uniform(1, 8)
    camera = rng.random()
    if camera < 0.10:
        send_bps = 0                          # muted, camera off
    elif camera < 0.35:
        send_bps = 40_000                     # audio only
    else:
        send_bps = rng.uniform(400_000, 2_200_000)
    recv_bps = min(n_peers - 1, 4) * rng.uniform(300_000, 1_200_000)
    interval = sc.sample_interval_s * NS_PER_SEC

    out = []
    t = join + rng.randrange(5 * NS_PER_SEC, interval)
    prev = join
    first = True
    while t < leave:
        bad = any((sp is None or sp == p) and a <= t < b for sp, a, b in spells)
        if bad and ctype != "relay" and rng.random() < 0.15:
            # ICE restart onto a TURN relay; stays relayed for the rest of the session.
            ctype, base_rtt = "relay", rng.uniform(*BASE_RTT["relay"])
        rtt = base_rtt * rng.lognormvariate(0, 0.15)
        jitter = base_jitter * rng.lognormvariate(0, 0.4)
        if bad:
            rtt += rng.uniform(150, 600)
            jitter += rng.uniform(30, 140)
            loss = rng.uniform(0.03, 0.25)
        elif rng.random() < 0.55:
            loss = 0.0
        else:
            loss = min(rng.expovariate(1 / 0.004), 0.02)
        secs = (t - prev) / NS_PER_SEC
        if first and rng.random() < 0.5:
            sent = received = 0               # connection still ramping up
        else:
            keep = 1 - loss
            sent = int(send_bps / 8 * secs * rng.lognormvariate(0, 0.1) * keep)
            received = int(recv_bps / 8 * secs * rng.lognormvariate(0, 0.1) * keep)
        ev = {
            "kind": "webrtc",
            "meeting_id": meeting_id,
            "peer_id": f"{meeting_id}-p{p + 1}",
        }
        if user is not ABSENT:
            ev["user_id"] = user
        ev.update({
            "bytes_sent": sent,
            "bytes_received": received,
            "rtt_ms": round(rtt, 3),
            "jitter_ms": round(jitter, 3),
            "packet_loss": round(loss, 4),
            "candidate_type": ctype,
        })
        if ctype == "relay":
            r = rng.random()
            if r < 0.92:
                ev["relay_protocol"] = proto
            elif r < 0.97:
                pass                          # stats report lacked the protocol
            else:
                ev["relay_protocol"] = None
        out.append((t, ev))
        first = False
        prev = t
        t += interval + rng.randrange(-10 * NS_PER_SEC, 10 * NS_PER_SEC)
    return out


# Samples forced exactly onto the quality thresholds (rtt, loss, jitter) -> class.
# Thresholds are strict "<", so a value equal to a limit falls to the next class.
THRESHOLD_SAMPLES = [
    (150.0, 0.0, 5.0),       # good   (rtt == 150)
    (100.0, 0.01, 5.0),      # good   (loss == 0.01)
    (100.0, 0.0, 20.0),      # good   (jitter == 20)
    (300.0, 0.0, 5.0),       # fair
    (100.0, 0.03, 5.0),      # fair
    (100.0, 0.0, 50.0),      # fair
    (500.0, 0.0, 5.0),       # poor
    (100.0, 0.08, 5.0),      # poor
    (100.0, 0.0, 100.0),     # poor
    (149.999, 0.0099, 19.999),  # excellent (just under every limit)
    (120.0, 1.0, 300.0),     # poor: total loss (packet_loss == 1)
]


# ---------------------------------------------------------------------------
# Edge cases on timestamps
# ---------------------------------------------------------------------------

def hour_floor(ns):
    return ns - ns % NS_PER_HOUR


def force_edges(rng, http, webrtc):
    """Moves some events onto boundary instants and pins their `ts` style.

    `http` / `webrtc` are lists of [ns, event, style]; a forced style replaces
    None. Events are only moved within their own hour (apart from a handful of
    named instants, which assume the golden scenario's dates), so the shape of
    the data does not change.
    """
    on_hour = [STYLE_MS, TsStyle(False, "Z", 0), TsStyle(False, "Z", 3),
               TsStyle(False, "+02:00", 0), TsStyle(False, "-05:30", 3),
               TsStyle(False, "Z", 9), TsStyle(False, "+09:00", 6)]
    end_of_hour = [STYLE_MS, TsStyle(False, "Z", 3), TsStyle(False, "+09:00", 3),
                   TsStyle(False, "-08:00", 3), TsStyle(False, "+05:45", 3)]

    # Named instants around the UTC day boundaries of the span, with the
    # string each one is written as (ms = integer epoch milliseconds).
    named = [
        ("2026-03-01T00:00", 0, TsStyle(False, "Z", 3)),        # 2026-03-01T00:00:00.000Z
        ("2026-03-02T00:00", 0, STYLE_MS),                      # midnight as epoch ms
        ("2026-03-02T00:00", -1, TsStyle(False, "+02:00", 3)),  # 2026-03-02T01:59:59.999+02:00
        ("2026-03-01T23:30", 0, TsStyle(False, "+02:00", 0)),   # 2026-03-02T01:30:00+02:00
        ("2026-03-02T23:30", 0, TsStyle(False, "+09:00", 0)),   # 2026-03-03T08:30:00+09:00
        ("2026-03-03T00:00", 0, TsStyle(False, "-05:30", 0)),   # 2026-03-02T18:30:00-05:30
        ("2026-03-03T02:15", 0, TsStyle(False, "-08:00", 6)),   # 2026-03-02T18:15:00.000000-08:00
        ("2026-03-04T00:00", -1, TsStyle(False, "Z", 3)),       # 2026-03-03T23:59:59.999Z
    ]

    picks = rng.sample(range(len(http)), 28 + 28 + len(named))
    for i, idx in enumerate(picks[:28]):                # exactly hh:00:00.000
        http[idx][0] = hour_floor(http[idx][0])
        http[idx][2] = on_hour[i % len(on_hour)]
    for i, idx in enumerate(picks[28:56]):              # hh:59:59.999
        rec = http[idx]
        next_hour = hour_floor(rec[0]) + NS_PER_HOUR
        if i % 7 == 6:                                  # hh:59:59.999999999Z
            rec[0], rec[2] = next_hour - 1, TsStyle(False, "Z", 9)
        else:
            rec[0], rec[2] = next_hour - NS_PER_MS, end_of_hour[i % len(end_of_hour)]
    for (text, ms, style), idx in zip(named, picks[56:]):
        http[idx][0] = utc_ns(text) + ms * NS_PER_MS
        http[idx][2] = style

    # webrtc: at every hour boundary H with samples within 5 minutes of it
    # (including a session's first hour), move the sample nearest to H onto H
    # exactly and another peer's sample onto H - 1 ms.
    for h in sorted({hour_floor(rec[0]) for rec in webrtc}):
        near = sorted((abs(rec[0] - h), i) for i, rec in enumerate(webrtc)
                      if abs(rec[0] - h) < 5 * NS_PER_MIN)
        if len(near) < 2:
            continue
        a = webrtc[near[0][1]]
        a[0], a[2] = h, rng.choice(on_hour)
        b = next((webrtc[i] for _, i in near[1:]
                  if webrtc[i][1]["peer_id"] != a[1]["peer_id"]), None)
        if b is not None:
            b[0], b[2] = h - NS_PER_MS, rng.choice(end_of_hour)

    # Samples on the quality thresholds, and ~1% integer-valued rtt_ms (the
    # schema says "number", so 87 is as valid as 87.0).
    picks = rng.sample(range(len(webrtc)), len(THRESHOLD_SAMPLES) + len(webrtc) // 100)
    for (rtt, loss, jitter), idx in zip(THRESHOLD_SAMPLES, picks):
        ev = webrtc[idx][1]
        ev["rtt_ms"], ev["packet_loss"], ev["jitter_ms"] = rtt, loss, jitter
    for idx in picks[len(THRESHOLD_SAMPLES):]:
        ev = webrtc[idx][1]
        ev["rtt_ms"] = int(round(ev["rtt_ms"]))       # JSON integer, e.g. 87


def pick_style(rng, ns):
    """Random style, biased so that events near UTC midnight often carry an
    offset that puts their local date on a different day than their UTC date."""
    style = random_style(rng)
    if style.epoch_ms:
        return style
    hour = (ns // NS_PER_HOUR) % 24
    if hour >= 22 and rng.random() < 0.5:
        return TsStyle(False, rng.choice(["+02:00", "+05:45", "+09:00"]), style.frac_digits)
    if hour < 4 and rng.random() < 0.5:
        return TsStyle(False, rng.choice(["-05:30", "-08:00"]), style.frac_digits)
    return style


# ---------------------------------------------------------------------------
# Minimal JSON Schema check (the subset of draft 2020-12 our schemas use).
# ---------------------------------------------------------------------------

DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def json_type_ok(value, t):
    if t == "null":
        return value is None
    if t == "boolean":
        return isinstance(value, bool)
    if t == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if t == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if t == "string":
        return isinstance(value, str)
    if t == "object":
        return isinstance(value, dict)
    if t == "array":
        return isinstance(value, list)
    raise ValueError(f"unsupported type {t}")


def schema_errors(value, schema, path="$"):
    errs = []
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(json_type_ok(value, t) for t in types):
            return [f"{path}: expected {types}, got {value!r}"]
    if "const" in schema and value != schema["const"]:
        errs.append(f"{path}: must be {schema['const']!r}")
    if "enum" in schema and not any(value == e and type(value) is type(e) for e in schema["enum"]):
        errs.append(f"{path}: {value!r} not in {schema['enum']}")
    if "oneOf" in schema:
        ok = [s for s in schema["oneOf"] if not schema_errors(value, s, path)]
        if len(ok) != 1:
            errs.append(f"{path}: matches {len(ok)} of oneOf")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errs.append(f"{path}: below minimum")
        if "maximum" in schema and value > schema["maximum"]:
            errs.append(f"{path}: above maximum")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", 1 << 30):
            errs.append(f"{path}: bad length")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errs.append(f"{path}: does not match {schema['pattern']}")
        if schema.get("format") == "date-time" and not DATE_TIME.match(value):
            errs.append(f"{path}: not an RFC 3339 date-time")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                errs.append(f"{path}: missing {key}")
        props = schema.get("properties", {})
        for key, sub in value.items():
            if key in props:
                errs.extend(schema_errors(sub, props[key], f"{path}.{key}"))
            elif schema.get("additionalProperties") is False:
                errs.append(f"{path}: unexpected property {key}")
    return errs


def load_schemas():
    schemas = {}
    for kind in ("http", "webrtc"):
        with open(ROOT / "schemas" / f"{kind}.v1.json", encoding="utf-8") as f:
            schemas[kind] = json.load(f)
    return schemas


# ---------------------------------------------------------------------------
# Assembly
# ---------------------------------------------------------------------------

def build(sc):
    """Returns (events in file order, stats dict)."""
    rng = random.Random(sc.seed)
    users, user_weights = make_users(rng)
    # [ns, event, forced TsStyle or None]
    http = [[ns, ev, None] for ns, ev in gen_http(rng, sc, users, user_weights)]
    webrtc = [[ns, ev, None] for ns, ev in gen_webrtc(rng, sc, users)]
    if sc.edge_cases:
        force_edges(rng, http, webrtc)

    records = []   # (file position key, sequence, ts value, event, late?, local date differs?)
    for seq, (ns, ev, forced) in enumerate(sorted(http + webrtc, key=lambda r: r[0])):
        style = forced or pick_style(rng, ns)
        at = written_instant(ns, style)
        late = rng.random() < sc.late_fraction
        if late:
            lo, hi = sc.late_hours
            key = at + rng.randrange(lo * NS_PER_HOUR, hi * NS_PER_HOUR)
        else:
            key = at + rng.randrange(2 * NS_PER_SEC)   # collectors jitter a little
        records.append((key, seq, format_ts(at, style), ev, late, local_date_differs(at, style),
                        at % NS_PER_HOUR == 0, at % NS_PER_HOUR == NS_PER_HOUR - NS_PER_MS))
    records.sort(key=lambda r: (r[0], r[1]))

    events = []
    stats = {"http": 0, "webrtc": 0, "ts_string": 0, "ts_int": 0, "late": 0,
             "local_date_differs": 0, "on_hour": 0, "at_hh_59_59_999": 0}
    for _, _, ts, ev, late, differs, on_hour, end_hour in records:
        out = {"kind": ev["kind"], "ts": ts}
        out.update((k, v) for k, v in ev.items() if k != "kind")
        events.append(out)
        stats[ev["kind"]] += 1
        stats["ts_string" if isinstance(ts, str) else "ts_int"] += 1
        stats["late"] += late
        stats["local_date_differs"] += differs
        stats["on_hour"] += on_hour
        stats["at_hh_59_59_999"] += end_hour
    return events, stats


def write(sc, schemas):
    events, stats = build(sc)
    for n, ev in enumerate(events, 1):
        errs = schema_errors(ev, schemas[ev["kind"]])
        if errs:
            sys.exit(f"{sc.name}: event {n} violates its schema: {errs}\n{ev}")
    path = ROOT / sc.path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for ev in events:
            f.write(json.dumps(ev, separators=(",", ":"), allow_nan=False) + "\n")
    summary = ", ".join(f"{k}={v}" for k, v in stats.items())
    print(f"{sc.path}: {len(events)} events ({summary})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["golden", "sample"],
                        help="write just one of the two files")
    args = parser.parse_args()
    schemas = load_schemas()
    for sc in (GOLDEN, SAMPLE):
        if args.only in (None, sc.name):
            write(sc, schemas)


if __name__ == "__main__":
    main()

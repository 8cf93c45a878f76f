#!/usr/bin/env python3
"""Reference implementation of flowmeter's http and webrtc rollups.

Reads testdata/golden/events.ndjson and writes testdata/golden/expected.json:

  {"http_hourly": [...], "http_daily": [...],
   "webrtc_hourly": [...], "webrtc_daily": [...]}

Each list holds one object per row, sorted by the table's key columns. The
values are computed exactly, straight from the events, without sketches and
without sharing code with the generator or with the Rust implementation:

  * sums and means of floats are exact (fractions.Fraction over the parsed
    doubles) and rounded to the nearest double only once, at the end;
  * percentiles are "sort ascending, take the element at 0-based index
    floor(q * (n - 1))", with q as an exact rational (0.95 = 95/100);
  * distinct counts are exact set sizes (null and absent ids are ignored).

The Rust side uses sketches (quantiles with <= 1% relative error, HLL for
distinct counts) and plain f64 running sums, so its test compares those columns
with a tolerance. See testdata/golden/README.md.

Before writing, the script checks a few invariants (hourly rows add up to the
daily rows and to the event totals, class counts add up, percentiles are
ordered, ...) and exits non-zero if any fails.

Usage:
  python3 scripts/golden_expected.py [EVENTS.ndjson [EXPECTED.json]]
"""

import calendar
import json
import math
import re
import sys
import time
from collections import defaultdict
from datetime import datetime
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_EVENTS = ROOT / "testdata" / "golden" / "events.ndjson"
DEFAULT_EXPECTED = ROOT / "testdata" / "golden" / "expected.json"

MS_PER_HOUR = 3_600_000
MS_PER_DAY = 24 * MS_PER_HOUR

Q50 = Fraction(50, 100)
Q95 = Fraction(95, 100)
Q99 = Fraction(99, 100)

# Quality classes, first match wins: (name, rtt_ms <, packet_loss <, jitter_ms <).
# Compared as IEEE doubles, like the Rust expression `packet_loss < 0.03`: the
# literal 0.03 is the double nearest to 3/100 (slightly below it), so a sample
# with "packet_loss": 0.03 is not "< 0.03" and falls through to the next class.
QUALITY = [
    ("excellent", 150.0, 0.01, 20.0),
    ("good", 300.0, 0.03, 50.0),
    ("fair", 500.0, 0.08, 100.0),
]


# ---------------------------------------------------------------------------
# Timestamps
# ---------------------------------------------------------------------------

RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})"
    r"(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))$"
)


def parse_ts_ms(value):
    """JSON `ts` -> epoch milliseconds (UTC), floored like chrono's timestamp_millis."""
    if isinstance(value, bool):
        raise ValueError(f"ts must not be a boolean: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"negative epoch millis: {value}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"ts must be a string or an integer: {value!r}")
    m = RFC3339.match(value)
    if not m:
        raise ValueError(f"not an RFC 3339 timestamp: {value!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    datetime(year, month, day, hour, minute, second)  # rejects 2026-02-30 and friends
    secs = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    if m.group(9):  # numeric offset: local = UTC + offset, so UTC = local - offset
        offset = int(m.group(10)) * 3600 + int(m.group(11)) * 60
        secs -= offset if m.group(9) == "+" else -offset
    frac_ns = int((m.group(7) or "").ljust(9, "0"))
    return secs * 1000 + frac_ns // 1_000_000


def fmt_hour(ms):
    """Epoch millis -> the UTC hour it falls in, as 'YYYY-MM-DDTHH:00:00Z'."""
    return time.strftime("%Y-%m-%dT%H:00:00Z", time.gmtime(ms // 1000))


def fmt_day(ms):
    """Epoch millis -> its UTC day, as 'YYYY-MM-DD'."""
    return time.strftime("%Y-%m-%d", time.gmtime(ms // 1000))


# ---------------------------------------------------------------------------
# Exact statistics
# ---------------------------------------------------------------------------

def exact_sum(values):
    return sum((Fraction(v) for v in values), Fraction(0))


def exact_mean(values):
    return float(exact_sum(values) / len(values))


def percentile(values, q):
    """Nearest-rank-below: element floor(q * (n - 1)) of the ascending sort."""
    ordered = sorted(values)
    return float(ordered[math.floor(q * (len(ordered) - 1))])


def distinct(values):
    return len({v for v in values if v is not None})


def quality(sample):
    rtt, loss, jitter = sample["rtt_ms"], sample["packet_loss"], sample["jitter_ms"]
    for name, max_rtt, max_loss, max_jitter in QUALITY:
        if rtt < max_rtt and loss < max_loss and jitter < max_jitter:
            return name
    return "poor"


# ---------------------------------------------------------------------------
# Rollups
# ---------------------------------------------------------------------------

def http_measures(events):
    """Count / sum measures shared by the hourly and daily http rows."""
    return {
        "requests": len(events),
        "status_4xx": sum(1 for e in events if 400 <= e["status"] < 500),
        "status_5xx": sum(1 for e in events if 500 <= e["status"] < 600),
        "bytes_in": sum(e["req_bytes"] for e in events),
        "bytes_out": sum(e["resp_bytes"] for e in events),
        "duration_sum_ms": float(exact_sum(e["duration_ms"] for e in events)),
    }


def http_hourly(events):
    groups = defaultdict(list)
    for e in events:
        groups[(e["service"], e["endpoint"], e["method"], e["_hour"])].append(e)
    rows = []
    for (service, endpoint, method, hour), evs in sorted(groups.items()):
        durations = [e["duration_ms"] for e in evs]
        row = {"service": service, "endpoint": endpoint, "method": method,
               "hour": fmt_hour(hour)}
        row.update(http_measures(evs))
        row.update({
            "duration_min_ms": float(min(durations)),
            "duration_max_ms": float(max(durations)),
            "p50_ms": percentile(durations, Q50),
            "p95_ms": percentile(durations, Q95),
            "p99_ms": percentile(durations, Q99),
            "unique_users": distinct(e.get("user_id") for e in evs),
        })
        rows.append(row)
    return rows


def http_daily(events):
    groups = defaultdict(list)
    for e in events:
        groups[(e["_day"], e["service"])].append(e)
    rows = []
    for (day, service), evs in sorted(groups.items()):
        durations = [e["duration_ms"] for e in evs]
        # Bandwidth per hour of this day, over all endpoints and methods.
        per_hour = defaultdict(int)
        for e in evs:
            per_hour[e["_hour"]] += e["req_bytes"] + e["resp_bytes"]
        peak_hour, peak_bytes = None, -1
        for hour in sorted(per_hour):            # strict ">" keeps the earliest on ties
            if per_hour[hour] > peak_bytes:
                peak_hour, peak_bytes = hour, per_hour[hour]
        row = {"day": fmt_day(day), "service": service}
        row.update(http_measures(evs))
        row.update({
            "avg_ms": exact_mean(durations),
            "p95_ms": percentile(durations, Q95),
            "peak_hour": fmt_hour(peak_hour),
            "peak_hour_bytes": peak_bytes,
            "unique_users": distinct(e.get("user_id") for e in evs),
        })
        rows.append(row)
    return rows


def webrtc_measures(samples):
    """Every webrtc measure, for any set of samples (an hour or a day)."""
    sent = sum(s["bytes_sent"] for s in samples)
    received = sum(s["bytes_received"] for s in samples)
    relay = sum(s["bytes_sent"] + s["bytes_received"]
                for s in samples if s["candidate_type"] == "relay")
    total = sent + received
    rtt = [s["rtt_ms"] for s in samples]
    jitter = [s["jitter_ms"] for s in samples]
    loss = [s["packet_loss"] for s in samples]
    classes = defaultdict(int)
    for s in samples:
        classes[quality(s)] += 1
    return {
        "samples": len(samples),
        "bytes_sent": sent,
        "bytes_received": received,
        "relay_bytes": relay,
        "relay_share": float(Fraction(relay, total)) if total else 0.0,
        "rtt_sum_ms": float(exact_sum(rtt)),
        "rtt_avg_ms": exact_mean(rtt),
        "rtt_p95_ms": percentile(rtt, Q95),
        "jitter_sum_ms": float(exact_sum(jitter)),
        "jitter_avg_ms": exact_mean(jitter),
        "jitter_p95_ms": percentile(jitter, Q95),
        "loss_sum": float(exact_sum(loss)),
        "loss_avg": exact_mean(loss),
        "loss_p95": percentile(loss, Q95),
        "peers": distinct(s["peer_id"] for s in samples),
        "quality_excellent": classes["excellent"],
        "quality_good": classes["good"],
        "quality_fair": classes["fair"],
        "quality_poor": classes["poor"],
    }


def webrtc_hourly(samples):
    groups = defaultdict(list)
    for s in samples:
        groups[(s["meeting_id"], s["_hour"])].append(s)
    rows = []
    for (meeting_id, hour), group in sorted(groups.items()):
        row = {"meeting_id": meeting_id, "hour": fmt_hour(hour)}
        row.update(webrtc_measures(group))
        rows.append(row)
    return rows


def webrtc_daily(samples):
    groups = defaultdict(list)
    for s in samples:
        groups[s["_day"]].append(s)
    rows = []
    for day, group in sorted(groups.items()):
        row = {"day": fmt_day(day)}
        row.update(webrtc_measures(group))
        row["meetings"] = distinct(s["meeting_id"] for s in group)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------
# Input, invariants, output
# ---------------------------------------------------------------------------

HTTP_FIELDS = {"kind", "ts", "service", "endpoint", "method", "status",
               "req_bytes", "resp_bytes", "duration_ms", "user_id"}
WEBRTC_FIELDS = {"kind", "ts", "meeting_id", "peer_id", "user_id", "bytes_sent",
                 "bytes_received", "rtt_ms", "jitter_ms", "packet_loss",
                 "candidate_type", "relay_protocol"}


def load(path):
    """Returns (http events, webrtc samples, input stats); adds _ms/_hour/_day."""
    http, webrtc = [], []
    stats = {"ts_string": 0, "ts_int": 0, "late_1h": 0, "local_date_differs": 0}
    high_water = None
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            e = json.loads(line)
            allowed = {"http": HTTP_FIELDS, "webrtc": WEBRTC_FIELDS}.get(e.get("kind"))
            if allowed is None or set(e) - allowed:
                raise ValueError(f"line {lineno}: unexpected kind or fields: {sorted(e)}")
            ms = parse_ts_ms(e["ts"])
            e["_ms"] = ms
            e["_hour"] = ms - ms % MS_PER_HOUR
            e["_day"] = ms - ms % MS_PER_DAY
            if isinstance(e["ts"], str):
                stats["ts_string"] += 1
                if e["ts"][:10] != fmt_day(e["_day"]):
                    stats["local_date_differs"] += 1
            else:
                stats["ts_int"] += 1
            if high_water is not None and ms <= high_water - MS_PER_HOUR:
                stats["late_1h"] += 1        # at least an hour behind the stream
            high_water = ms if high_water is None else max(high_water, ms)
            (http if e["kind"] == "http" else webrtc).append(e)
    return http, webrtc, stats


def check_invariants(http, webrtc, tables):
    failures = []

    def check(cond, message):
        if not cond:
            failures.append(message)

    hh, hd, wh, wd = (tables[k] for k in ("http_hourly", "http_daily", "webrtc_hourly", "webrtc_daily"))
    check(sum(r["requests"] for r in hh) == len(http), "http_hourly requests != http events")
    check(sum(r["requests"] for r in hd) == len(http), "http_daily requests != http events")
    check(sum(r["samples"] for r in wh) == len(webrtc), "webrtc_hourly samples != webrtc events")
    check(sum(r["samples"] for r in wd) == len(webrtc), "webrtc_daily samples != webrtc events")

    # Daily http rows equal the sums of their hourly rows; the peak hour agrees.
    for d in hd:
        hours = [r for r in hh if r["service"] == d["service"] and r["hour"].startswith(d["day"])]
        for col in ("requests", "status_4xx", "status_5xx", "bytes_in", "bytes_out"):
            check(sum(r[col] for r in hours) == d[col], f"http_daily {d['day']} {d['service']}: {col}")
        per_hour = defaultdict(int)
        for r in hours:
            per_hour[r["hour"]] += r["bytes_in"] + r["bytes_out"]
        best = max(per_hour.values())
        check(d["peak_hour_bytes"] == best, f"http_daily {d['day']} {d['service']}: peak bytes")
        check(d["peak_hour"] == min(h for h, b in per_hour.items() if b == best),
              f"http_daily {d['day']} {d['service']}: peak hour")
        check(d["unique_users"] >= max(r["unique_users"] for r in hours),
              f"http_daily {d['day']} {d['service']}: unique_users")
        check(math.isclose(d["avg_ms"] * d["requests"], d["duration_sum_ms"], rel_tol=1e-12),
              f"http_daily {d['day']} {d['service']}: avg_ms")

    for r in hh:
        check(r["duration_min_ms"] <= r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] <= r["duration_max_ms"],
              f"http_hourly {r['service']} {r['endpoint']} {r['method']} {r['hour']}: percentile order")
        check(r["status_4xx"] + r["status_5xx"] <= r["requests"], "http_hourly: status counts")

    # webrtc: classes partition the samples, daily rows sum their hourly rows.
    for r in wh + wd:
        check(sum(r[f"quality_{c}"] for c in ("excellent", "good", "fair", "poor")) == r["samples"],
              f"webrtc row {r.get('meeting_id', '')} {r.get('hour', r.get('day'))}: classes")
        check(r["relay_bytes"] <= r["bytes_sent"] + r["bytes_received"], "webrtc: relay_bytes")
        check(0.0 <= r["relay_share"] <= 1.0, "webrtc: relay_share")
        check(0.0 <= r["loss_p95"] <= 1.0, "webrtc: loss_p95")
    for d in wd:
        hours = [r for r in wh if r["hour"].startswith(d["day"])]
        for col in ("samples", "bytes_sent", "bytes_received", "relay_bytes",
                    "quality_excellent", "quality_good", "quality_fair", "quality_poor"):
            check(sum(r[col] for r in hours) == d[col], f"webrtc_daily {d['day']}: {col}")
        check(d["meetings"] == len({r["meeting_id"] for r in hours}), f"webrtc_daily {d['day']}: meetings")
        check(d["peers"] >= max(r["peers"] for r in hours), f"webrtc_daily {d['day']}: peers")
    return failures


def write_expected(path, tables):
    """One row per line: valid JSON that still diffs nicely."""
    parts = []
    for name, rows in tables.items():
        body = ",\n".join("    " + json.dumps(r, allow_nan=False) for r in rows)
        parts.append(f'  "{name}": [\n{body}\n  ]')
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("{\n" + ",\n".join(parts) + "\n}\n")


def main():
    events_path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_EVENTS
    expected_path = Path(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_EXPECTED

    http, webrtc, stats = load(events_path)
    tables = {
        "http_hourly": http_hourly(http),
        "http_daily": http_daily(http),
        "webrtc_hourly": webrtc_hourly(webrtc),
        "webrtc_daily": webrtc_daily(webrtc),
    }
    failures = check_invariants(http, webrtc, tables)
    if failures:
        for message in failures:
            print(f"invariant failed: {message}", file=sys.stderr)
        sys.exit(1)

    write_expected(expected_path, tables)

    # Where float index arithmetic (int(0.95 * (n - 1)) in f64) would pick a
    # different element than the exact rational: worth knowing on the Rust side.
    sizes = {r.get("requests", r.get("samples")) for rows in tables.values() for r in rows}
    risky = sorted(n for n in sizes for q in (Q50, Q95, Q99)
                   if math.floor(float(q) * (n - 1)) != math.floor(q * (n - 1)))

    all_ms = [e["_ms"] for e in http + webrtc]
    print(f"read {events_path}: "
          f"{len(http)} http, {len(webrtc)} webrtc events; "
          f"ts {stats['ts_string']} strings / {stats['ts_int']} epoch ms; "
          f"{stats['late_1h']} arrive >= 1 h behind the stream; "
          f"{stats['local_date_differs']} have a local date != UTC date")
    print(f"hours {fmt_hour(min(all_ms))} .. {fmt_hour(max(all_ms))}")
    for name, rows in tables.items():
        print(f"  {name}: {len(rows)} rows")
    print(f"  group sizes where f64 floor(q*(n-1)) differs from exact: {risky or 'none'}")
    print(f"invariants ok; wrote {expected_path}")


if __name__ == "__main__":
    main()

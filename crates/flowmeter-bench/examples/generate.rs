//! The load generator as a library: N seeded events as NDJSON on stdout,
//! their exact totals on stderr. No servers; pipe the events wherever
//! JSON events go, e.g. the ingest API:
//!
//! ```sh
//! cargo run -p flowmeter-bench --example generate -- 1000 7 \
//!   | curl -sS -H 'Content-Type: application/x-ndjson' --data-binary @- http://127.0.0.1:8080/v1/events
//! ```
//!
//! Arguments: events (default 1,000) and seed (default 42); the same seed
//! gives the same events. They are stamped one millisecond apart, ending now.

use std::io::{BufWriter, Write};

use flowmeter_bench::loadgen::{GenConfig, Generator, KindMix};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let events: i64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1_000);
    let seed: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(42);
    let mut generator = Generator::new(GenConfig {
        seed,
        kind: KindMix::Mixed,
        ..GenConfig::default()
    });
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let mut out = BufWriter::new(std::io::stdout().lock());
    for i in 0..events {
        let event = generator.next_event(now_ms - events + i);
        writeln!(out, "{event}")?;
    }
    out.flush()?;
    let t = generator.truth;
    eprintln!(
        "{} events: {} http requests ({} bytes in, {} out), {} webrtc samples ({} bytes sent, {} received)",
        t.events(),
        t.http_requests,
        t.http_bytes_in,
        t.http_bytes_out,
        t.webrtc_samples,
        t.webrtc_bytes_sent,
        t.webrtc_bytes_received
    );
    Ok(())
}

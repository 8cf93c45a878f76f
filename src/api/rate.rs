//! Ingest rate limits (`[server.ingest_rate_limit]`): a token bucket per
//! token, or per client address when auth is off, on `POST /v1/events`.
//! Each request costs one; a request past its bucket gets 429 with
//! `Retry-After` and writes nothing.
//!
//! Token buckets are keyed by the configured token names, so there are as
//! many as tokens. Client addresses (IPv4 whole, IPv6 by /64, so one host
//! cannot mint fresh buckets from its own prefix) are kept in two
//! generations of at most `max_clients / 2` each: a lookup moves a client
//! into the current generation, and when that is full or older than
//! `client_idle_secs` the previous one is dropped. Memory stays within
//! `max_clients` entries whatever addresses arrive; a client forgotten that
//! way starts again with a full bucket.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::access::Caller;
use super::{ApiError, AppState};
use crate::auth::ClientKey;
use crate::config::IngestRateLimitConfig;
use crate::telemetry::metrics;

/// A token bucket: `tokens` left as of `at`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            at: now,
        }
    }

    /// Takes one token, or says in how many whole seconds one will be there.
    fn take(&mut self, now: Instant, rate: f64, burst: f64) -> Result<(), u64> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - self.tokens) / rate).ceil().max(1.0) as u64)
        }
    }
}

/// Client buckets in two generations (see the module doc).
#[derive(Debug)]
struct Clients {
    current: HashMap<ClientKey, Bucket>,
    previous: HashMap<ClientKey, Bucket>,
    since: Instant,
}

/// The ingest limiter of one server.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    generation_max: usize,
    idle: Duration,
    tokens: Mutex<HashMap<String, Bucket>>,
    clients: Mutex<Clients>,
}

impl RateLimiter {
    pub fn new(cfg: &IngestRateLimitConfig) -> Self {
        Self {
            rate: cfg.requests_per_sec.max(0.0),
            burst: f64::from(cfg.burst_requests.max(1)),
            generation_max: (cfg.max_clients / 2).max(1),
            idle: Duration::from_secs(cfg.client_idle_secs),
            tokens: Mutex::default(),
            clients: Mutex::new(Clients {
                current: HashMap::new(),
                previous: HashMap::new(),
                since: Instant::now(),
            }),
        }
    }

    /// Whether any limit applies (`requests_per_sec > 0`).
    pub fn enabled(&self) -> bool {
        self.rate > 0.0
    }

    /// One request of token `name`: Ok, or the seconds to wait.
    pub fn check_token(&self, name: &str, now: Instant) -> Result<(), u64> {
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = tokens.get_mut(name) {
            return b.take(now, self.rate, self.burst);
        }
        let mut b = Bucket::full(self.burst, now);
        let res = b.take(now, self.rate, self.burst);
        tokens.insert(name.to_string(), b);
        res
    }

    /// One request from client address `ip`: Ok, or the seconds to wait.
    pub fn check_client(&self, ip: IpAddr, now: Instant) -> Result<(), u64> {
        let key = ClientKey::from(ip);
        let mut guard = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let c = &mut *guard;
        let known = c.current.contains_key(&key);
        if (!known && c.current.len() >= self.generation_max)
            || now.saturating_duration_since(c.since) >= self.idle
        {
            c.previous = std::mem::take(&mut c.current);
            c.since = now;
        }
        let bucket = match c.current.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(v) => v.insert(
                c.previous
                    .remove(&key)
                    .unwrap_or_else(|| Bucket::full(self.burst, now)),
            ),
        };
        bucket.take(now, self.rate, self.burst)
    }

    /// Client addresses held (at most `max_clients`).
    pub fn tracked_clients(&self) -> usize {
        let c = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        c.current.len() + c.previous.len()
    }
}

/// Middleware of `POST /v1/events`, inside the access check (which names
/// the token).
pub async fn ingest(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let limiter = &st.ingest_limit;
    let now = Instant::now();
    let (who, res) = if st.auth.enabled() {
        let name = req
            .extensions()
            .get::<Caller>()
            .map_or("anonymous", |c| c.0.as_str());
        (format!("token {name}"), limiter.check_token(name, now))
    } else {
        // Without a peer address (a router driven without a socket) every
        // request shares one bucket.
        let ip = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
        (
            "this client address".to_string(),
            limiter.check_client(ip, now),
        )
    };
    match res {
        Ok(()) => next.run(req).await,
        Err(retry_after) => {
            metrics::INGEST_RATE_LIMITED.inc();
            crate::telemetry::families::ingest_request(
                crate::telemetry::families::IngestOutcome::RateLimited,
                now.elapsed().as_secs_f64(),
            );
            ApiError::RateLimited {
                reason: format!(
                    "{who} is past its ingest rate limit of {} requests/s (burst {}; server.ingest_rate_limit); nothing was written, retry after {retry_after} s",
                    limiter.rate, limiter.burst
                ),
                retry_after,
            }
            .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rate: f64, burst: u32, max_clients: usize, idle_secs: u64) -> RateLimiter {
        RateLimiter::new(&IngestRateLimitConfig {
            requests_per_sec: rate,
            burst_requests: burst,
            max_clients,
            client_idle_secs: idle_secs,
        })
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let l = limiter(2.0, 3, 10, 60);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.check_token("a", t0), Ok(()));
        }
        assert_eq!(l.check_token("a", t0), Err(1));
        // another token has its own bucket
        assert_eq!(l.check_token("b", t0), Ok(()));
        // half a second refills one request at 2/s
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(l.check_token("a", t1), Ok(()));
        assert_eq!(l.check_token("a", t1), Err(1));
        // never more than the burst, however long the pause
        let t2 = t1 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(l.check_token("a", t2), Ok(()));
        }
        assert!(l.check_token("a", t2).is_err());
    }

    #[test]
    fn slow_rates_ask_for_longer_waits() {
        let l = limiter(0.1, 1, 10, 60);
        let t0 = Instant::now();
        assert_eq!(l.check_token("a", t0), Ok(()));
        assert_eq!(l.check_token("a", t0), Err(10));
    }

    #[test]
    fn clients_by_address_and_ipv6_prefix() {
        let l = limiter(1.0, 1, 100, 60);
        let t0 = Instant::now();
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(l.check_client(ip("10.0.0.1"), t0), Ok(()));
        assert!(l.check_client(ip("10.0.0.1"), t0).is_err());
        assert!(
            l.check_client(ip("::ffff:10.0.0.1"), t0).is_err(),
            "v4-mapped is the v4 client"
        );
        assert_eq!(l.check_client(ip("10.0.0.2"), t0), Ok(()));
        assert_eq!(l.check_client(ip("2001:db8:1:2::1"), t0), Ok(()));
        assert!(
            l.check_client(ip("2001:db8:1:2:ffff::9"), t0).is_err(),
            "same /64"
        );
        assert_eq!(l.check_client(ip("2001:db8:1:3::1"), t0), Ok(()));
    }

    #[test]
    fn the_client_table_stays_within_max_clients() {
        let l = limiter(1.0, 1, 1_000, 3600);
        let t0 = Instant::now();
        for i in 0..100_000u32 {
            let _ = l.check_client(IpAddr::V4(Ipv4Addr::from(i)), t0);
            assert!(l.tracked_clients() <= 1_000);
        }
        // a client seen recently stays limited through the churn of others
        let me = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(l.check_client(me, t0), Ok(()));
        for i in 0..400u32 {
            let _ = l.check_client(IpAddr::V4(Ipv4Addr::from(i)), t0);
        }
        assert!(l.check_client(me, t0).is_err());
    }

    #[test]
    fn idle_clients_are_forgotten() {
        let l = limiter(1.0, 1, 1_000, 10);
        let t0 = Instant::now();
        for i in 0..100u32 {
            let _ = l.check_client(IpAddr::V4(Ipv4Addr::from(i)), t0);
        }
        assert_eq!(l.tracked_clients(), 100);
        let later = t0 + Duration::from_secs(11);
        let _ = l.check_client(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), later);
        let _ = l.check_client(
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            later + Duration::from_secs(11),
        );
        assert_eq!(l.tracked_clients(), 1);
    }
}

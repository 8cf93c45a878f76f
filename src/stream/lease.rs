//! Shard leases: one live owner per (group, shard).
//!
//! A lease is a Redis key holding the owner's worker id with a TTL. Owners
//! renew it every third of its lifetime; a dead worker's leases expire after
//! `lease_ms` and the survivors take its shards. Workers also heartbeat into a
//! sorted set so each can compute its fair share (ceil(shards / live workers))
//! and hand surplus shards back when a new worker joins.

use std::collections::BTreeSet;

use super::{Keys, Redis, Shard, StreamError};

const RENEW_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"#;

const RELEASE_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// Takes a free lease or renews our own (singleton leases: one holder of a
/// role among all workers).
const HOLD_SCRIPT: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not cur then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0
"#;

/// Takes or renews the singleton lease `key` for `owner` for `ms`; whether we hold it.
/// An error counts as not holding it.
pub async fn hold_singleton(redis: &Redis, key: &str, owner: &str, ms: u64) -> bool {
    let mut conn = redis.conn.clone();
    let r: Result<i64, _> = redis
        .run(
            redis::Script::new(HOLD_SCRIPT)
                .key(key)
                .arg(owner)
                .arg(ms)
                .invoke_async(&mut conn),
        )
        .await;
    matches!(r, Ok(1))
}

/// Releases a lease if `owner` still holds it.
pub async fn release_singleton(redis: &Redis, key: &str, owner: &str) -> Result<(), StreamError> {
    let mut conn = redis.conn.clone();
    redis
        .run(
            redis::Script::new(RELEASE_SCRIPT)
                .key(key)
                .arg(owner)
                .invoke_async::<i64>(&mut conn),
        )
        .await
        .map(|_| ())
}

/// Heartbeat with the server's clock, so worker clocks need not agree.
const HEARTBEAT_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], ARGV[2] * 3)
return redis.call('ZCARD', KEYS[1])
"#;

/// What a lease tick tells the runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// We now own this shard: load its checkpoint and start reading its pending list.
    Acquired(Shard),
    /// We no longer own it (renewal failed): stop reading, drop its uncommitted work.
    Lost(Shard),
    /// We own more than our fair share: flush, then call `release`.
    Surplus(Shard),
}

/// Acquires, renews and releases the leases of one group for one worker.
pub struct LeaseManager {
    redis: Redis,
    keys: Keys,
    group: String,
    worker: String,
    lease_ms: u64,
    shards: Vec<Shard>,
    owned: BTreeSet<Shard>,
    renew: redis::Script,
    release: redis::Script,
    heartbeat: redis::Script,
}

impl LeaseManager {
    pub fn new(
        redis: Redis,
        keys: Keys,
        group: String,
        worker: String,
        lease_ms: u64,
        shards: Vec<Shard>,
    ) -> Self {
        Self {
            redis,
            keys,
            group,
            worker,
            lease_ms,
            shards,
            owned: BTreeSet::new(),
            renew: redis::Script::new(RENEW_SCRIPT),
            release: redis::Script::new(RELEASE_SCRIPT),
            heartbeat: redis::Script::new(HEARTBEAT_SCRIPT),
        }
    }

    pub fn worker(&self) -> &str {
        &self.worker
    }

    /// Renews the leases we hold every third of their lifetime, forever:
    /// run it alongside long work (a flush waiting on MySQL) so the leases do
    /// not lapse meanwhile. It changes nothing else; a lease found lost is
    /// noticed by the next [`LeaseManager::tick`].
    pub async fn keepalive(&self) {
        let every = std::time::Duration::from_millis((self.lease_ms / 3).max(50));
        loop {
            tokio::time::sleep(every).await;
            for shard in &self.owned {
                let mut conn = self.redis.conn.clone();
                let mut inv = self.renew.prepare_invoke();
                inv.key(self.keys.lease(&self.group, shard))
                    .arg(&self.worker)
                    .arg(self.lease_ms);
                let _: Result<i64, _> = self.redis.run(inv.invoke_async(&mut conn)).await;
            }
        }
    }

    pub fn owned(&self) -> &BTreeSet<Shard> {
        &self.owned
    }

    /// The shards to share from now on (the shard layout changed). Owned
    /// shards no longer among them are offered back as surplus by the next
    /// [`LeaseManager::tick`].
    pub fn set_shards(&mut self, shards: Vec<Shard>) {
        self.shards = shards;
    }

    /// Heartbeat, renew, and acquire or surrender shards toward the fair share.
    pub async fn tick(&mut self) -> Result<Vec<LeaseOutcome>, StreamError> {
        let mut out = Vec::new();
        let mut conn = self.redis.conn.clone();
        let live: i64 = self
            .redis
            .run(
                self.heartbeat
                    .key(self.keys.workers(&self.group))
                    .arg(&self.worker)
                    .arg(self.lease_ms)
                    .invoke_async(&mut conn),
            )
            .await?;
        for shard in self.owned.clone() {
            let ok: i64 = self
                .redis
                .run(
                    self.renew
                        .key(self.keys.lease(&self.group, &shard))
                        .arg(&self.worker)
                        .arg(self.lease_ms)
                        .invoke_async(&mut conn),
                )
                .await?;
            if ok != 1 {
                self.owned.remove(&shard);
                out.push(LeaseOutcome::Lost(shard));
            }
        }
        // shards of a retired set: handed back, and not counted below
        let gone: Vec<Shard> = self
            .owned
            .iter()
            .filter(|s| !self.shards.contains(s))
            .cloned()
            .collect();
        out.extend(gone.iter().cloned().map(LeaseOutcome::Surplus));
        let kept = self.owned.len() - gone.len();
        let live = usize::try_from(live.max(1)).unwrap_or(1);
        let fair = self.shards.len().div_ceil(live);
        if kept < fair {
            // Start at a worker-specific offset so workers do not all race for shard 0.
            let n = self.shards.len().max(1);
            let start = (xxhash_rust::xxh3::xxh3_64(self.worker.as_bytes()) % n as u64) as usize;
            let mut kept = kept;
            for i in 0..n {
                if kept >= fair {
                    break;
                }
                let shard = &self.shards[(start + i) % n];
                if self.owned.contains(shard) {
                    continue;
                }
                let got: Option<String> = self
                    .redis
                    .run(
                        redis::cmd("SET")
                            .arg(self.keys.lease(&self.group, shard))
                            .arg(&self.worker)
                            .arg("NX")
                            .arg("PX")
                            .arg(self.lease_ms)
                            .query_async(&mut conn),
                    )
                    .await?;
                if got.is_some() {
                    self.owned.insert(shard.clone());
                    kept += 1;
                    out.push(LeaseOutcome::Acquired(shard.clone()));
                }
            }
        } else if kept > fair {
            let surplus = kept - fair;
            for shard in self
                .owned
                .iter()
                .rev()
                .filter(|s| !gone.contains(s))
                .take(surplus)
            {
                out.push(LeaseOutcome::Surplus(shard.clone()));
            }
        }
        Ok(out)
    }

    /// Gives a shard back (after its work is flushed and acked).
    pub async fn release(&mut self, shard: &Shard) -> Result<(), StreamError> {
        self.owned.remove(shard);
        let mut conn = self.redis.conn.clone();
        let _: i64 = self
            .redis
            .run(
                self.release
                    .key(self.keys.lease(&self.group, shard))
                    .arg(&self.worker)
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok(())
    }

    /// Releases every lease and leaves the worker set (graceful shutdown).
    pub async fn release_all(&mut self) -> Result<(), StreamError> {
        for shard in self.owned.clone() {
            self.release(&shard).await?;
        }
        let mut conn = self.redis.conn.clone();
        let _: i64 = self
            .redis
            .run(
                redis::cmd("ZREM")
                    .arg(self.keys.workers(&self.group))
                    .arg(&self.worker)
                    .query_async(&mut conn),
            )
            .await?;
        Ok(())
    }

    /// Current owner of a shard's lease, if any.
    pub async fn owner(
        redis: &Redis,
        keys: &Keys,
        group: &str,
        shard: &Shard,
    ) -> Result<Option<String>, StreamError> {
        let mut conn = redis.conn.clone();
        redis
            .run(
                redis::cmd("GET")
                    .arg(keys.lease(group, shard))
                    .query_async(&mut conn),
            )
            .await
    }
}

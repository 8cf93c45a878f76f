//! Replication: `WAIT` for a write's replicas (`ingest.wait_replicas`), and
//! how many replicas each master has now (`INFO replication`).
//!
//! `WAIT n t` blocks the calling connection until `n` replicas have
//! acknowledged every write that connection made before it, or `t` ms pass,
//! and answers how many did. The producer shares one multiplexed
//! connection per node, so the WAIT after a request's write covers that
//! write (and any other request's before it).
//!
//! On a Redis Cluster, redis-rs sends a bare `WAIT` to every master and
//! answers the minimum: wrong (the other masters' connections did not take
//! this write) and as slow as the slowest master. Here it goes to the
//! master of each written stream's slot instead, concurrently.
//!
//! What a confirmed WAIT does not promise: that the write survives a
//! failover. Redis may still promote a replica that had not acknowledged
//! it, and after a failover moved a slot, a WAIT reaching the new master
//! asks about that connection's writes, not the lost one (docs/guarantees.md,
//! "Redis Cluster").

use std::time::Duration;

use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};

use super::{Conn, Redis, StreamError};

/// How many replicas must confirm a write, and how long to wait for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitReplicas {
    pub replicas: u32,
    pub timeout: Duration,
}

/// `WAIT` for the writes just made to `streams`: on one server once, on a
/// cluster once per stream at the master of its slot (concurrently). The
/// fewest replicas any of them confirmed within `wait.timeout`.
pub(crate) async fn confirmed(
    redis: &Redis,
    streams: &[String],
    wait: WaitReplicas,
) -> Result<u32, StreamError> {
    let mut cmd = redis::cmd("WAIT");
    cmd.arg(wait.replicas)
        .arg(u64::try_from(wait.timeout.as_millis()).unwrap_or(u64::MAX));
    match &redis.conn {
        Conn::Single(_) => {
            let mut conn = redis.conn.clone();
            redis.run(cmd.query_async(&mut conn)).await
        }
        Conn::Cluster(conn) => {
            let waits = streams.iter().map(|stream| {
                let mut conn = conn.clone();
                let cmd = cmd.clone();
                let at = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                    Route::with_key(stream, SlotAddr::Master),
                ));
                async move {
                    let v = redis.run(conn.route_command(cmd, at)).await?;
                    redis::from_redis_value::<u32>(v)
                        .map_err(|e| StreamError::Protocol(format!("WAIT answered {e}")))
                }
            });
            let mut fewest = wait.replicas;
            for n in futures::future::join_all(waits).await {
                fewest = fewest.min(n?);
            }
            Ok(fewest)
        }
    }
}

/// One master and the replicas connected to it now (`INFO replication`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterReplicas {
    /// The node's address as the cluster client names it; empty on one server.
    pub node: String,
    /// `connected_slaves`.
    pub replicas: u32,
}

/// The masters and their connected replicas: the one server's, or every
/// master's of a cluster (replicas are left out).
pub async fn masters(redis: &Redis) -> Result<Vec<MasterReplicas>, StreamError> {
    let mut conn = redis.conn.clone();
    let info: redis::Value = redis
        .run(redis::cmd("INFO").arg("replication").query_async(&mut conn))
        .await?;
    let text = |v: &redis::Value| redis::from_redis_value_ref::<String>(v).ok();
    let nodes: Vec<(String, String)> = match &info {
        redis::Value::Map(nodes) => nodes
            .iter()
            .filter_map(|(k, v)| Some((text(k).unwrap_or_default(), text(v)?)))
            .collect(),
        other => vec![(
            String::new(),
            text(other).ok_or_else(|| {
                StreamError::Protocol(format!("INFO replication reply {other:?}"))
            })?,
        )],
    };
    Ok(nodes
        .into_iter()
        .filter_map(|(node, info)| parse(&info).map(|replicas| MasterReplicas { node, replicas }))
        .collect())
}

/// `connected_slaves` of an `INFO replication` text, when the node is a master.
fn parse(info: &str) -> Option<u32> {
    let field = |name: &str| super::resp::info_field(info, name);
    if field("role") != Some("master") {
        return None;
    }
    Some(
        field("connected_slaves")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_masters_connected_replicas() {
        let master = "# Replication\r\nrole:master\r\nconnected_slaves:2\r\nslave0:ip=127.0.0.1,port=7001,state=online,offset=10,lag=0\r\n";
        assert_eq!(parse(master), Some(2));
        assert_eq!(parse("role:master\r\n"), Some(0), "no count: none");
        assert_eq!(
            parse("role:slave\r\nmaster_host:127.0.0.1\r\nconnected_slaves:0\r\n"),
            None,
            "a replica is not a master"
        );
    }
}

//! The Redis nodes behind a bench's settings: plain connections to one node,
//! a cluster's live nodes (`CLUSTER NODES`), the process ids of those running
//! on this machine (for their CPU time), and [`LocalCluster`], a throwaway
//! cluster the cluster bench starts.
//!
//! The integration tests start their own cluster
//! (`tests/integration/common/servers.rs`, `RedisCluster`), synchronously
//! and with test assertions; this one is async and returns errors.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use super::BenchError;
use flowmeter::config::Settings;

/// A plain connection to the one Redis node at `url`.
pub(crate) async fn plain_redis(
    url: &str,
) -> Result<redis::aio::MultiplexedConnection, BenchError> {
    redis::Client::open(url)
        .map_err(|e| BenchError::Setup(format!("{url}: {e}")))?
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| BenchError::Run(format!("Redis {url}: {e}")))
}

/// One node of a cluster, as `CLUSTER NODES` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Node {
    /// `redis://host:port`.
    pub url: String,
    pub master: bool,
}

/// `redis.url`, or every live node of the cluster (`CLUSTER NODES` of the
/// first seed that answers).
pub(crate) async fn nodes(settings: &Settings) -> Result<Vec<Node>, BenchError> {
    let r = &settings.redis;
    if !r.cluster {
        return Ok(vec![Node {
            url: r.url.clone(),
            master: true,
        }]);
    }
    let mut last = None;
    for seed in std::iter::once(&r.url).chain(&r.cluster_nodes) {
        let listed = match plain_redis(seed).await {
            Ok(mut c) => redis::cmd("CLUSTER")
                .arg("NODES")
                .query_async::<String>(&mut c)
                .await
                .map_err(|e| BenchError::Run(format!("CLUSTER NODES: {e}"))),
            Err(e) => Err(e),
        };
        match listed {
            Ok(text) => return Ok(live_nodes(&text)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| BenchError::Setup("no cluster node to ask".into())))
}

/// The URLs of the masters: `redis.url`, or the cluster's.
pub(crate) async fn masters(settings: &Settings) -> Result<Vec<String>, BenchError> {
    Ok(nodes(settings)
        .await?
        .into_iter()
        .filter(|n| n.master)
        .map(|n| n.url)
        .collect())
}

/// The live nodes of a `CLUSTER NODES` text.
fn live_nodes(text: &str) -> Vec<Node> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let addr = f.nth(1)?;
            let flags: Vec<&str> = f.next()?.split(',').collect();
            let down = flags
                .iter()
                .any(|x| matches!(*x, "fail" | "noaddr" | "handshake"));
            let host_port = addr.split('@').next()?;
            (!down).then(|| Node {
                url: format!("redis://{host_port}"),
                master: flags.contains(&"master"),
            })
        })
        .collect()
}

/// Process ids of the Redis servers behind `settings` that run on this
/// machine (`INFO server`'s `process_id` of each node on a loopback
/// address); others are left out.
pub(crate) async fn local_pids(settings: &Settings) -> Vec<u32> {
    let mut pids = Vec::new();
    for node in nodes(settings).await.unwrap_or_default() {
        if !is_loopback(&node.url) {
            continue;
        }
        let Ok(mut c) = plain_redis(&node.url).await else {
            continue;
        };
        let info: Option<String> = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut c)
            .await
            .ok();
        pids.extend(info.as_deref().and_then(|i| {
            i.lines()
                .find_map(|l| l.trim().strip_prefix("process_id:"))
                .and_then(|p| p.parse::<u32>().ok())
        }));
    }
    pids
}

/// Whether `url`'s host is this machine.
pub(crate) fn is_loopback(url: &str) -> bool {
    url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .is_some_and(|h| matches!(h.as_str(), "127.0.0.1" | "localhost" | "::1" | "[::1]"))
}

/// A Redis Cluster started for the bench on free ports of 127.0.0.1:
/// `masters` masters with one replica each, persisting as the Redis it was
/// modelled on (`appendonly`, `appendfsync`, `save` copied from it), so the
/// single server and the cluster are measured alike. Dropping it kills the
/// nodes and removes their files.
pub struct LocalCluster {
    ports: Vec<u16>,
    _nodes: Vec<Child>,
    dir: PathBuf,
}

/// How long the nodes may take to come up, and the cluster to form.
const CLUSTER_START: Duration = Duration::from_secs(60);

impl LocalCluster {
    pub async fn start(masters: usize, like: &str) -> Result<Self, BenchError> {
        if masters < 3 {
            return Err(BenchError::Setup(
                "a Redis Cluster needs at least 3 masters".into(),
            ));
        }
        let persistence = persistence_of(like).await?;
        let dir = std::env::temp_dir().join(format!(
            "flowmeter-bench-cluster-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let mut ports = Vec::new();
        while ports.len() < 2 * masters {
            let p = cluster_port()?;
            if !ports.contains(&p) {
                ports.push(p);
            }
        }
        let mut nodes = Vec::new();
        for p in &ports {
            let node_dir = dir.join(p.to_string());
            std::fs::create_dir_all(&node_dir)
                .map_err(|e| BenchError::Setup(format!("{}: {e}", node_dir.display())))?;
            let child = Command::new("redis-server")
                .args(["--port", &p.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"])
                .arg("--cluster-config-file")
                .arg(node_dir.join("nodes.conf"))
                .arg("--dir")
                .arg(&node_dir)
                .args(&persistence)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| {
                    BenchError::Setup(format!(
                        "cannot start redis-server (apt-get install redis-server): {e}"
                    ))
                })?;
            nodes.push(child);
        }
        let cluster = Self {
            ports,
            _nodes: nodes,
            dir,
        };
        cluster.form().await?;
        Ok(cluster)
    }

    /// `redis-cli --cluster create` over the nodes, then waits until every
    /// node says `cluster_state:ok` and every replica has synced.
    async fn form(&self) -> Result<(), BenchError> {
        let deadline = Instant::now() + CLUSTER_START;
        let late = |what: &str| BenchError::Setup(format!("{what} within {CLUSTER_START:?}"));
        for p in &self.ports {
            while tokio::net::TcpStream::connect(("127.0.0.1", *p))
                .await
                .is_err()
            {
                if Instant::now() > deadline {
                    return Err(late(&format!("redis-server on port {p} did not come up")));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(self.ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .await
            .map_err(|e| {
                BenchError::Setup(format!(
                    "cannot run redis-cli (apt-get install redis-tools): {e}"
                ))
            })?;
        if !created.status.success() {
            return Err(BenchError::Setup(format!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&created.stdout)
            )));
        }
        for url in self.urls() {
            let mut c = plain_redis(&url).await?;
            loop {
                let state: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut c)
                    .await
                    .unwrap_or_default();
                let repl: String = redis::cmd("INFO")
                    .arg("replication")
                    .query_async(&mut c)
                    .await
                    .unwrap_or_default();
                let synced = repl.contains("role:master") || repl.contains("master_link_status:up");
                if state.contains("cluster_state:ok") && synced {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(late(&format!("{url} did not join the cluster and sync")));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// `redis://` URLs of every node.
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        // the nodes are killed on drop (kill_on_drop), then their files go
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A free port whose cluster bus port (+ 10,000) is free too.
fn cluster_port() -> Result<u16, BenchError> {
    for _ in 0..100 {
        let p = super::free_port()?;
        let bus_free =
            p <= 55_535 && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok();
        if bus_free {
            return Ok(p);
        }
    }
    Err(BenchError::Setup(
        "no free port pair (P, P + 10000) for a cluster node".into(),
    ))
}

/// `redis-server` options giving the persistence of the Redis at `url`.
async fn persistence_of(url: &str) -> Result<Vec<String>, BenchError> {
    let mut c = plain_redis(url).await?;
    let mut args = Vec::new();
    for name in ["appendonly", "appendfsync", "save"] {
        let pair: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg(name)
            .query_async(&mut c)
            .await
            .map_err(|e| BenchError::Run(format!("CONFIG GET {name} on {url}: {e}")))?;
        args.push(format!("--{name}"));
        args.push(pair.get(1).cloned().unwrap_or_default());
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_live_nodes_of_cluster_nodes() {
        let text = "\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7001@17001 slave a1 0 0 1 connected
c3 127.0.0.1:7002@17002 master - 0 0 2 connected 5461-10922
d4 127.0.0.1:7003@17003 master,fail - 0 0 3 connected
";
        let nodes = live_nodes(text);
        let urls: Vec<(&str, bool)> = nodes.iter().map(|n| (n.url.as_str(), n.master)).collect();
        assert_eq!(
            urls,
            vec![
                ("redis://127.0.0.1:7000", true),
                ("redis://127.0.0.1:7001", false),
                ("redis://127.0.0.1:7002", true)
            ]
        );
    }

    #[test]
    fn loopback_hosts() {
        assert!(is_loopback("redis://127.0.0.1:6379"));
        assert!(is_loopback("redis://localhost:7000"));
        assert!(!is_loopback("redis://redis.example:6379"));
        assert!(!is_loopback("not a url"));
    }
}

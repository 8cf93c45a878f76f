//! The Kafka bridge against a real broker (a private tansu per test, memory
//! storage): every event arrives in its kind's topic with its key and
//! headers, in per-key order; a broker killed with SIGKILL mid-run makes the
//! group stop acknowledging (its lag grows in Redis) and everything arrives
//! at least once after the restart; a message the producer refuses for good
//! goes to the dead-letter stream while the rest flow on.

use crate::common;

#[cfg(feature = "kafka")]
mod with_kafka {
    use std::collections::{BTreeMap, HashMap, HashSet};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use flowmeter::stream::StreamId;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    use serde_json::{json, Value};

    use super::common::servers::PrivateKafka;
    use super::common::*;

    const T0: i64 = 1_772_359_200_000;
    const GROUP: &str = "kafka";
    const TOPICS: [&str; 2] = ["flowmeter.http", "flowmeter.webrtc"];
    const PARTITIONS: i32 = 3;

    /// A test world with the bridge enabled (`edit` may change its file).
    fn setup(
        test: &str,
        kafka: &PrivateKafka,
        edit: impl FnOnce(String) -> String,
    ) -> (TestEnv, tempfile::TempDir) {
        let mut env = TestEnv::new(test);
        let dir = tempfile::tempdir().expect("tempdir");
        // only processors/ changes (schemas/ and migrations/ stay the repo's)
        copy_dir(&repo().join("processors"), &dir.path().join("processors"));
        env.settings.paths.processors = dir.path().join("processors");
        let file = dir.path().join("processors/kafka_bridge.toml");
        let def = std::fs::read_to_string(&file)
            .expect("kafka_bridge.toml")
            .replace("enabled = false", "enabled = true");
        assert!(def.contains("enabled = true"));
        std::fs::write(&file, edit(def)).expect("write definition");
        env.settings.redis.shards = 2;
        env.settings.kafka.brokers = kafka.bootstrap();
        env.settings.kafka.client_id = test.into();
        (env, dir)
    }

    fn webrtc_event(i: u64, ts_ms: i64) -> Value {
        json!({
            "kind": "webrtc", "ts": ts_ms, "meeting_id": format!("m{}", i % 4),
            "peer_id": format!("p{}", i % 7), "bytes_sent": 1000 + i, "bytes_received": 2000,
            "rtt_ms": 40.0, "jitter_ms": 3.0, "packet_loss": 0.0, "candidate_type": "host"
        })
    }

    /// NDJSON of events `from..to`: every fifth a webrtc sample, the rest http.
    fn mixed(from: u64, to: u64) -> String {
        (from..to)
            .map(|i| {
                let ts = T0 + i as i64;
                if i % 5 == 0 {
                    webrtc_event(i, ts).to_string()
                } else {
                    http_event(i, ts).to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The key the bridge must give an event (computed here independently).
    fn expected_key(data: &str) -> String {
        let v: Value = serde_json::from_str(data).expect("stream data is JSON");
        let s = |f: &str| v[f].as_str().unwrap_or_default().to_string();
        match v["kind"].as_str() {
            Some("http") => format!("{}:{}", s("service"), s("endpoint")),
            _ => s("meeting_id"),
        }
    }

    /// One consumed message.
    #[derive(Debug, Clone)]
    struct Got {
        topic: String,
        partition: i32,
        key: Option<String>,
        headers: BTreeMap<String, String>,
        payload: String,
    }

    impl Got {
        fn of(m: &impl Message) -> Got {
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            let v = h.value.map(String::from_utf8_lossy).unwrap_or_default();
                            (h.key.to_string(), v.into_owned())
                        })
                        .collect()
                })
                .unwrap_or_default();
            Got {
                topic: m.topic().to_string(),
                partition: m.partition(),
                key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                headers,
                payload: String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
            }
        }

        fn sid(&self) -> (String, String) {
            let h = |k: &str| self.headers.get(k).cloned().unwrap_or_default();
            (h("flowmeter-stream"), h("flowmeter-id"))
        }
    }

    /// A consumer thread reading every partition of `TOPICS` from the start.
    struct Collector {
        got: Arc<Mutex<Vec<Got>>>,
        stop: Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Collector {
        /// Waits (up to 30 s) for the bridge to have created the topics, then reads.
        fn start(bootstrap: &str) -> Self {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", bootstrap)
                .set("group.id", "kafka-bridge-test")
                .set("enable.auto.commit", "false")
                .set("fetch.wait.max.ms", "10")
                .create()
                .expect("consumer");
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let ready = consumer
                    .fetch_metadata(None, Duration::from_secs(2))
                    .map(|md| {
                        TOPICS.iter().all(|t| {
                            md.topics().iter().any(|m| {
                                m.name() == *t && m.partitions().len() == PARTITIONS as usize
                            })
                        })
                    })
                    .unwrap_or(false);
                if ready {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the bridge did not create its topics"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            let mut tpl = TopicPartitionList::new();
            for t in TOPICS {
                for p in 0..PARTITIONS {
                    tpl.add_partition_offset(t, p, Offset::Beginning)
                        .expect("partition");
                }
            }
            consumer.assign(&tpl).expect("assign");
            let got = Arc::new(Mutex::new(Vec::new()));
            let stop = Arc::new(AtomicBool::new(false));
            let (g, s) = (got.clone(), stop.clone());
            let thread = std::thread::spawn(move || {
                while !s.load(Ordering::SeqCst) {
                    let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) else {
                        continue;
                    };
                    g.lock().expect("lock").push(Got::of(&m));
                }
            });
            Self {
                got,
                stop,
                thread: Some(thread),
            }
        }

        fn snapshot(&self) -> Vec<Got> {
            self.got.lock().expect("lock").clone()
        }

        fn seen(&self) -> HashSet<(String, String)> {
            self.got
                .lock()
                .expect("lock")
                .iter()
                .map(Got::sid)
                .collect()
        }

        fn finish(mut self) -> Vec<Got> {
            self.stop.store(true, Ordering::SeqCst);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
            self.snapshot()
        }
    }

    /// Everything the topics hold, read by a fresh consumer from the start
    /// once the bridge is idle (until nothing new comes for 2 s). A consumer
    /// tailing the log while it grows can be served a record twice by
    /// tansu; this read is the log as it is.
    fn read_all(bootstrap: &str) -> Vec<Got> {
        let c = Collector::start(bootstrap);
        let mut n = 0;
        let mut last = Instant::now();
        while last.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(100));
            let now = c.got.lock().expect("lock").len();
            if now != n {
                n = now;
                last = Instant::now();
            }
        }
        c.finish()
    }

    /// Every entry of the bridged kinds' shards: (stream, id) → data.
    async fn stream_entries(env: &TestEnv) -> BTreeMap<(String, String), String> {
        let mut out = BTreeMap::new();
        for kind in ["http", "webrtc"] {
            for (stream, id, data) in shard_entries(env, kind).await.into_iter().flatten() {
                out.insert((stream, id), data);
            }
        }
        out
    }

    /// The bridge group's figures summed over all shards: (pending, lag).
    async fn group_figures(env: &TestEnv) -> (u64, u64) {
        crate::common::group_figures(env, GROUP).await
    }

    /// Entries of the bridged shards that are acknowledged: read by the
    /// group (id ≤ its last-delivered id) and not pending.
    async fn acked(env: &TestEnv) -> HashSet<(String, String)> {
        let mut r = env.redis().await;
        let mut out = HashSet::new();
        for kind in ["http", "webrtc"] {
            for i in 0..env.settings.redis.shards {
                let key = format!("{}:{{{kind}:{i}}}", env.name);
                let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
                    .arg(&key)
                    .arg(GROUP)
                    .arg("-")
                    .arg("+")
                    .arg(1_000_000)
                    .query_async(&mut r)
                    .await
                    .unwrap_or_default();
                let pending: HashSet<String> = pending.into_iter().map(|p| p.0).collect();
                let last: Option<String> = last_delivered(&mut r, &key).await;
                let Some(last) = last else { continue };
                let ids: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
                    .arg(&key)
                    .arg("-")
                    .arg(&last)
                    .query_async(&mut r)
                    .await
                    .expect("xrange");
                out.extend(
                    ids.into_iter()
                        .filter(|(id, _)| !pending.contains(id))
                        .map(|(id, _)| (key.clone(), id)),
                );
            }
        }
        out
    }

    async fn last_delivered(
        r: &mut redis::aio::MultiplexedConnection,
        key: &str,
    ) -> Option<String> {
        let groups: redis::Value = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(key)
            .query_async(r)
            .await
            .ok()?;
        let redis::Value::Array(groups) = groups else {
            return None;
        };
        for g in groups {
            let redis::Value::Array(kv) = g else { continue };
            let mut name = None;
            let mut last = None;
            for c in kv.chunks(2) {
                if let [redis::Value::BulkString(k), redis::Value::BulkString(v)] = c {
                    match k.as_slice() {
                        b"name" => name = Some(v.clone()),
                        b"last-delivered-id" => {
                            last = Some(String::from_utf8_lossy(v).into_owned())
                        }
                        _ => {}
                    }
                }
            }
            if name.as_deref() == Some(GROUP.as_bytes()) {
                return last;
            }
        }
        None
    }

    /// Checks every message against the stream entry it names (payload,
    /// topic, key, headers) and that, per key, the first copies come in
    /// stream order (duplicates allowed). Returns the number of duplicates.
    fn check_messages(msgs: &[Got], truth: &BTreeMap<(String, String), String>) -> usize {
        let mut seen: HashSet<(String, String)> = HashSet::new();
        let mut last: HashMap<(String, String), StreamId> = HashMap::new();
        let mut partition_of: HashMap<(String, String), i32> = HashMap::new();
        let mut dups = 0;
        for m in msgs {
            let sid = m.sid();
            let data = truth
                .get(&sid)
                .unwrap_or_else(|| panic!("message names no stream entry: {:?}", m.headers));
            assert_eq!(&m.payload, data, "payload is the event as ingested");
            let v: Value = serde_json::from_str(data).expect("json");
            let kind = v["kind"].as_str().unwrap_or_default();
            assert_eq!(m.topic, format!("flowmeter.{kind}"));
            assert_eq!(m.headers["flowmeter-kind"], kind);
            assert_eq!(m.headers["flowmeter-schema-version"], "1");
            let key = m.key.clone().expect("every message has a key");
            assert_eq!(key, expected_key(data));
            let tk = (m.topic.clone(), key.clone());
            let p = *partition_of.entry(tk.clone()).or_insert(m.partition);
            assert_eq!(p, m.partition, "key {key} in two partitions");
            if !seen.insert(sid.clone()) {
                dups += 1;
                continue;
            }
            let id: StreamId = sid.1.parse().expect("id header");
            if let Some(prev) = last.insert(tk, id) {
                assert!(prev < id, "key {key}: {id} came after {prev}");
            }
        }
        dups
    }

    /// Consumer order of one life of the broker: per partition as read.
    fn all_of(colls: &[&[Got]]) -> Vec<Got> {
        colls.iter().flat_map(|c| c.iter().cloned()).collect()
    }

    async fn wait_drained(env: &TestEnv, limit: Duration) {
        let start = Instant::now();
        loop {
            let (pending, lag) = group_figures(env).await;
            if pending == 0 && lag == 0 {
                return;
            }
            assert!(
                start.elapsed() < limit,
                "bridge group not drained within {limit:?}: pending {pending}, lag {lag}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_event_arrives_keyed_with_headers_in_key_order() {
        let kafka = tokio::task::spawn_blocking(PrivateKafka::start)
            .await
            .expect("tansu");
        let (env, _dir) = setup("kafka_order", &kafka, |d| d);
        env.migrate().await;
        let server = env.start("ingest,api,rollup").await;
        let client = http_client();
        let url = server.url("/v1/events");
        let n = 3_000u64;
        for from in (0..n).step_by(500) {
            let (code, reply) = post_ndjson(&client, &url, mixed(from, from + 500)).await;
            assert_eq!(code, 202, "{reply}");
        }
        wait_drained(&env, Duration::from_secs(60)).await;
        let truth = stream_entries(&env).await;
        assert_eq!(truth.len() as u64, n);
        // acknowledged means delivered: all of it is in the topics now
        let boot = kafka.bootstrap();
        let got = tokio::task::spawn_blocking(move || read_all(&boot))
            .await
            .expect("read");
        let seen: HashSet<(String, String)> = got.iter().map(Got::sid).collect();
        let missing = truth.keys().filter(|k| !seen.contains(*k)).count();
        assert_eq!(missing, 0, "acknowledged entries missing from Kafka");
        let dups = check_messages(&got, &truth);
        let http = got.iter().filter(|m| m.topic == "flowmeter.http").count();
        eprintln!(
            "kafka_order: {} events, {} messages ({http} http), {dups} duplicates",
            truth.len(),
            got.len()
        );
        assert_eq!(dups, 0, "no failure happened, so nothing is sent twice");
        assert_eq!(http as u64, n - n / 5);
        assert_eq!(group_figures(&env).await, (0, 0));
        // the rollup read the same events, in its own group
        let store = env.store().await;
        assert_eq!(
            scalar(&store, "SELECT SUM(requests) FROM http_hourly").await,
            (n - n / 5) as i64
        );
        server.stop().await;
        env.cleanup().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn broker_sigkill_acks_nothing_undelivered_and_everything_arrives_after_restart() {
        let _heavy = crate::common::heavy().await;
        let mut kafka = tokio::task::spawn_blocking(PrivateKafka::start)
            .await
            .expect("tansu");
        let (mut env, _dir) = setup("kafka_kill", &kafka, |d| {
            d.replace("max_rows = 5000", "max_rows = 500").replace(
                "max_wait_ms = 100",
                "max_wait_ms = 50\nretry_initial_ms = 100\nretry_max_ms = 500\ntimeout_ms = 20000",
            )
        });
        env.settings.kafka.message_timeout_ms = 2_000;
        // small reads, so the bound on what is read but not acknowledged shows
        env.settings.rollup.read_count = 100;
        env.settings.rollup.read_queue_batches = 2;
        // a batch (and one read past it), the channel, one read per shard reader
        let bound = 500 + 100 * (1 + 2 + 4);
        env.migrate().await;
        let server = env.start("ingest,api,rollup").await;
        let boot = kafka.bootstrap();
        let before = tokio::task::spawn_blocking(move || Collector::start(&boot))
            .await
            .expect("collector");

        // events keep coming for the whole test: 100 every 50 ms
        let stop = Arc::new(AtomicBool::new(false));
        let posted = Arc::new(AtomicU64::new(0));
        let poster = {
            let (stop, posted) = (stop.clone(), posted.clone());
            let (client, url) = (http_client(), server.url("/v1/events"));
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let (code, reply) = post_ndjson(&client, &url, mixed(i, i + 100)).await;
                    assert_eq!(code, 202, "{reply}");
                    i += 100;
                    posted.store(i, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        tokio::time::sleep(Duration::from_secs(2)).await;

        // Kill at a moment the consumer has every acknowledged entry, so
        // what the memory-backed broker loses with its data can be told
        // apart from what the bridge would have lost.
        let deadline = Instant::now() + Duration::from_secs(20);
        let acked_at_kill = loop {
            let a = acked(&env).await;
            let seen = before.seen();
            if a.iter().all(|k| seen.contains(k)) {
                tokio::task::block_in_place(|| kafka.kill9());
                break a;
            }
            assert!(Instant::now() < deadline, "consumer never caught up");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let killed_at = Instant::now();
        tokio::time::sleep(Duration::from_millis(300)).await;
        // reports that succeeded just before the kill may be acked just after it
        let acked_settled = acked(&env).await;
        let (pending0, lag0) = group_figures(&env).await;
        let got_before = before.finish();

        // Kafka down: nothing more is acknowledged, the lag grows in Redis.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let acked_down = acked(&env).await;
        let (pending1, lag1) = group_figures(&env).await;
        eprintln!(
            "kafka_kill: at kill {} acked; during the outage pending {pending0} → {pending1}, lag {lag0} → {lag1}, acked {} → {}",
            acked_at_kill.len(),
            acked_settled.len(),
            acked_down.len()
        );
        assert_eq!(
            acked_down, acked_settled,
            "entries were acknowledged while the broker was down"
        );
        assert!(lag1 > lag0 + 1_000, "lag must grow: {lag0} → {lag1}");
        assert!(
            pending1 <= bound,
            "pending stays bounded: {pending1} > {bound}"
        );

        tokio::task::block_in_place(|| kafka.restart());
        let outage = killed_at.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.store(true, Ordering::SeqCst);
        poster.await.expect("poster");
        let drain = Instant::now();
        wait_drained(&env, Duration::from_secs(60)).await;
        let drained_in = drain.elapsed();

        let truth = stream_entries(&env).await;
        assert_eq!(truth.len() as u64, posted.load(Ordering::SeqCst));
        // Everything not confirmed by the first broker life is in the second one.
        let boot = kafka.bootstrap();
        let got_after = tokio::task::spawn_blocking(move || read_all(&boot))
            .await
            .expect("read");
        let seen_after: HashSet<(String, String)> = got_after.iter().map(Got::sid).collect();
        let never = truth
            .keys()
            .filter(|k| !acked_settled.contains(*k) && !seen_after.contains(*k))
            .count();
        assert_eq!(
            never, 0,
            "entries unconfirmed at the kill never arrived after the restart"
        );
        let first: HashSet<(String, String)> = got_before.iter().map(Got::sid).collect();
        let lost_with_broker: Vec<_> = truth
            .keys()
            .filter(|k| !first.contains(*k) && !seen_after.contains(*k))
            .collect();
        // Only entries the first broker confirmed (and then lost with its
        // memory) may be missing: at most those acked between the check and the kill.
        for k in &lost_with_broker {
            assert!(
                acked_settled.contains(*k) && !acked_at_kill.contains(*k),
                "{k:?} was never delivered"
            );
        }
        // first life: as the live consumer saw it (tansu may serve a record
        // twice to a consumer at the head of the log); second life: the log
        let dups_before = check_messages(&got_before, &truth);
        let dups_after = check_messages(&got_after, &truth);
        let resent = seen_after.intersection(&first).count();
        check_messages(&all_of(&[&got_before, &got_after]), &truth);
        eprintln!(
            "kafka_kill: {} events; {} messages before the kill, {} after the restart; \
             duplicates: {resent} events sent again after the restart, {dups_after} within the second life's log, \
             {dups_before} records served twice to the live consumer before the kill; \
             {} confirmed in the last instant before the kill and lost with the broker's memory; \
             outage {:.1} s, backlog drained {:.1} s after the last post",
            truth.len(),
            got_before.len(),
            got_after.len(),
            lost_with_broker.len(),
            outage.as_secs_f64(),
            drained_in.as_secs_f64()
        );
        assert_eq!(group_figures(&env).await, (0, 0));
        server.stop().await;
        env.cleanup().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_message_refused_for_good_is_dead_lettered_and_the_rest_flow_on() {
        let kafka = tokio::task::spawn_blocking(PrivateKafka::start)
            .await
            .expect("tansu");
        let (mut env, _dir) = setup("kafka_dlq", &kafka, |d| d);
        // the smallest limit librdkafka allows; ordinary events stay under it
        env.settings
            .kafka
            .properties
            .insert("message.max.bytes".into(), "1000".into());
        env.migrate().await;
        let server = env.start("ingest,api,rollup").await;
        let client = http_client();
        let url = server.url("/v1/events");
        let (code, reply) = post_ndjson(&client, &url, mixed(0, 200)).await;
        assert_eq!(code, 202, "{reply}");
        // schema-valid, but with its key and headers over message.max.bytes
        let big = json!({
            "kind": "http", "ts": T0, "service": "s".repeat(128), "endpoint": "/".repeat(255),
            "method": "GETGETGETGETGETG", "status": 200, "req_bytes": 1, "resp_bytes": 1,
            "duration_ms": 1.0, "user_id": "u".repeat(128)
        });
        let (code, reply) = post_ndjson(&client, &url, big.to_string()).await;
        assert_eq!(code, 202, "{reply}");
        let (code, reply) = post_ndjson(&client, &url, mixed(200, 400)).await;
        assert_eq!(code, 202, "{reply}");
        wait_drained(&env, Duration::from_secs(60)).await;

        let truth = stream_entries(&env).await;
        assert_eq!(truth.len(), 401);
        let (big_sid, _) = truth
            .iter()
            .find(|(_, d)| d.contains("GETGETGET"))
            .expect("the big event is in a stream");
        let mut r = env.redis().await;
        let letters: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(format!("{}:dlq:{GROUP}", env.name))
            .arg("-")
            .arg("+")
            .query_async(&mut r)
            .await
            .expect("xrange dlq");
        assert_eq!(letters.len(), 1, "{letters:?}");
        let f: HashMap<String, String> = letters[0].1.iter().cloned().collect();
        assert_eq!((f["stream"].clone(), f["id"].clone()), big_sid.clone());
        assert_eq!(f["processor"], "kafka_bridge");
        assert!(f["error"].contains("too large"), "{}", f["error"]);
        assert_eq!(&f["data"], &truth[big_sid]);

        let boot = kafka.bootstrap();
        let got = tokio::task::spawn_blocking(move || read_all(&boot))
            .await
            .expect("read");
        let seen: HashSet<(String, String)> = got.iter().map(Got::sid).collect();
        assert!(truth
            .keys()
            .filter(|k| *k != big_sid)
            .all(|k| seen.contains(k)));
        assert!(!seen.contains(big_sid));
        assert_eq!(check_messages(&got, &truth), 0);
        assert_eq!(got.len(), 400);
        assert_eq!(group_figures(&env).await, (0, 0));
        server.stop().await;
        env.cleanup().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn alerts_are_forwarded_keyed_by_rule_and_subject() {
        let kafka = tokio::task::spawn_blocking(PrivateKafka::start)
            .await
            .expect("tansu");
        let (env, _dir) = setup("kafka_alerts", &kafka, |d| {
            d.replace(
                "topic = \"flowmeter.{kind}\"",
                "topic = \"flowmeter.{kind}\"\nalerts_topic = \"flowmeter.{kind}\"",
            )
        });
        env.migrate().await;
        // transitions as the evaluator appends them (flowmeter::alert::message)
        let alert = |id: u64, rule: &str, subject: &str, state: &str| {
            json!({"type": "alert", "state": state, "alert": {
                "id": id, "rule": rule, "type": "threshold", "severity": "high", "protocol": "http",
                "subject": subject, "metric": "ErrorRate", "value": 0.5, "threshold": 0.1,
                "message": "errors", "created_at": "2026-11-30T10:00:00Z", "resolved_at": null}})
        };
        let sent = [
            alert(1, "errors", "http:service:a", "fired"),
            alert(2, "errors", "http:service:b", "fired"),
            alert(1, "errors", "http:service:a", "resolved"),
        ];
        let mut r = env.redis().await;
        let stream = format!("{}:alerts", env.name);
        for a in &sent {
            let _: String = redis::cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg("data")
                .arg(a.to_string())
                .query_async(&mut r)
                .await
                .expect("xadd");
        }
        let server = env.start("rollup").await;
        let boot = kafka.bootstrap();
        let got = tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &boot)
                .set("group.id", "kafka-alerts-test")
                .set("enable.auto.commit", "false")
                .create()
                .expect("consumer");
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut got: Vec<Got> = Vec::new();
            let mut assigned = false;
            while got.len() < 3 && Instant::now() < deadline {
                if !assigned {
                    let parts = consumer
                        .fetch_metadata(Some("flowmeter.alerts"), Duration::from_secs(2))
                        .ok()
                        .and_then(|md| md.topics().first().map(|t| t.partitions().len()))
                        .unwrap_or(0);
                    if parts == PARTITIONS as usize {
                        let mut tpl = TopicPartitionList::new();
                        for p in 0..PARTITIONS {
                            tpl.add_partition_offset("flowmeter.alerts", p, Offset::Beginning)
                                .expect("partition");
                        }
                        consumer.assign(&tpl).expect("assign");
                        assigned = true;
                    } else {
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                }
                let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
                    continue;
                };
                got.push(Got::of(&m));
            }
            got
        })
        .await
        .expect("consume");
        assert_eq!(got.len(), 3, "{got:?}");
        for m in &got {
            let v: Value = serde_json::from_str(&m.payload).expect("payload is the alert JSON");
            assert!(sent.contains(&v), "{}", m.payload);
            let want = format!("errors:{}", v["alert"]["subject"].as_str().unwrap_or(""));
            assert_eq!(m.key.as_deref(), Some(want.as_str()));
            assert_eq!(m.topic, "flowmeter.alerts");
            let header = |k: &str| m.headers.get(k).map(String::as_str);
            assert_eq!(header("flowmeter-kind"), Some("alerts"));
            assert_eq!(header("flowmeter-stream"), Some(stream.as_str()));
        }
        // one alert's transitions share a key (one partition): fired before resolved
        let states: Vec<String> = got
            .iter()
            .filter(|m| m.key.as_deref() == Some("errors:http:service:a"))
            .filter_map(|m| serde_json::from_str::<Value>(&m.payload).ok())
            .map(|v| v["state"].as_str().unwrap_or("").to_string())
            .collect();
        assert_eq!(states, ["fired", "resolved"]);
        // acknowledged on the alerts stream
        let groups: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&stream)
            .query_async(&mut r)
            .await
            .expect("xinfo");
        let ours = groups
            .iter()
            .find(|g| matches!(g.get("name"), Some(redis::Value::BulkString(n)) if n == GROUP.as_bytes()))
            .expect("the bridge's group on the alerts stream");
        assert!(
            matches!(ours.get("pending"), Some(redis::Value::Int(0))),
            "{ours:?}"
        );
        server.stop().await;
        env.cleanup().await;
    }
}

/// Without the cargo feature the definition still parses, and building it
/// says what is missing.
#[cfg(not(feature = "kafka"))]
#[tokio::test]
async fn without_the_kafka_feature_building_the_bridge_says_so() {
    use common::*;
    use flowmeter::processor::{ProcessorContext, ProcessorRegistry};

    let mut env = TestEnv::new("kafka_nofeature");
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(&repo().join("processors"), &dir.path().join("processors"));
    env.settings.paths.processors = dir.path().join("processors");
    let schemas = std::sync::Arc::new(
        flowmeter::event::SchemaRegistry::load(&env.settings.paths.schemas).expect("schemas"),
    );
    let registry =
        ProcessorRegistry::load(&env.settings.paths.processors, &schemas).expect("loads");
    let def = registry.get("kafka_bridge").expect("the bridge is defined");
    let redis = flowmeter::stream::Redis::connect(REDIS_URL, std::time::Duration::from_secs(5))
        .await
        .expect("redis");
    let ctx = ProcessorContext {
        redis,
        keys: flowmeter::stream::Keys::new(env.name.clone(), 2),
        store: env.store().await,
        schemas,
        settings: env.settings.rollup.clone(),
        config: std::sync::Arc::new(env.settings.clone()),
        worker_id: "test".into(),
    };
    let err = match def.build(ctx).await {
        Ok(_) => panic!("built without the feature"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("without the `kafka` feature"), "{err}");
    env.cleanup().await;
}

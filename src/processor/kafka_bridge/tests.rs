//! Fast tests against librdkafka's mock cluster (in-process, no topic
//! creation). The real-broker tests are in tests/integration/kafka_bridge.rs.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::processor::KafkaSink;
use super::{BridgeDef, HEADER_ID, HEADER_KIND, HEADER_SCHEMA_VERSION, HEADER_STREAM};
use crate::config::KafkaConfig;
use crate::event::SchemaRegistry;
use crate::processor::sink::{Sink, SinkEntry, Verdict};
use crate::stream::{Shard, StreamId};

const TOPIC: &str = "flowmeter.http";

fn schemas() -> SchemaRegistry {
    SchemaRegistry::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas"))
        .expect("schemas")
}

fn def() -> BridgeDef {
    let path = format!(
        "{}/processors/kafka_bridge.toml",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(path).expect("read");
    let mut d: BridgeDef = crate::processor::registry::parse_definition(&text).expect("a bridge");
    d.create_topics = false; // the mock cluster has no CreateTopics
    d
}

fn sink(bootstrap: &str, message_timeout_ms: u64, props: &[(&str, &str)]) -> KafkaSink {
    let kafka = KafkaConfig {
        brokers: bootstrap.into(),
        client_id: "flowmeter-test".into(),
        message_timeout_ms,
        properties: props
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    KafkaSink::new(&def(), &kafka, &schemas()).expect("sink")
}

fn entry(i: u64, service: &str, endpoint: &str) -> SinkEntry {
    SinkEntry {
        stream: "fm:{http:1}".into(),
        shard: Shard::new("http", 1),
        kind: "http".into(),
        id: StreamId {
            ms: 1_700_000_000_000 + i,
            seq: 0,
        },
        version: Some(1),
        data: serde_json::json!({
            "kind": "http", "ts": 1_700_000_000_000u64 + i, "service": service,
            "endpoint": endpoint, "method": "GET", "status": 200, "req_bytes": i,
            "resp_bytes": 10, "duration_ms": 1.5
        })
        .to_string(),
    }
}

/// One consumed message: partition, key, headers, payload.
type Got = (i32, Option<String>, BTreeMap<String, String>, String);

/// Reads `want` messages of `TOPIC` from the beginning of each partition.
fn consume(bootstrap: &str, partitions: i32, want: usize) -> Vec<Got> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "kafka-bridge-unit")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(TOPIC, p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < want && Instant::now() < deadline {
        let Some(m) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m.expect("message");
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
        got.push((
            m.partition(),
            m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            headers,
            String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
        ));
    }
    got
}

#[tokio::test]
async fn delivers_every_entry_keyed_with_headers_in_order() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic(TOPIC, 3, 1).expect("topic");
    let boot = cluster.bootstrap_servers();
    let mut sink = sink(&boot, 5_000, &[]);
    let batch: Vec<SinkEntry> = (0..60)
        .map(|i| entry(i, &format!("svc{}", i % 3), &format!("/e{}", i % 2)))
        .collect();
    let verdicts = sink.deliver(&batch).await.expect("delivered");
    assert!(
        verdicts.iter().all(|v| *v == Verdict::Delivered),
        "{verdicts:?}"
    );

    let got = consume(&boot, 3, batch.len());
    assert_eq!(got.len(), batch.len());
    let mut partition_of: BTreeMap<String, i32> = BTreeMap::new();
    let mut last_id: BTreeMap<String, String> = BTreeMap::new();
    for (partition, key, headers, payload) in &got {
        let key = key.clone().expect("keyed");
        let e = batch
            .iter()
            .find(|e| e.id.to_string() == headers[HEADER_ID])
            .expect("a sent entry");
        assert_eq!(payload, &e.data, "payload is the event as ingested");
        assert_eq!(headers[HEADER_KIND], "http");
        assert_eq!(headers[HEADER_SCHEMA_VERSION], "1");
        assert_eq!(headers[HEADER_STREAM], "fm:{http:1}");
        let ev: serde_json::Value = serde_json::from_str(payload).expect("json");
        assert_eq!(
            key,
            format!(
                "{}:{}",
                ev["service"].as_str().unwrap_or_default(),
                ev["endpoint"].as_str().unwrap_or_default()
            )
        );
        // one key, one partition, in stream order
        assert_eq!(
            *partition_of.entry(key.clone()).or_insert(*partition),
            *partition
        );
        let id: StreamId = headers[HEADER_ID].parse().expect("id");
        if let Some(prev) = last_id.insert(key.clone(), headers[HEADER_ID].clone()) {
            assert!(
                prev.parse::<StreamId>().expect("id") < id,
                "{key}: {prev} then {id}"
            );
        }
    }
    assert_eq!(partition_of.len(), 6);
}

#[tokio::test]
async fn refused_entries_are_rejected_and_the_rest_delivered() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic(TOPIC, 1, 1).expect("topic");
    let boot = cluster.bootstrap_servers();
    // the smallest message.max.bytes librdkafka allows
    let mut sink = sink(&boot, 5_000, &[("message.max.bytes", "1000")]);
    let mut batch: Vec<SinkEntry> = (0..5).map(|i| entry(i, "svc", "/a")).collect();
    batch[1] = entry(1, "svc", &"/x".repeat(600)); // too large
    batch[3].data = "not json".into();
    batch[4].kind = "smtp".into();
    let verdicts = sink.deliver(&batch).await.expect("delivered");
    assert_eq!(verdicts[0], Verdict::Delivered);
    assert_eq!(verdicts[2], Verdict::Delivered);
    let reason = |v: &Verdict| match v {
        Verdict::Rejected(r) => r.clone(),
        Verdict::Delivered => String::new(),
    };
    assert!(reason(&verdicts[1]).contains("too large"), "{verdicts:?}");
    assert!(
        reason(&verdicts[3]).contains("not a JSON object"),
        "{verdicts:?}"
    );
    assert!(
        reason(&verdicts[4]).contains("not forwarded"),
        "{verdicts:?}"
    );
    let got = consume(&boot, 1, 2);
    assert_eq!(got.len(), 2);
}

#[tokio::test]
async fn broker_refusals_fail_the_batch_until_they_stop() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic(TOPIC, 1, 1).expect("topic");
    let boot = cluster.bootstrap_servers();
    let mut sink = sink(&boot, 1_500, &[]);
    let batch: Vec<SinkEntry> = (0..10).map(|i| entry(i, "svc", "/a")).collect();
    // retriable: librdkafka retries until message.timeout.ms, then reports
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 500],
    );
    let err = sink.deliver(&batch).await.expect_err("nothing confirmed");
    assert!(err.0.contains("not confirmed"), "{err}");
    cluster.clear_request_errors(RDKafkaApiKey::Produce);
    let verdicts = sink.deliver(&batch).await.expect("delivered");
    assert!(verdicts.iter().all(|v| *v == Verdict::Delivered));
    // the failed attempt may have written nothing or a prefix: never a gap
    let got = consume(&boot, 1, batch.len());
    assert!(got.len() >= batch.len());
}

#[tokio::test]
async fn a_broker_refusing_a_message_for_good_rejects_it() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic(TOPIC, 1, 1).expect("topic");
    let boot = cluster.bootstrap_servers();
    let mut sink = sink(&boot, 5_000, &[]);
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );
    let batch: Vec<SinkEntry> = (0..3).map(|i| entry(i, "svc", "/a")).collect();
    let verdicts = sink.deliver(&batch).await.expect("answered");
    assert!(
        verdicts
            .iter()
            .all(|v| matches!(v, Verdict::Rejected(r) if r.contains("for good"))),
        "{verdicts:?}"
    );
    // the producer goes on
    let verdicts = sink.deliver(&batch).await.expect("delivered");
    assert!(
        verdicts.iter().all(|v| *v == Verdict::Delivered),
        "{verdicts:?}"
    );
}

//! The bridge's sink: one Kafka message per entry, all of a batch handed to
//! an idempotent producer in stream order, then every delivery report
//! awaited. Entries Kafka refuses for good are rejected (dead-lettered by
//! the runner); any other failure fails the batch, which the runner sends
//! again after a backoff.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use serde_json::{Map, Value};

use super::config::{BridgeDef, Template, ALERTS};
use super::{BridgeError, HEADER_ID, HEADER_KIND, HEADER_SCHEMA_VERSION, HEADER_STREAM};
use crate::config::KafkaConfig;
use crate::event::SchemaRegistry;
use crate::processor::sink::{Sink, SinkEntry, SinkError, Verdict};
use crate::processor::{Processor, ProcessorContext, ProcessorError};

/// Longest wait for topic creation (and its check) before a delivery.
const TOPIC_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before offering a message again while librdkafka's queue is full.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(10);
/// Properties that would weaken the bridge's guarantees, with the values allowed.
const GUARDED: &[(&str, &[&str])] = &[
    ("enable.idempotence", &["true"]),
    ("acks", &["all", "-1"]),
    ("request.required.acks", &["all", "-1"]),
];

/// Where one kind goes.
struct Route {
    topic: String,
    /// `None` for alerts (keyed `rule:subject` from the alert row).
    key: Option<Template>,
    /// Schema version of events without `v`.
    latest: u32,
}

/// Topics created before the first delivery.
#[derive(Debug, Clone)]
struct TopicSpec {
    topics: Vec<String>,
    partitions: i32,
    replication: i32,
}

pub struct KafkaSink {
    producer_config: ClientConfig,
    admin_config: ClientConfig,
    /// `None` after a fatal error, until the next delivery creates a new one.
    producer: Option<FutureProducer>,
    routes: BTreeMap<String, Route>,
    /// `None` with `create_topics = false`.
    create: Option<TopicSpec>,
    /// Cleared after a failed delivery: the topics are checked again first
    /// (a broker that lost its data has lost them too).
    topics_ready: Arc<AtomicBool>,
    /// `message.timeout.ms`: also the longest wait for room in the queue.
    message_timeout: Duration,
}

/// Builds the processor (no connection to Kafka yet: a background task
/// creates the topics, and the first delivery makes sure they exist).
pub async fn build(
    def: &BridgeDef,
    ctx: ProcessorContext,
) -> Result<Box<dyn Processor>, ProcessorError> {
    let bad = |reason: String| ProcessorError::Definition {
        file: format!("processor {}", def.name),
        reason,
    };
    let sink = KafkaSink::new(def, &ctx.config.kafka, &ctx.schemas).map_err(bad)?;
    if let Some(spec) = sink.create.clone() {
        let (config, ready) = (sink.admin_config.clone(), sink.topics_ready.clone());
        let name = def.name.clone();
        // Bounded by TOPIC_TIMEOUT; only spares consumers that subscribe
        // before the first event a wait for a metadata refresh.
        tokio::spawn(async move {
            match ensure_topics(&config, &spec).await {
                Ok(()) => ready.store(true, Ordering::SeqCst),
                Err(e) => {
                    tracing::warn!(processor = %name, error = %e, "topics not created yet; trying again before the first delivery")
                }
            }
        });
    }
    let extra_streams = match def.alerts_topic {
        Some(_) => vec![(crate::stream::Shard::new(ALERTS, 0), ctx.keys.alerts())],
        None => Vec::new(),
    };
    Ok(Box::new(crate::processor::sink::processor(
        def.head(),
        ctx,
        sink,
        extra_streams,
    )?))
}

impl KafkaSink {
    /// Checks the definition against the schemas and `[kafka]`, and creates
    /// the producer (librdkafka connects lazily).
    pub fn new(
        def: &BridgeDef,
        kafka: &KafkaConfig,
        schemas: &SchemaRegistry,
    ) -> Result<Self, String> {
        let mut routes = BTreeMap::new();
        for kind in &def.kinds {
            let info = schemas
                .kind_index(kind)
                .and_then(|i| schemas.kind(i))
                .ok_or_else(|| format!("kind {kind:?} has no schema"))?;
            let key = def.key_of(kind, schemas)?;
            match &key {
                Some(t) if info.partition_by.iter().all(|f| t.fields().any(|k| k == f)) => {}
                _ if info.partition_by.is_empty() => {}
                _ => tracing::warn!(
                    processor = %def.name,
                    %kind,
                    partition_by = ?info.partition_by,
                    "the message key does not include every partition_by field: one key's events may come from several shards, and their order in Kafka is not guaranteed"
                ),
            }
            let route = Route {
                topic: def.topic_of(kind)?,
                key,
                latest: info.latest(),
            };
            routes.insert(kind.clone(), route);
        }
        if def.alerts_topic.is_some() {
            // alert messages: {"type": "alert", "state", "alert": {row}}, version 1
            let route = Route {
                topic: def.topic_of(ALERTS)?,
                key: None,
                latest: 1,
            };
            routes.insert(ALERTS.to_string(), route);
        }
        let message_timeout = Duration::from_millis(kafka.message_timeout_ms.max(1));
        let budget = message_timeout + TOPIC_TIMEOUT;
        if Duration::from_millis(def.batch.timeout_ms) <= budget {
            return Err(format!(
                "batch.timeout_ms ({}) must exceed [kafka] message_timeout_ms + {} ms, so every delivery report arrives before the runner gives up on a delivery",
                def.batch.timeout_ms,
                TOPIC_TIMEOUT.as_millis()
            ));
        }
        for (key, allowed) in GUARDED {
            if let Some(v) = kafka.properties.get(*key) {
                if !allowed.contains(&v.as_str()) {
                    return Err(format!(
                        "[kafka.properties] {key} = {v:?} would break the bridge's guarantees (allowed: {allowed:?})"
                    ));
                }
            }
        }
        let mut admin_config = ClientConfig::new();
        admin_config
            .set("bootstrap.servers", &kafka.brokers)
            .set("client.id", &kafka.client_id);
        let mut producer_config = admin_config.clone();
        // One batch is in flight at a time, so the queue never needs more
        // than `max_rows` messages.
        producer_config
            .set("message.timeout.ms", kafka.message_timeout_ms.to_string())
            .set(
                "queue.buffering.max.messages",
                def.batch.max_rows.max(1_000).to_string(),
            );
        for (k, v) in &kafka.properties {
            admin_config.set(k, v);
            producer_config.set(k, v);
        }
        producer_config
            .set("enable.idempotence", "true")
            .set("acks", "all");
        // Producer-only properties make librdkafka log a warning on the
        // admin client; that is all.
        let producer = producer_config
            .create::<FutureProducer>()
            .map_err(|e| BridgeError::Config(e.to_string()).to_string())?;
        let create = def.create_topics.then(|| {
            let mut topics: Vec<String> = routes.values().map(|r| r.topic.clone()).collect();
            topics.sort();
            topics.dedup();
            TopicSpec {
                topics,
                partitions: def.partitions,
                replication: def.replication_factor,
            }
        });
        Ok(Self {
            producer_config,
            admin_config,
            producer: Some(producer),
            routes,
            create,
            topics_ready: Arc::new(AtomicBool::new(false)),
            message_timeout,
        })
    }

    /// Topic, key and headers of one entry, or why it can never be sent.
    fn prepare(&self, e: &SinkEntry) -> Result<(&str, Option<String>, OwnedHeaders), String> {
        let route = self
            .routes
            .get(&e.kind)
            .ok_or_else(|| format!("kind {:?} is not forwarded by this bridge", e.kind))?;
        let ev: Map<String, Value> = serde_json::from_str(&e.data)
            .map_err(|err| format!("data is not a JSON object: {err}"))?;
        // the version ingest validated against, else the event's own, else the newest
        let version = e
            .version
            .map(u64::from)
            .or_else(|| ev.get("v").and_then(Value::as_u64))
            .unwrap_or(u64::from(route.latest))
            .to_string();
        let key = match &route.key {
            Some(t) => Some(t.render_event(&ev)),
            // one alert's transitions (fired, resolved) share a key, so they stay in order
            None if e.kind == ALERTS => {
                let field = |k: &str| {
                    ev.get("alert")
                        .and_then(|a| a.get(k))
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string()
                };
                Some(format!("{}:{}", field("rule"), field("subject")))
            }
            None => None,
        };
        let id = e.id.to_string();
        let headers = OwnedHeaders::new_with_capacity(4)
            .insert(Header {
                key: HEADER_KIND,
                value: Some(e.kind.as_str()),
            })
            .insert(Header {
                key: HEADER_SCHEMA_VERSION,
                value: Some(version.as_str()),
            })
            .insert(Header {
                key: HEADER_STREAM,
                value: Some(e.stream.as_str()),
            })
            .insert(Header {
                key: HEADER_ID,
                value: Some(id.as_str()),
            });
        Ok((&route.topic, key, headers))
    }

    fn producer(&mut self) -> Result<FutureProducer, BridgeError> {
        if let Some(p) = &self.producer {
            return Ok(p.clone());
        }
        let p: FutureProducer = self
            .producer_config
            .create()
            .map_err(|e| BridgeError::Config(e.to_string()))?;
        tracing::info!("created a new kafka producer");
        self.producer = Some(p.clone());
        Ok(p)
    }

    /// Drops the producer off the async threads (dropping joins its
    /// polling thread and may flush for up to 500 ms).
    fn retire_producer(&mut self) {
        if let Some(p) = self.producer.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn_blocking(move || drop(p))),
                Err(_) => drop(p),
            }
        }
    }

    async fn deliver_batch(&mut self, batch: &[SinkEntry]) -> Result<Vec<Verdict>, BridgeError> {
        if let Some(spec) = &self.create {
            if !self.topics_ready.load(Ordering::SeqCst) {
                ensure_topics(&self.admin_config, spec).await?;
                self.topics_ready.store(true, Ordering::SeqCst);
            }
        }
        let producer = self.producer()?;
        let started = Instant::now();
        let mut verdicts = vec![Verdict::Delivered; batch.len()];
        let mut reports: Vec<(usize, DeliveryFuture)> = Vec::with_capacity(batch.len());
        let mut failed = 0usize;
        let mut first: Option<String> = None;
        for (i, e) in batch.iter().enumerate() {
            let (topic, key, headers) = match self.prepare(e) {
                Ok(m) => m,
                Err(reason) => {
                    verdicts[i] = Verdict::Rejected(reason);
                    continue;
                }
            };
            let record = FutureRecord::<str, str>::to(topic)
                .payload(e.data.as_str())
                .headers(headers);
            let record = match &key {
                Some(k) => record.key(k.as_str()),
                None => record,
            };
            match enqueue(&producer, record, started + self.message_timeout).await {
                Ok(f) => reports.push((i, f)),
                Err(err) if permanent(&err) => verdicts[i] = Verdict::Rejected(rejection(&err)),
                Err(err) => {
                    // Stop here: queuing later entries without this one
                    // would put them before it in their partition.
                    failed = batch.len() - i;
                    first = Some(format!("{} (not queued)", err));
                    break;
                }
            }
        }
        let results = futures::future::join_all(
            reports
                .into_iter()
                .map(|(i, f)| async move { (i, f.await) }),
        )
        .await;
        for (i, r) in results {
            let err = match r {
                Ok(Ok(_)) => continue,
                Ok(Err((err, _))) => err,
                Err(_) => KafkaError::Canceled,
            };
            if permanent(&err) {
                verdicts[i] = Verdict::Rejected(rejection(&err));
            } else {
                failed += 1;
                first.get_or_insert_with(|| err.to_string());
            }
        }
        let fatal = producer.client().fatal_error();
        // the last handle may do the blocking drop: let `retire_producer` hold it
        drop(producer);
        if let Some((code, reason)) = fatal {
            self.topics_ready.store(false, Ordering::SeqCst);
            self.retire_producer();
            return Err(BridgeError::Fatal(format!("{code}: {reason}")));
        }
        if failed > 0 {
            // Every report is in, so the producer holds nothing: start the
            // retry afresh. A broker that lost its state (a restart of an
            // in-memory broker, a wiped cluster) no longer knows the
            // idempotent producer's id and refuses it for good, while
            // librdkafka only bumps the epoch locally; a new producer asks
            // the broker for a new id. The topics are checked again too.
            self.topics_ready.store(false, Ordering::SeqCst);
            self.retire_producer();
            return Err(BridgeError::Delivery {
                failed,
                total: batch.len(),
                first: first.unwrap_or_default(),
            });
        }
        Ok(verdicts)
    }
}

impl Drop for KafkaSink {
    fn drop(&mut self) {
        self.retire_producer();
    }
}

impl Sink for KafkaSink {
    fn deliver<'a>(
        &'a mut self,
        batch: &'a [SinkEntry],
    ) -> BoxFuture<'a, Result<Vec<Verdict>, SinkError>> {
        Box::pin(async move { self.deliver_batch(batch).await.map_err(SinkError::from) })
    }
}

/// Hands one record to librdkafka, waiting (until `deadline`) while its
/// queue is full. Keeps the order of calls.
async fn enqueue(
    producer: &FutureProducer,
    mut record: FutureRecord<'_, str, str>,
    deadline: Instant,
) -> Result<DeliveryFuture, KafkaError> {
    loop {
        match producer.send_result(record) {
            Ok(f) => return Ok(f),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r))
                if Instant::now() < deadline =>
            {
                record = r;
                tokio::time::sleep(QUEUE_FULL_PAUSE).await;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Whether Kafka will refuse this message however often it is sent. Only
/// faults of the message itself: anything that may be the cluster's state
/// or configuration (authorization, timestamps, unknown topics) is retried,
/// so a misconfigured cluster stalls the bridge instead of dead-lettering
/// everything.
fn permanent(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::MessageBatchTooLarge
                | RDKafkaErrorCode::InvalidRecord
        )
    )
}

fn rejection(e: &KafkaError) -> String {
    format!("refused by Kafka for good: {e}")
}

/// Creates the missing topics of `spec`; existing ones are left alone.
async fn ensure_topics(config: &ClientConfig, spec: &TopicSpec) -> Result<(), BridgeError> {
    let failed = |reason: String| BridgeError::Topics {
        topics: spec.topics.join(", "),
        reason,
    };
    let admin: AdminClient<DefaultClientContext> = config
        .create()
        .map_err(|e| BridgeError::Config(e.to_string()))?;
    let new: Vec<NewTopic<'_>> = spec
        .topics
        .iter()
        .map(|t| {
            NewTopic::new(
                t,
                spec.partitions,
                TopicReplication::Fixed(spec.replication),
            )
        })
        .collect();
    let opts = AdminOptions::new()
        .request_timeout(Some(TOPIC_TIMEOUT))
        .operation_timeout(Some(TOPIC_TIMEOUT));
    let results = admin
        .create_topics(&new, &opts)
        .await
        .map_err(|e| failed(e.to_string()))?;
    for r in results {
        match r {
            Ok(t) => {
                tracing::info!(topic = %t, partitions = spec.partitions, "created kafka topic")
            }
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => return Err(failed(format!("{t}: {code}"))),
        }
    }
    Ok(())
}

//! The archive's sink: per batch, one `INSERT … FORMAT JSONEachRow` per
//! table, each row the event's fields plus `ts` (event time, UTC seconds),
//! `ts_ms`, `received_ms` (the entry id's time), `stream` and `stream_id`.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use serde_json::{json, Value};

use super::client::Archive;
use super::config::ArchiveDef;
use crate::event::decode_entry as decode;
use crate::processor::sink::{Sink, SinkEntry, SinkError, Verdict};
use crate::processor::{Processor, ProcessorContext, ProcessorError};

pub struct ArchiveSink {
    archive: Archive,
    /// kind → table
    tables: BTreeMap<String, String>,
}

/// Builds the processor after checking that every kind's table exists.
pub async fn build(
    def: &ArchiveDef,
    ctx: ProcessorContext,
) -> Result<Box<dyn Processor>, ProcessorError> {
    let archive = Archive::new(&ctx.config.clickhouse);
    let bad = |reason: String| ProcessorError::Definition {
        file: format!("processor {}", def.name),
        reason,
    };
    let mut tables = BTreeMap::new();
    for kind in &def.kinds {
        let table = def.table(kind);
        let cols = archive
            .columns(&table)
            .await
            .map_err(|e| bad(e.to_string()))?;
        for needed in ["ts", "ts_ms", "stream_id"] {
            if !cols.iter().any(|(n, _)| n == needed) {
                return Err(bad(format!(
                    "table {table} (kind {kind}) {}: run `flowmeter migrate` (migrations/clickhouse/)",
                    if cols.is_empty() {
                        "does not exist in ClickHouse".to_string()
                    } else {
                        format!("has no column {needed}")
                    }
                )));
            }
        }
        tables.insert(kind.clone(), table);
    }
    Ok(Box::new(crate::processor::sink::processor(
        def.head(),
        ctx,
        ArchiveSink { archive, tables },
        Vec::new(),
    )?))
}

/// The row of one entry, or why it cannot be archived.
fn row(e: &SinkEntry) -> Result<Value, String> {
    let (mut ev, ts_ms) = decode(Some(&e.data))?;
    let secs = ts_ms.div_euclid(1000);
    let ts = chrono::DateTime::from_timestamp(secs, 0)
        .filter(|_| (0..=u32::MAX as i64).contains(&secs))
        .ok_or_else(|| format!("ts {ts_ms} ms is outside ClickHouse's DateTime range"))?;
    ev.remove("kind");
    ev.remove("v");
    ev.insert(
        "ts".into(),
        json!(ts.format("%Y-%m-%d %H:%M:%S").to_string()),
    );
    ev.insert("ts_ms".into(), json!(ts_ms));
    ev.insert("received_ms".into(), json!(e.id.ms));
    ev.insert("stream".into(), json!(e.stream));
    ev.insert("stream_id".into(), json!(e.id.to_string()));
    // nulls would fail non-Nullable columns: leave them to the column default
    ev.retain(|_, v| !v.is_null());
    Ok(Value::Object(ev))
}

impl Sink for ArchiveSink {
    fn deliver<'a>(
        &'a mut self,
        batch: &'a [SinkEntry],
    ) -> BoxFuture<'a, Result<Vec<Verdict>, SinkError>> {
        Box::pin(async move {
            let mut verdicts = vec![Verdict::Delivered; batch.len()];
            let mut bodies: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
            for (i, e) in batch.iter().enumerate() {
                let Some(table) = self.tables.get(&e.kind) else {
                    verdicts[i] =
                        Verdict::Rejected(format!("no archive table for kind {}", e.kind));
                    continue;
                };
                match row(e) {
                    Ok(r) => {
                        let body = bodies.entry(table).or_default();
                        // serializing a Value cannot fail
                        let _ = serde_json::to_writer(&mut *body, &r);
                        body.push(b'\n');
                    }
                    Err(reason) => verdicts[i] = Verdict::Rejected(reason),
                }
            }
            // A failure after an earlier table's insert succeeded retries the
            // whole batch: that table gets the rows twice, and FINAL reads
            // (and merges) keep one per stream id.
            for (table, body) in bodies {
                self.archive
                    .insert_json_rows(table, body.into())
                    .await
                    .map_err(|e| SinkError(e.to_string()))?;
            }
            Ok(verdicts)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::{Shard, StreamId};

    fn entry(data: &str) -> SinkEntry {
        SinkEntry {
            stream: "fm:{http:0}".into(),
            shard: Shard::new("http", 0),
            kind: "http".into(),
            id: StreamId {
                ms: 1_772_359_200_123,
                seq: 4,
            },
            version: Some(1),
            data: data.into(),
        }
    }

    #[test]
    fn rows_carry_time_and_origin_and_drop_nulls() {
        let r = row(&entry(
            r#"{"kind":"http","ts":"2026-03-01T10:00:00.250Z","service":"s","user_id":null,"status":200}"#,
        ))
        .expect("row");
        assert_eq!(r["ts"], "2026-03-01 10:00:00");
        assert_eq!(r["ts_ms"], 1_772_359_200_250_i64);
        assert_eq!(r["stream_id"], "1772359200123-4");
        assert_eq!(r["received_ms"], 1_772_359_200_123_u64);
        assert!(r.get("user_id").is_none() && r.get("kind").is_none());
        assert!(row(&entry("not json")).is_err());
    }
}

-- Raw events of the ClickHouse archive (processors/clickhouse_archive.toml),
-- one table per kind: `<kind>_events`. Applied by `flowmeter migrate` when
-- the archive is enabled. Written for ClickHouse 18.16 and later (no
-- DateTime64, no LowCardinality, no query parameters).
--
-- Every row keeps the id of the stream entry it came from (`stream_id`,
-- "<ms>-<seq>" of shard `stream`). The archive delivers at least once, so a
-- redelivered entry may be inserted twice: ReplacingMergeTree keeps one row
-- per sorting key, which includes the stream id, when parts merge; queries
-- that must not see duplicates read with FINAL (GET /v1/events/search does).
-- Columns named like an event field are filled from it; others take their
-- default. `ts` is the event's own time, `received_ms` when Redis took it.

CREATE TABLE IF NOT EXISTS http_events (
    ts DateTime('UTC'),
    ts_ms UInt64,
    received_ms UInt64,
    stream String,
    stream_id String,
    service String,
    endpoint String,
    method String,
    status UInt16,
    req_bytes UInt64,
    resp_bytes UInt64,
    req_header_bytes UInt64,
    resp_header_bytes UInt64,
    duration_ms Float64,
    user_id String
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMMDD(ts)
ORDER BY (service, endpoint, ts, stream_id);

CREATE TABLE IF NOT EXISTS webrtc_events (
    ts DateTime('UTC'),
    ts_ms UInt64,
    received_ms UInt64,
    stream String,
    stream_id String,
    meeting_id String,
    peer_id String,
    user_id String,
    bytes_sent UInt64,
    bytes_received UInt64,
    rtt_ms Float64,
    jitter_ms Float64,
    packet_loss Float64,
    candidate_type String,
    relay_protocol String
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMMDD(ts)
ORDER BY (meeting_id, ts, stream_id);

use serde_json::json;

use super::*;
use crate::processor::rollup::RollupDef;
use crate::store::ms_datetime;

fn column(name: &str, data_type: &str) -> ColumnInfo {
    let kind = match data_type {
        "bigint" | "int" => ColumnKind::Int,
        "double" | "float" => ColumnKind::Float,
        "varchar" => ColumnKind::Text,
        "blob" | "mediumblob" => ColumnKind::Blob,
        "date" => ColumnKind::Date,
        _ => ColumnKind::DateTime,
    };
    ColumnInfo {
        name: name.into(),
        kind,
        max_chars: (kind == ColumnKind::Text).then_some(16),
        nullable: true,
        data_type: data_type.into(),
        unsigned: data_type == "bigint",
        max_bytes: match data_type {
            "varchar" => Some(64),
            "blob" => Some(65_535),
            _ => None,
        },
        charset: (kind == ColumnKind::Text).then(|| "utf8mb4".to_string()),
        precision: None,
        scale: None,
    }
}

/// Tables `a` (hourly, by `service`) and `b` (daily, no dimensions), with
/// the measures of `measures` (TOML) in `a` and a count in `b`.
fn tables(measures: &str, time_type: &str, extra: &[ColumnInfo]) -> Vec<CompiledTable> {
    let text = format!(
        r#"
        type = "rollup"
        name = "t"
        group = "g"
        kinds = ["http"]
        [[table]]
        name = "a"
        window = "hour"
        time_column = "hour"
        dimensions = ["service"]
        {measures}
        [[table]]
        name = "b"
        window = "day"
        time_column = "day"
          [[table.measure]]
          op = "count"
          column = "n"
        "#
    );
    let def: RollupDef =
        crate::processor::registry::parse_definition(&text).expect("definition parses");
    let mut cols = vec![
        column("hour", time_type),
        column("day", "date"),
        column("service", "varchar"),
        column("n", "bigint"),
        column("bytes", "bigint"),
        column("ms", "double"),
        column("sketch", "mediumblob"),
        column("peak_state", "blob"),
        column("peak_at", "datetime"),
        column("peak_bytes", "bigint"),
    ];
    cols.extend_from_slice(extra);
    def.tables
        .iter()
        .map(|t| CompiledTable::compile(t, &cols).expect("compiles"))
        .collect()
}

const SUMS: &str = r#"
  [[table.measure]]
  op = "count"
  column = "n"
  [[table.measure]]
  op = "sum"
  column = "bytes"
  value = "b"
  [[table.measure]]
  op = "sum"
  column = "ms"
  value = "d"
"#;

fn ev(service: &str, b: serde_json::Value) -> Map<String, Value> {
    match json!({"service": service, "b": b, "d": 1.5}) {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

const HOUR: i64 = 1_772_359_200_000;

fn aggs(t: &[CompiledTable]) -> Vec<TableRows> {
    t.iter().map(|_| TableRows::new()).collect()
}

fn only_row(rows: &TableRows) -> &Row {
    rows.values().next().expect("one row")
}

#[test]
fn integer_sums_are_exact_past_f64_precision() {
    let t = tables(SUMS, "datetime", &[]);
    let mut a = aggs(&t);
    // 2^53 + 1 is not an f64; the sum of these three is exact only in integers
    for b in [json!(1u64 << 53), json!(1), json!(1)] {
        assert!(fold_event(&t, &mut a, &ev("s", b), HOUR).expect("fits"));
    }
    let row = only_row(&a[0]);
    assert_eq!(row.events, 3);
    assert_eq!(row.state[1], MState::IntSum((1i128 << 53) + 2));
    assert_eq!(row.state[2], MState::Sum(4.5));
    let out = t[0].output(
        &t[0]
            .key(&ev("s", json!(0)), HOUR)
            .expect("key")
            .expect("row"),
        row,
    );
    let out = out.expect("fits");
    assert_eq!(out[2], SqlVal::Int(3));
    assert_eq!(out[3], SqlVal::Int((1i64 << 53) + 2));
}

#[test]
fn a_sum_past_bigint_unsigned_refuses_the_event_in_every_table() {
    let t = tables(SUMS, "datetime", &[]);
    let mut a = aggs(&t);
    let big = json!(u64::MAX - 10);
    assert!(fold_event(&t, &mut a, &ev("s", big), HOUR).is_ok());
    let err = fold_event(&t, &mut a, &ev("s", json!(11)), HOUR).expect_err("past u64::MAX");
    assert!(
        err.contains("table a") && err.contains("bytes") && err.contains("BIGINT UNSIGNED"),
        "{err}"
    );
    // nothing of the refused event landed anywhere, not even in table b
    assert_eq!(only_row(&a[0]).events, 1);
    assert_eq!(only_row(&a[1]).state[0], MState::Count(1));
    // the largest value that still fits is taken, exactly
    assert!(fold_event(&t, &mut a, &ev("s", json!(10)), HOUR).is_ok());
    assert_eq!(
        only_row(&a[0]).state[1],
        MState::IntSum(i128::from(u64::MAX))
    );
    let key = t[0]
        .key(&ev("s", json!(0)), HOUR)
        .expect("key")
        .expect("row");
    let out = t[0].output(&key, only_row(&a[0])).expect("fits");
    assert_eq!(out[3], SqlVal::UInt(u64::MAX));
}

#[test]
fn values_beyond_any_integer_and_negative_sums_are_caught() {
    let t = tables(SUMS, "datetime", &[]);
    let mut a = aggs(&t);
    let err = fold_event(&t, &mut a, &ev("s", json!(1e300)), HOUR).expect_err("huge");
    assert!(err.contains("bytes"), "{err}");
    // a negative partial sum may still be lifted by the committed row…
    assert!(fold_event(&t, &mut a, &ev("s", json!(-5)), HOUR).is_ok());
    let key = t[0]
        .key(&ev("s", json!(0)), HOUR)
        .expect("key")
        .expect("row");
    // …but a row that ends negative cannot be written to an UNSIGNED column
    let err = t[0].output(&key, only_row(&a[0])).expect_err("negative");
    assert!(err.contains("-5") && err.contains("bytes"), "{err}");
    let mut merged = only_row(&a[0]).clone();
    let db: DbRow = [("bytes".to_string(), SqlVal::UInt(7))]
        .into_iter()
        .collect();
    t[0].merge_db(&mut merged, &db).expect("7 - 5 fits");
    assert_eq!(merged.state[1], MState::IntSum(2));
    assert!(t[0].output(&key, &merged).is_ok());
}

#[test]
fn merging_with_the_database_is_exact_and_checked() {
    let t = tables(SUMS, "datetime", &[]);
    let mut a = aggs(&t);
    fold_event(&t, &mut a, &ev("s", json!(3)), HOUR).expect("fits");
    let near = u64::MAX - 3;
    let db: DbRow = [
        ("n".to_string(), SqlVal::Int(41)),
        ("bytes".to_string(), SqlVal::UInt(near)),
    ]
    .into_iter()
    .collect();
    let mut row = only_row(&a[0]).clone();
    t[0].merge_db(&mut row, &db).expect("fits exactly");
    assert_eq!(row.state[0], MState::Count(42));
    assert_eq!(row.state[1], MState::IntSum(i128::from(u64::MAX)));
    let db: DbRow = [("bytes".to_string(), SqlVal::UInt(u64::MAX))]
        .into_iter()
        .collect();
    let mut row = only_row(&a[0]).clone();
    let err = t[0].merge_db(&mut row, &db).expect_err("overflows");
    assert!(err.contains("bytes"), "{err}");
}

#[test]
fn the_time_column_type_bounds_the_buckets() {
    let t = tables(SUMS, "datetime", &[]);
    let mut a = aggs(&t);
    let year_2040 = 2_208_988_800_000;
    let year_3000 = 32_503_680_000_000;
    for ts in [0, year_2040, year_3000] {
        assert!(
            fold_event(&t, &mut a, &ev("s", json!(1)), ts).is_ok(),
            "{ts}"
        );
    }
    let t = tables(SUMS, "timestamp", &[]);
    let mut a = aggs(&t);
    let err = fold_event(&t, &mut a, &ev("s", json!(1)), year_2040).expect_err("TIMESTAMP");
    assert!(err.contains("column hour (TIMESTAMP)"), "{err}");
    assert!(a.iter().all(HashMap::is_empty));
}

#[test]
fn dimension_values_must_fit_the_character_set() {
    let t = tables(SUMS, "datetime", &[]);
    let mut a = aggs(&t);
    assert!(fold_event(&t, &mut a, &ev("😀𝄞", json!(1)), HOUR).is_ok());
    let mut t = tables(SUMS, "datetime", &[]);
    if let Some(d) = t[0].dims.first_mut() {
        d.info.charset = Some("utf8mb3".into());
    }
    let err = fold_event(&t, &mut aggs(&t), &ev("😀", json!(1)), HOUR).expect_err("utf8mb3");
    assert!(
        err.contains("field service") && err.contains("utf8mb3"),
        "{err}"
    );
    // cut to the column's width by characters, never inside one
    let long: String = "é".repeat(40);
    let key = t[0]
        .key(&ev(&long, json!(1)), HOUR)
        .expect("fits")
        .expect("row");
    assert_eq!(key.dims[0].chars().count(), 16);
}

#[test]
fn other_rows_merge_the_folded_keys() {
    let t = tables(SUMS, "datetime", &[]);
    let mut a = aggs(&t);
    for (s, b) in [("x", 1), ("y", 2), ("y", 3)] {
        fold_event(&t, &mut a, &ev(s, json!(b)), HOUR).expect("fits");
    }
    let mut other = t[0].new_row();
    for r in a[0].values() {
        t[0].merge_rows(&mut other, r).expect("fits");
    }
    assert_eq!(other.events, 3);
    assert_eq!(other.state[0], MState::Count(3));
    assert_eq!(other.state[1], MState::IntSum(6));
    assert_eq!(&*t[0].other_key(HOUR).dims[0], OTHER);
}

#[test]
fn peaks_sum_exactly_and_read_back_older_float_state() {
    let peak = r#"
  [[table.measure]]
  op = "peak"
  value = "b"
  by = "hour"
  state_column = "peak_state"
  at_column = "peak_at"
  value_column = "peak_bytes"
"#;
    let t = tables(peak, "datetime", &[]);
    let mut a = aggs(&t);
    fold_event(&t, &mut a, &ev("s", json!(1u64 << 53)), HOUR).expect("fits");
    fold_event(&t, &mut a, &ev("s", json!(1)), HOUR).expect("fits");
    let mut row = only_row(&a[0]).clone();
    let old = br#"{"1772359200000": 2.0, "1772362800000": 5}"#.to_vec();
    let db: DbRow = [("peak_state".to_string(), SqlVal::Bytes(old))]
        .into_iter()
        .collect();
    t[0].merge_db(&mut row, &db).expect("merges");
    let key = t[0]
        .key(&ev("s", json!(0)), HOUR)
        .expect("key")
        .expect("row");
    let out = t[0].output(&key, &row).expect("fits");
    assert_eq!(out[3], SqlVal::DateTime(ms_datetime(HOUR).expect("time")));
    assert_eq!(out[4], SqlVal::Int((1i64 << 53) + 3));
}

#[test]
fn state_too_large_for_its_blob_is_refused_when_written() {
    let q = r#"
  [[table.measure]]
  op = "quantiles"
  sketch_column = "tiny"
  value = "d"
  outputs = { ms = 0.5 }
"#;
    let mut tiny = column("tiny", "blob");
    tiny.max_bytes = Some(2);
    let t = tables(q, "datetime", &[tiny]);
    let mut a = aggs(&t);
    fold_event(&t, &mut a, &ev("s", json!(1)), HOUR).expect("fits");
    let key = t[0]
        .key(&ev("s", json!(0)), HOUR)
        .expect("key")
        .expect("row");
    let err = t[0].output(&key, only_row(&a[0])).expect_err("3+ bytes");
    assert!(err.contains("column tiny"), "{err}");
}

#[test]
fn window_floor_and_filters_still_apply() {
    let filtered = r#"
  where = "b > 10"
  [[table.measure]]
  op = "count"
  column = "n"
"#;
    let t = tables(filtered, "datetime", &[]);
    let mut a = aggs(&t);
    assert!(fold_event(&t, &mut a, &ev("s", json!(1)), HOUR + 59_999).expect("ok"));
    assert!(a[0].is_empty(), "table a's filter excludes it");
    fold_event(&t, &mut a, &ev("s", json!(11)), HOUR + 59_999).expect("ok");
    assert_eq!(a[0].keys().next().map(|k| k.start_ms), Some(HOUR));
}

#[test]
fn a_changed_column_no_longer_matches() {
    let t = tables(SUMS, "datetime", &[]);
    let mut cols = vec![
        column("hour", "datetime"),
        column("service", "varchar"),
        column("n", "bigint"),
        column("bytes", "bigint"),
        column("ms", "double"),
    ];
    assert!(t[0].matches(&cols));
    if let Some(c) = cols.iter_mut().find(|c| c.name == "bytes") {
        c.data_type = "int".into();
    }
    assert!(!t[0].matches(&cols));
    cols.retain(|c| c.name != "bytes");
    assert!(!t[0].matches(&cols));
}

//! The rollup definition: which tables, keyed by which dimensions and window,
//! holding which measures. Deserialized from `processors/*.toml`.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::expr::Expr;

/// A rollup processor definition.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollupDef {
    /// Unique processor name (used in stats and the CLI).
    pub name: String,
    /// Consumer group created on every shard of every kind read.
    pub group: String,
    /// Event kinds read.
    pub kinds: Vec<String>,
    /// Disabled definitions are loaded and checked but not run.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Where the group starts when flowmeter creates it: `beginning`
    /// (default: backfill from retained history), `now`, an RFC 3339 time or
    /// a stream id. An existing group keeps its position.
    #[serde(default)]
    pub start_from: Option<String>,
    /// New dimension keys each table takes per hour, overriding
    /// `rollup.max_new_keys_per_hour` (0 = no limit).
    #[serde(default)]
    pub max_new_keys_per_hour: Option<u64>,
    /// The tables filled, each with its own window.
    #[serde(rename = "table")]
    pub tables: Vec<TableDef>,
}

fn yes() -> bool {
    true
}

/// The time bucket of a table row; always the event's own `ts`, in UTC.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Window {
    Hour,
    Day,
}

impl Window {
    pub fn millis(self) -> i64 {
        match self {
            Window::Hour => 3_600_000,
            Window::Day => 86_400_000,
        }
    }
    /// Start of the bucket containing `ts_ms`.
    pub fn floor(self, ts_ms: i64) -> i64 {
        ts_ms - ts_ms.rem_euclid(self.millis())
    }
}

/// One table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableDef {
    /// SQL table name (created by a migration).
    pub name: String,
    pub window: Window,
    /// Column holding the bucket start (DATETIME for hours, DATE or DATETIME for days).
    pub time_column: String,
    /// Key columns besides time; each is an event field of the same name,
    /// or `{ column = "...", field = "..." }`.
    #[serde(default)]
    pub dimensions: Vec<Dimension>,
    /// Only events matching this expression count toward this table.
    #[serde(default, rename = "where")]
    pub filter: Option<Expr>,
    #[serde(rename = "measure")]
    pub measures: Vec<MeasureDef>,
    /// New dimension keys this table takes per hour, overriding the
    /// processor's and `rollup.max_new_keys_per_hour` (0 = no limit).
    #[serde(default)]
    pub max_new_keys_per_hour: Option<u64>,
}

/// A key column fed from an event field.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Dimension {
    Same(String),
    Mapped { column: String, field: String },
}

impl Dimension {
    pub fn column(&self) -> &str {
        match self {
            Dimension::Same(c) | Dimension::Mapped { column: c, .. } => c,
        }
    }
    pub fn field(&self) -> &str {
        match self {
            Dimension::Same(f) | Dimension::Mapped { field: f, .. } => f,
        }
    }
}

/// One measure. `value` is an expression over the event (e.g. `req_bytes`
/// or `bytes_sent + bytes_received`); `where` restricts which events count.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum MeasureDef {
    /// Number of events.
    Count {
        column: String,
        #[serde(default, rename = "where")]
        filter: Option<Expr>,
    },
    /// Sum of `value`.
    Sum {
        column: String,
        value: Expr,
        #[serde(default, rename = "where")]
        filter: Option<Expr>,
    },
    Min {
        column: String,
        value: Expr,
        #[serde(default, rename = "where")]
        filter: Option<Expr>,
    },
    Max {
        column: String,
        value: Expr,
        #[serde(default, rename = "where")]
        filter: Option<Expr>,
    },
    /// A DDSketch of `value` in `sketch_column`; `outputs` maps columns to quantiles.
    Quantiles {
        sketch_column: String,
        value: Expr,
        outputs: BTreeMap<String, f64>,
        #[serde(default, rename = "where")]
        filter: Option<Expr>,
    },
    /// A HyperLogLog of `value` in `sketch_column`; its estimate in `column`. Null values are not counted.
    Distinct {
        column: String,
        sketch_column: String,
        value: Expr,
        #[serde(default, rename = "where")]
        filter: Option<Expr>,
    },
    /// Counts per class; each event goes to the first class whose `where` holds
    /// (a class without `where` takes the rest).
    Classify {
        classes: Vec<ClassDef>,
        #[serde(default, rename = "where")]
        filter: Option<Expr>,
    },
    /// The `by` bucket (e.g. hour within a day) with the largest sum of `value`:
    /// its start in `at_column`, its sum in `value_column`; per-bucket sums kept in `state_column`.
    Peak {
        value: Expr,
        by: Window,
        state_column: String,
        at_column: String,
        value_column: String,
        #[serde(default, rename = "where")]
        filter: Option<Expr>,
    },
    /// `sum(num columns) / sum(den columns)` of the merged row; `on_zero`
    /// (default NULL) when the denominator is 0.
    Ratio {
        column: String,
        num: Vec<String>,
        den: Vec<String>,
        #[serde(default)]
        on_zero: Option<f64>,
    },
}

/// One class of a `classify` measure.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassDef {
    pub column: String,
    #[serde(default, rename = "where")]
    pub filter: Option<Expr>,
}

impl MeasureDef {
    /// The measure's own `where`, if any (ratios have none).
    pub fn filter(&self) -> Option<&Expr> {
        match self {
            MeasureDef::Count { filter, .. }
            | MeasureDef::Sum { filter, .. }
            | MeasureDef::Min { filter, .. }
            | MeasureDef::Max { filter, .. }
            | MeasureDef::Quantiles { filter, .. }
            | MeasureDef::Distinct { filter, .. }
            | MeasureDef::Classify { filter, .. }
            | MeasureDef::Peak { filter, .. } => filter.as_ref(),
            MeasureDef::Ratio { .. } => None,
        }
    }

    /// Columns this measure writes, and whether each holds sketch/state bytes.
    pub fn columns(&self) -> Vec<&str> {
        match self {
            MeasureDef::Count { column, .. }
            | MeasureDef::Sum { column, .. }
            | MeasureDef::Min { column, .. }
            | MeasureDef::Max { column, .. }
            | MeasureDef::Ratio { column, .. } => vec![column],
            MeasureDef::Quantiles {
                sketch_column,
                outputs,
                ..
            } => std::iter::once(sketch_column.as_str())
                .chain(outputs.keys().map(String::as_str))
                .collect(),
            MeasureDef::Distinct {
                column,
                sketch_column,
                ..
            } => vec![sketch_column, column],
            MeasureDef::Classify { classes, .. } => {
                classes.iter().map(|c| c.column.as_str()).collect()
            }
            MeasureDef::Peak {
                state_column,
                at_column,
                value_column,
                ..
            } => vec![state_column, at_column, value_column],
        }
    }
}

impl RollupDef {
    /// The key budget of `table`: its own, else the processor's, else `global`.
    pub fn key_budget(&self, table: &TableDef, global: u64) -> u64 {
        table
            .max_new_keys_per_hour
            .or(self.max_new_keys_per_hour)
            .unwrap_or(global)
    }

    /// The parsed `start_from` (default `beginning`).
    pub fn start(&self) -> Result<crate::stream::StartFrom, String> {
        match &self.start_from {
            None => Ok(crate::stream::StartFrom::Beginning),
            Some(s) => s.parse(),
        }
    }

    /// Checks what can be checked without the database.
    pub fn check(&self) -> Result<(), String> {
        if self.name.is_empty() || self.group.is_empty() || self.kinds.is_empty() {
            return Err("name, group and kinds must not be empty".into());
        }
        if self.tables.is_empty() {
            return Err("a rollup needs at least one [[table]]".into());
        }
        self.start()?;
        for t in &self.tables {
            let mut cols: Vec<&str> = vec![t.time_column.as_str()];
            cols.extend(t.dimensions.iter().map(Dimension::column));
            for m in &t.measures {
                if let MeasureDef::Quantiles { outputs, .. } = m {
                    if let Some((c, q)) = outputs.iter().find(|(_, q)| !(0.0..=1.0).contains(*q)) {
                        return Err(format!(
                            "table {}: quantile {q} for {c} is outside 0..1",
                            t.name
                        ));
                    }
                }
                if let MeasureDef::Classify { classes, .. } = m {
                    if classes.is_empty() {
                        return Err(format!("table {}: classify needs classes", t.name));
                    }
                }
                if let MeasureDef::Ratio {
                    num, den, column, ..
                } = m
                {
                    for c in num.iter().chain(den) {
                        let known = t.measures.iter().any(|o| o.columns().contains(&c.as_str()));
                        if !known {
                            return Err(format!(
                                "table {}: ratio {column} uses {c}, which no measure of this table writes",
                                t.name
                            ));
                        }
                    }
                }
                cols.extend(m.columns());
            }
            let mut sorted = cols.clone();
            sorted.sort_unstable();
            if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
                return Err(format!(
                    "table {}: column {} is written twice",
                    t.name, w[0]
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(name: &str) -> RollupDef {
        let path = format!("{}/processors/{name}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).expect("read");
        crate::processor::registry::parse_definition::<RollupDef>(&text).expect("a rollup")
    }

    #[test]
    fn shipped_definitions_parse_and_check() {
        for f in ["http_rollup.toml", "webrtc_rollup.toml"] {
            let d = load(f);
            d.check().expect("valid");
            assert_eq!(d.tables.len(), 2);
        }
    }

    #[test]
    fn rejects_mistakes_with_names() {
        let bad = r#"
            type = "rollup"
            name = "x"
            group = "g"
            kinds = ["http"]
            [[table]]
            name = "t"
            window = "hour"
            time_column = "hour"
            [[table.measure]]
            op = "count"
            column = "n"
            colour = "red"
        "#;
        let err = crate::processor::ProcessorConfig::parse(bad).expect_err("unknown key");
        assert!(err.contains("colour"), "{err}");

        let bad = bad.replace("colour = \"red\"", "where = \"status >= \"");
        let err = crate::processor::ProcessorConfig::parse(&bad).expect_err("bad expr");
        assert!(err.contains("expected"), "{err}");
        let err = crate::processor::ProcessorConfig::parse("type = \"rolup\"").expect_err("type");
        assert!(
            err.contains("unknown type \"rolup\"")
                && err.contains("rollup, clickhouse_archive, kafka_bridge"),
            "{err}"
        );
    }

    #[test]
    fn window_floor_is_utc() {
        assert_eq!(Window::Hour.floor(3_600_000 * 5 + 59_999), 3_600_000 * 5);
        assert_eq!(Window::Day.floor(86_400_000 + 1), 86_400_000);
    }
}

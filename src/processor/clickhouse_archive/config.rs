//! `type = "clickhouse_archive"` definitions.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::processor::sink::{BatchConfig, SinkHead};
use crate::processor::{Processor, ProcessorContext, ProcessorError};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveDef {
    pub name: String,
    /// Consumer group (its own: the archive acknowledges independently of the rollups).
    pub group: String,
    pub kinds: Vec<String>,
    /// Off unless set: the archive needs a ClickHouse server.
    #[serde(default)]
    pub enabled: bool,
    /// Where a new group starts (`beginning`, `now`, a time or an id).
    #[serde(default)]
    pub start_from: Option<String>,
    /// Table per kind (default `<kind>_events`).
    #[serde(default)]
    pub tables: BTreeMap<String, String>,
    #[serde(default)]
    pub batch: BatchConfig,
}

impl ArchiveDef {
    /// The fields every sink has.
    pub fn head(&self) -> SinkHead<'_> {
        SinkHead {
            name: &self.name,
            group: &self.group,
            kinds: &self.kinds,
            start_from: self.start_from.as_deref(),
            batch: &self.batch,
        }
    }

    /// The table of `kind`.
    pub fn table(&self, kind: &str) -> String {
        self.tables
            .get(kind)
            .cloned()
            .unwrap_or_else(|| format!("{kind}_events"))
    }

    pub fn check(&self) -> Result<(), String> {
        self.head().check()?;
        for kind in self.tables.keys() {
            if !self.kinds.contains(kind) {
                return Err(format!("tables.{kind}: kind {kind:?} is not in kinds"));
            }
        }
        for k in &self.kinds {
            let t = self.table(k);
            if t.is_empty() || !t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "table {t:?} of kind {k}: use letters, digits and _"
                ));
            }
        }
        Ok(())
    }

    /// Builds the processor: checks that every table exists.
    pub async fn build(&self, ctx: ProcessorContext) -> Result<Box<dyn Processor>, ProcessorError> {
        #[cfg(feature = "clickhouse")]
        {
            super::processor::build(self, ctx).await
        }
        #[cfg(not(feature = "clickhouse"))]
        {
            let _ = ctx;
            Err(crate::processor::sink::missing_feature(
                &self.name,
                "clickhouse",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_shipped_definition_parses_and_is_off() {
        let path = format!(
            "{}/processors/clickhouse_archive.toml",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(path).expect("read");
        let d = crate::processor::registry::parse_definition::<super::ArchiveDef>(&text)
            .expect("an archive");
        assert!(!d.enabled);
        d.check().expect("valid");
        assert_eq!(d.table("http"), "http_events");
        assert_eq!(d.table("other"), "other_events");
        let mut bad = d.clone();
        bad.tables.insert("http".into(), "x; DROP".into());
        assert!(bad.check().is_err());
    }
}

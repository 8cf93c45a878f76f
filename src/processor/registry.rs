//! Loads and checks every processor definition in `processors/`.

use std::path::Path;

use serde::Deserialize;

use super::clickhouse_archive::ArchiveDef;
use super::kafka_bridge::BridgeDef;
use super::rollup::RollupDef;
use super::{Processor, ProcessorContext, ProcessorError};
use crate::event::SchemaRegistry;

/// One definition file, by `type`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ProcessorConfig {
    /// Folds events into MySQL rollup tables (see `processor::rollup`).
    Rollup(RollupDef),
    /// Keeps raw events in ClickHouse (see `processor::clickhouse_archive`).
    ClickhouseArchive(ArchiveDef),
    /// Forwards events to Kafka topics (see `processor::kafka_bridge`).
    KafkaBridge(BridgeDef),
}

impl ProcessorConfig {
    pub fn name(&self) -> &str {
        match self {
            ProcessorConfig::Rollup(d) => &d.name,
            ProcessorConfig::ClickhouseArchive(d) => &d.name,
            ProcessorConfig::KafkaBridge(d) => &d.name,
        }
    }
    pub fn group(&self) -> &str {
        match self {
            ProcessorConfig::Rollup(d) => &d.group,
            ProcessorConfig::ClickhouseArchive(d) => &d.group,
            ProcessorConfig::KafkaBridge(d) => &d.group,
        }
    }
    pub fn kinds(&self) -> &[String] {
        match self {
            ProcessorConfig::Rollup(d) => &d.kinds,
            ProcessorConfig::ClickhouseArchive(d) => &d.kinds,
            ProcessorConfig::KafkaBridge(d) => &d.kinds,
        }
    }
    pub fn enabled(&self) -> bool {
        match self {
            ProcessorConfig::Rollup(d) => d.enabled,
            ProcessorConfig::ClickhouseArchive(d) => d.enabled,
            ProcessorConfig::KafkaBridge(d) => d.enabled,
        }
    }

    /// Checks what can be checked without the database.
    pub fn check(&self) -> Result<(), String> {
        match self {
            ProcessorConfig::Rollup(d) => d.check(),
            ProcessorConfig::ClickhouseArchive(d) => d.check(),
            ProcessorConfig::KafkaBridge(d) => d.check(),
        }
    }

    /// Builds the running component (checks the definition against the database).
    pub async fn build(&self, ctx: ProcessorContext) -> Result<Box<dyn Processor>, ProcessorError> {
        match self {
            ProcessorConfig::Rollup(d) => Ok(Box::new(d.build(ctx).await?)),
            ProcessorConfig::ClickhouseArchive(d) => d.build(ctx).await,
            ProcessorConfig::KafkaBridge(d) => d.build(ctx).await,
        }
    }
}

/// All definitions of a directory.
#[derive(Debug, Clone, Default)]
pub struct ProcessorRegistry {
    pub processors: Vec<ProcessorConfig>,
    /// The alert rules (`type = "alerts"`, e.g. processors/alerts.toml).
    pub alerts: crate::alert::AlertRules,
}

impl ProcessorRegistry {
    /// Reads `dir/*.toml`, validating each against the known event kinds.
    pub fn load(dir: &Path, schemas: &SchemaRegistry) -> Result<Self, ProcessorError> {
        let bad = |file: &Path, reason: String| ProcessorError::Definition {
            file: file.display().to_string(),
            reason,
        };
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| bad(dir, e.to_string()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        let mut processors: Vec<ProcessorConfig> = Vec::new();
        let mut alerts = crate::alert::AlertRules {
            kind: "alerts".into(),
            rules: Vec::new(),
        };
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(|e| bad(&file, e.to_string()))?;
            let is_alerts = toml::from_str::<toml::Table>(&text)
                .ok()
                .and_then(|t| {
                    t.get("type")
                        .and_then(|v| v.as_str())
                        .map(|t| t == "alerts")
                })
                .unwrap_or(false);
            if is_alerts {
                let rules: crate::alert::AlertRules =
                    toml::from_str(&text).map_err(|e| bad(&file, e.to_string()))?;
                rules.check().map_err(|reason| bad(&file, reason))?;
                alerts.rules.extend(rules.rules);
                continue;
            }
            let def: ProcessorConfig =
                toml::from_str(&text).map_err(|e| bad(&file, e.to_string()))?;
            for kind in def.kinds() {
                if schemas.kind_index(kind).is_none() {
                    return Err(bad(
                        &file,
                        format!("reads kind {kind:?}, which has no schema in schemas/"),
                    ));
                }
            }
            def.check().map_err(|reason| bad(&file, reason))?;
            for other in &processors {
                if other.name() == def.name() {
                    return Err(bad(
                        &file,
                        format!("processor name {:?} is used twice", def.name()),
                    ));
                }
                let overlap = other.kinds().iter().find(|k| def.kinds().contains(k));
                if let (true, Some(k)) = (other.group() == def.group(), overlap) {
                    return Err(bad(
                        &file,
                        format!(
                            "group {:?} already reads kind {k:?} for processor {:?}; give this one its own group",
                            def.group(),
                            other.name()
                        ),
                    ));
                }
            }
            processors.push(def);
        }
        alerts.check().map_err(|reason| bad(dir, reason))?;
        Ok(Self { processors, alerts })
    }

    pub fn get(&self, name: &str) -> Option<&ProcessorConfig> {
        self.processors.iter().find(|p| p.name() == name)
    }

    pub fn enabled(&self) -> impl Iterator<Item = &ProcessorConfig> {
        self.processors.iter().filter(|p| p.enabled())
    }
}

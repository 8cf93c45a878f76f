//! Loads and checks every processor definition in `processors/`.

use std::path::{Path, PathBuf};

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
}

/// The `type` of the files of processors/ that hold alert rules: the
/// registry skips them, `alert::AlertRules::load` reads them.
pub const ALERTS_TYPE: &str = "alerts";

/// The `type` of the files of processors/ that declare realtime views: the
/// registry skips them, `view::Views::load` reads them.
pub const VIEW_TYPE: &str = "view";

/// The `*.toml` files of `dir`, sorted by name, with their text.
pub fn definition_files(dir: &Path) -> Result<Vec<(PathBuf, String)>, ProcessorError> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| definition_error(dir, e.to_string()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|file| match std::fs::read_to_string(&file) {
            Ok(text) => Ok((file, text)),
            Err(e) => Err(definition_error(&file, e.to_string())),
        })
        .collect()
}

/// The `type` a definition file's text declares, if it parses as TOML.
pub fn definition_type(text: &str) -> Option<String> {
    let table = toml::from_str::<toml::Table>(text).ok()?;
    Some(table.get("type")?.as_str()?.to_string())
}

/// What is wrong with the definition file (or directory) `file`.
pub fn definition_error(file: &Path, reason: String) -> ProcessorError {
    ProcessorError::Definition {
        file: file.display().to_string(),
        reason,
    }
}

impl ProcessorRegistry {
    /// Reads `dir/*.toml`, validating each against the known event kinds.
    /// Files of type [`ALERTS_TYPE`] and `view` are not processors and are
    /// skipped.
    pub fn load(dir: &Path, schemas: &SchemaRegistry) -> Result<Self, ProcessorError> {
        let bad = definition_error;
        let mut processors: Vec<ProcessorConfig> = Vec::new();
        for (file, text) in definition_files(dir)? {
            let kind = definition_type(&text);
            if kind.as_deref() == Some(ALERTS_TYPE) || kind.as_deref() == Some(VIEW_TYPE) {
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
        Ok(Self { processors })
    }

    pub fn get(&self, name: &str) -> Option<&ProcessorConfig> {
        self.processors.iter().find(|p| p.name() == name)
    }

    pub fn enabled(&self) -> impl Iterator<Item = &ProcessorConfig> {
        self.processors.iter().filter(|p| p.enabled())
    }
}

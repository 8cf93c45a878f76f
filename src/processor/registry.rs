//! Loads and checks every processor definition in `processors/`.

use std::path::{Path, PathBuf};

use std::any::Any;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::de::DeserializeOwned;

use super::{Processor, ProcessorContext, ProcessorError};
use crate::event::SchemaRegistry;

/// What every processor definition answers, whatever its type. A type's
/// definition struct implements it in its own module (`config.rs`), and
/// builds its running component from it (the config builds the component).
pub trait Definition: std::fmt::Debug + Send + Sync + 'static {
    fn name(&self) -> &str;
    /// The consumer group it reads with.
    fn group(&self) -> &str;
    /// The event kinds it reads.
    fn kinds(&self) -> &[String];
    fn enabled(&self) -> bool;
    /// Checks what can be checked without the database or the sink.
    fn check(&self) -> Result<(), String>;
    /// Builds the running component (checks the definition against the
    /// database or the sink).
    fn build(
        &self,
        ctx: ProcessorContext,
    ) -> BoxFuture<'_, Result<Box<dyn Processor>, ProcessorError>>;
    /// For callers that need one type's own definition
    /// ([`ProcessorConfig::get`]).
    fn as_any(&self) -> &dyn Any;
}

/// A processor type: the `type` of its files and how one is read. Each
/// type's module declares its own (`rollup::TYPE`, …); [`TYPES`] lists them.
pub struct ProcessorType {
    pub name: &'static str,
    /// Reads a definition file's text (its `type` key already matched).
    pub parse: fn(&str) -> Result<Arc<dyn Definition>, String>,
}

/// Every processor type. A new type is a directory under `processor/` with
/// its definition (implementing [`Definition`]) and its `TYPE`, plus one
/// line here.
pub const TYPES: &[ProcessorType] = &[
    super::rollup::TYPE,
    super::clickhouse_archive::TYPE,
    super::kafka_bridge::TYPE,
];

/// Declares a processor type in its module: `pub const TYPE` and the
/// [`Definition`] of its definition struct, whose `name`, `group`, `kinds`
/// and `enabled` fields every type has, and whose own `check` and async
/// `build` (returning anything that boxes into a `Box<dyn Processor>`) it
/// calls.
#[macro_export]
macro_rules! processor_type {
    ($def:ty, $name:literal) => {
        /// This processor type (listed in `processor::registry::TYPES`).
        pub const TYPE: $crate::processor::ProcessorType = $crate::processor::ProcessorType {
            name: $name,
            parse: |text| {
                Ok(std::sync::Arc::new(
                    $crate::processor::registry::parse_definition::<$def>(text)?,
                ))
            },
        };

        impl $crate::processor::Definition for $def {
            fn name(&self) -> &str {
                &self.name
            }
            fn group(&self) -> &str {
                &self.group
            }
            fn kinds(&self) -> &[String] {
                &self.kinds
            }
            fn enabled(&self) -> bool {
                self.enabled
            }
            fn check(&self) -> Result<(), String> {
                <$def>::check(self)
            }
            fn build(
                &self,
                ctx: $crate::processor::ProcessorContext,
            ) -> futures::future::BoxFuture<
                '_,
                Result<Box<dyn $crate::processor::Processor>, $crate::processor::ProcessorError>,
            > {
                Box::pin(async move {
                    let built = <$def>::build(self, ctx).await?;
                    Ok($crate::processor::registry::boxed(built))
                })
            }
            fn as_any(&self) -> &dyn std::any::Any {
                self
            }
        }
    };
}

/// A built processor as the registry hands it out.
pub trait IntoBoxed {
    fn boxed(self) -> Box<dyn Processor>;
}

impl IntoBoxed for Box<dyn Processor> {
    fn boxed(self) -> Box<dyn Processor> {
        self
    }
}

impl<P: Processor + 'static> IntoBoxed for P {
    fn boxed(self) -> Box<dyn Processor> {
        Box::new(self)
    }
}

/// [`IntoBoxed::boxed`], for [`processor_type!`].
pub fn boxed(p: impl IntoBoxed) -> Box<dyn Processor> {
    p.boxed()
}

/// Reads a definition file's text as `T`, without its `type` key (which
/// picked `T`): what a type's `parse` calls.
pub fn parse_definition<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    let mut table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
    table.remove("type");
    T::deserialize(table).map_err(|e| e.to_string())
}

/// One definition file, of any type.
#[derive(Debug, Clone)]
pub struct ProcessorConfig {
    type_name: &'static str,
    def: Arc<dyn Definition>,
}

impl ProcessorConfig {
    /// Reads a definition file's text: its `type` picks the type.
    pub fn parse(text: &str) -> Result<Self, String> {
        let table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        let Some(kind) = table.get("type").and_then(|t| t.as_str()) else {
            return Err(format!(
                "no `type`: a processor file starts with type = \"{}\"",
                TYPES.first().map_or("rollup", |t| t.name)
            ));
        };
        let Some(t) = TYPES.iter().find(|t| t.name == kind) else {
            let names: Vec<&str> = TYPES.iter().map(|t| t.name).collect();
            return Err(format!(
                "unknown type {kind:?}: use {}, or {ALERTS_TYPE} or {VIEW_TYPE} for rules and views",
                names.join(", ")
            ));
        };
        Ok(Self {
            type_name: t.name,
            def: (t.parse)(text)?,
        })
    }

    /// The file's `type`.
    pub fn type_name(&self) -> &str {
        self.type_name
    }

    /// The definition when it is a `T` (`RollupDef`, `ArchiveDef`, …).
    pub fn get<T: 'static>(&self) -> Option<&T> {
        self.def.as_any().downcast_ref::<T>()
    }

    pub fn name(&self) -> &str {
        self.def.name()
    }
    pub fn group(&self) -> &str {
        self.def.group()
    }
    pub fn kinds(&self) -> &[String] {
        self.def.kinds()
    }
    pub fn enabled(&self) -> bool {
        self.def.enabled()
    }

    /// Checks what can be checked without the database.
    pub fn check(&self) -> Result<(), String> {
        self.def.check()
    }

    /// Builds the running component (checks the definition against the database).
    pub async fn build(&self, ctx: ProcessorContext) -> Result<Box<dyn Processor>, ProcessorError> {
        self.def.build(ctx).await
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
            let def = ProcessorConfig::parse(&text).map_err(|e| bad(&file, e))?;
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

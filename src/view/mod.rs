//! Realtime views, declared in `processors/` (`type = "view"` files): which
//! channels an event kind has, what each second of a channel adds up, and
//! what its summaries, top lists and member lists show. The hub folds the
//! streams into windows per subject and asks a view for the JSON; alert
//! rules name a view, a scope and a measure. Nothing here knows `http` or
//! `webrtc`: they are `processors/http_view.toml` and
//! `processors/webrtc_view.toml` (docs/views.md).
//!
//! - `def.rs`: the file as written;
//! - `compile.rs`: the checked, compiled view (slots, expressions);
//! - `render.rs`: points, measures and summaries as JSON;
//! - `channel.rs`: the channel grammar.

mod channel;
mod compile;
pub mod def;
mod render;

use std::path::Path;
use std::sync::Arc;

pub use channel::{Channel, Target};
pub use compile::{Field, List, Measure, Members, Scope, Top, View};
pub use render::Cells;

use crate::event::SchemaRegistry;
pub use crate::processor::registry::VIEW_TYPE;
use crate::processor::registry::{definition_error, definition_files, definition_type};
use crate::processor::{ProcessorError, ProcessorRegistry};

/// Every view of a deployment.
#[derive(Debug, Clone, Default)]
pub struct Views {
    views: Vec<Arc<View>>,
}

/// Where an alert rule looks: a view's scope and one of its measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeasureRef {
    pub view: usize,
    pub scope: usize,
    pub measure: usize,
}

impl Views {
    /// Reads and checks every `type = "view"` file of `dir`, in file-name
    /// order. Errors name the file and the key.
    pub fn load(
        dir: &Path,
        schemas: &SchemaRegistry,
        processors: &ProcessorRegistry,
    ) -> Result<Self, ProcessorError> {
        let mut views: Vec<Arc<View>> = Vec::new();
        for (file, text) in definition_files(dir)? {
            if definition_type(&text).as_deref() != Some(VIEW_TYPE) {
                continue;
            }
            let def: def::ViewDef =
                toml::from_str(&text).map_err(|e| definition_error(&file, e.to_string()))?;
            let Some(info) = schemas.kind_index(&def.kind).and_then(|i| schemas.kind(i)) else {
                return Err(definition_error(
                    &file,
                    format!("reads kind {:?}, which has no schema in schemas/", def.kind),
                ));
            };
            let properties = info.properties.clone();
            let view = View::compile(def, processors, &properties)
                .map_err(|r| definition_error(&file, r))?;
            if views.iter().any(|v| v.name == view.name) {
                return Err(definition_error(
                    &file,
                    format!("view name {:?} is used twice", view.name),
                ));
            }
            if view.name == "alerts" {
                return Err(definition_error(
                    &file,
                    "view name \"alerts\" is the alerts channel's".into(),
                ));
            }
            views.push(Arc::new(view));
        }
        Ok(Self { views })
    }

    /// The views of a tree's `schemas/` and `processors/` (tests).
    #[cfg(test)]
    pub fn of_repo() -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let schemas = SchemaRegistry::load(&root.join("schemas")).expect("schemas/");
        let processors =
            ProcessorRegistry::load(&root.join("processors"), &schemas).expect("processors/");
        Self::load(&root.join("processors"), &schemas, &processors).expect("views")
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<View>> {
        self.views.iter()
    }

    pub fn get(&self, i: usize) -> Option<&Arc<View>> {
        self.views.get(i)
    }

    pub fn len(&self) -> usize {
        self.views.len()
    }

    pub fn is_empty(&self) -> bool {
        self.views.is_empty()
    }

    /// The measure `measure` of scope `scope` of view `view`, as an alert
    /// rule names it; the error says what exists.
    pub fn measure_ref(
        &self,
        view: &str,
        scope: &str,
        measure: &str,
    ) -> Result<MeasureRef, String> {
        let names = |v: &mut dyn Iterator<Item = &str>| v.collect::<Vec<_>>().join(", ");
        let Some((vi, v)) = self.views.iter().enumerate().find(|(_, v)| v.name == view) else {
            return Err(format!(
                "view {view:?} does not exist: the views are {}",
                names(&mut self.views.iter().map(|v| v.name.as_str()))
            ));
        };
        let Some(si) = v.scopes.iter().position(|s| s.name == scope) else {
            return Err(format!(
                "view {view:?} has no scope {scope:?}: it has {}",
                names(&mut v.scopes.iter().map(|s| s.name.as_str()))
            ));
        };
        let scalar = |m: &Measure| m.is_scalar();
        let Some(mi) = v
            .measures
            .iter()
            .position(|m| m.name == measure && scalar(m))
        else {
            return Err(format!(
                "view {view:?} has no measure {measure:?} with one value: it has {}",
                names(
                    &mut v
                        .measures
                        .iter()
                        .filter(|m| scalar(m))
                        .map(|m| m.name.as_str())
                )
            ));
        };
        Ok(MeasureRef {
            view: vi,
            scope: si,
            measure: mi,
        })
    }

    /// The measure a [`MeasureRef`] points at, with its view and scope.
    pub fn resolve(&self, r: MeasureRef) -> Option<(&View, &Scope, &Measure)> {
        let v = self.views.get(r.view)?;
        Some((v, v.scopes.get(r.scope)?, v.measures.get(r.measure)?))
    }
}

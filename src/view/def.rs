//! A view definition as written: a `type = "view"` file in `processors/`
//! (see docs/views.md for every key, and `processors/http_view.toml`).

use serde::Deserialize;

use crate::expr::Expr;

/// One `type = "view"` file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewDef {
    /// Always `view`.
    #[serde(rename = "type")]
    pub kind_of_file: String,
    /// The channels' first part (`http` → `http:overview`); alert rules name
    /// the view by it.
    pub name: String,
    /// The event kind it reads (a schema in `schemas/`).
    pub kind: String,
    /// The point field counting every event (for alert rules' `min_events`).
    pub events: String,
    #[serde(rename = "scope")]
    pub scopes: Vec<ScopeDef>,
    #[serde(rename = "point")]
    pub points: Vec<PointDef>,
    /// The value whose quantiles the summaries and 1-minute series show.
    #[serde(default)]
    pub sketch: Option<SketchDef>,
    #[serde(default, rename = "measure")]
    pub measures: Vec<MeasureDef>,
    #[serde(default, rename = "top")]
    pub tops: Vec<TopDef>,
    #[serde(default)]
    pub members: Option<MembersDef>,
    #[serde(default, rename = "list")]
    pub lists: Vec<ListDef>,
}

/// A family of channels: `<view>:<scope>:<dim>:…`, or `<view>:<scope>`
/// alone when it has no dimensions (one channel holding every event).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeDef {
    pub name: String,
    /// Event fields whose values name a subject, in channel order.
    #[serde(default)]
    pub dims: Vec<String>,
}

/// An additive figure of one second (and one minute).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointDef {
    pub name: String,
    pub op: PointOp,
    /// sum: the value added per event.
    #[serde(default)]
    pub value: Option<Expr>,
    /// count, sum: only events for which this holds.
    #[serde(default, rename = "where")]
    pub filter: Option<Expr>,
    /// sum: a whole number (values that are not non-negative integers add 0).
    #[serde(default)]
    pub integer: bool,
    /// classes: the classes, in order (an event goes to the first whose
    /// `where` holds; one without `where` takes the rest).
    #[serde(default)]
    pub classes: Vec<ClassDef>,
    /// classes: take them from this rollup processor's `classify` measure
    /// instead (its columns named `<this field>_<class>`), so live and
    /// historical classes agree.
    #[serde(default)]
    pub rollup: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PointOp {
    Count,
    Sum,
    /// Events per class: an array of counts.
    Classes,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassDef {
    pub name: String,
    #[serde(default, rename = "where")]
    pub filter: Option<Expr>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SketchDef {
    pub value: Expr,
}

/// A figure of a summary window (1 minute, 5 minutes) or of an alert rule's
/// window, computed from the window's total point.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeasureDef {
    pub name: String,
    pub op: MeasureOp,
    /// The point fields it adds up (rate, total, ratio, avg; classes: one).
    #[serde(default)]
    pub of: Vec<String>,
    /// ratio, avg: the denominator (a point field).
    #[serde(default)]
    pub per: Option<String>,
    /// rate: a factor (8 turns bytes into bits).
    #[serde(default = "one")]
    pub scale: f64,
    /// quantile: which one (0 to 1).
    #[serde(default)]
    pub q: Option<f64>,
    /// Shown in the channels' summaries (false: for alert rules only).
    #[serde(default = "yes")]
    pub summary: bool,
    /// Its name in an alert message ("Error rate (4xx + 5xx)").
    #[serde(default)]
    pub label: Option<String>,
    /// How an alert message writes its values: `bytes/s` (as bits/s),
    /// `percent` (a ratio), `ms`, or any other unit written after the
    /// number (`req/s`).
    #[serde(default)]
    pub unit: Option<String>,
}

fn one() -> f64 {
    1.0
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MeasureOp {
    /// sum(of) × scale / window seconds.
    Rate,
    /// sum(of), a whole number when every field is.
    Total,
    /// sum(of) / per; 0 when per is 0.
    Ratio,
    /// sum(of) / per; null when per is 0.
    Avg,
    /// The classes field `of` as `{class: count}`.
    Classes,
    /// `{p50, p95, p99}` of the sketch (ms, two decimals; null when empty).
    Quantiles,
    /// Quantile `q` of the sketch (0 when empty).
    Quantile,
}

/// The busiest subjects of one scope, listed in the summaries of others.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopDef {
    /// The summary key.
    pub name: String,
    /// The scope whose subjects are ranked.
    pub scope: String,
    /// The scopes whose summaries show it; each lists the subjects whose
    /// dimensions match its own (a service lists its own endpoints).
    #[serde(rename = "in")]
    pub shown_in: Vec<String>,
    /// The row's figure: rate of `of` over `window_secs`.
    pub by: String,
    pub of: Vec<String>,
    #[serde(default = "sixty")]
    pub window_secs: i64,
}

fn sixty() -> i64 {
    60
}

/// Who is active (a meeting's peers): members keyed by event fields, each
/// forgotten `hub.active_secs` after its last event, at most `hub.max_peers`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MembersDef {
    pub key: Vec<String>,
    /// The summary key of the active members' count.
    pub count: String,
    /// Summary keys of distinct values of one key field among them.
    #[serde(default)]
    pub distinct: std::collections::BTreeMap<String, String>,
}

/// A channel `<view>:<name>` listing the subjects of a scope that have
/// active members, with figures over `window_secs`, busiest first (at most
/// `hub.max_meetings_listed`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListDef {
    pub name: String,
    pub scope: String,
    #[serde(default = "sixty")]
    pub window_secs: i64,
    /// The summary key of how many subjects are active.
    pub count: String,
    /// The summary key of the rows.
    pub rows: String,
    /// The row key of a subject's active members.
    pub members: String,
    /// Measures in each row (no quantiles).
    pub columns: Vec<String>,
    /// Row key → classes field: the row's most frequent class.
    #[serde(default)]
    pub dominant: std::collections::BTreeMap<String, String>,
    /// The summary key listing the class names of the `dominant` field.
    #[serde(default)]
    pub class_names: Option<String>,
    /// The measure rows are ordered by (descending).
    pub order_by: String,
}

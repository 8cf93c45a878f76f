//! A view definition checked and compiled: point fields laid out in slots,
//! measures and lists pointing at slots and scopes by index.

use std::collections::HashSet;

use super::def::{MeasureOp, PointOp, ViewDef};
use crate::expr::Expr;
use crate::processor::rollup::{MeasureDef as RollupMeasure, RollupDef};
use crate::processor::ProcessorRegistry;

/// Longest name of a view, scope, field, measure or list.
const MAX_NAME: usize = 64;

/// Keys of the series beside the point fields: a field may not take them.
const SERIES_KEYS: [&str; 6] = ["t", "start", "step_ms", "p50", "p95", "p99"];

/// Fails when `keys` names one key twice: `what` says which object.
fn unique<'a>(what: &str, keys: impl IntoIterator<Item = &'a str>) -> Result<(), String> {
    let mut seen = HashSet::new();
    for k in keys {
        if !seen.insert(k) {
            return Err(format!("{what} would hold the key {k:?} twice: rename one"));
        }
    }
    Ok(())
}

/// A view, ready to fold events and render channels.
#[derive(Debug)]
pub struct View {
    pub name: String,
    pub kind: String,
    pub scopes: Vec<Scope>,
    pub fields: Vec<Field>,
    /// Slots of a point (a classes field takes one per class).
    pub width: usize,
    /// The slot counting every event.
    pub events: usize,
    pub sketch: Option<Expr>,
    pub measures: Vec<Measure>,
    pub tops: Vec<Top>,
    pub members: Option<Members>,
    pub lists: Vec<List>,
}

#[derive(Debug)]
pub struct Scope {
    pub name: String,
    pub dims: Vec<String>,
}

#[derive(Debug)]
pub struct Field {
    pub name: String,
    pub op: PointOp,
    pub value: Option<Expr>,
    pub filter: Option<Expr>,
    /// Rendered as a whole number (counts, integer sums, classes).
    pub integer: bool,
    pub slot: usize,
    /// classes: (name, condition; `None` takes the rest).
    pub classes: Vec<(String, Option<Expr>)>,
}

#[derive(Debug)]
pub struct Measure {
    pub name: String,
    pub op: MeasureOp,
    /// Slots added up (classes: the field's first slot).
    pub of: Vec<usize>,
    pub per: Option<usize>,
    pub scale: f64,
    pub q: f64,
    pub summary: bool,
    /// Whether the value is a whole number (a total of whole numbers).
    pub integer: bool,
    /// classes: the field's index.
    pub field: Option<usize>,
    pub label: String,
    pub unit: Option<String>,
}

impl Measure {
    /// Reads the view's sketch (quantiles).
    pub fn needs_sketch(&self) -> bool {
        matches!(self.op, MeasureOp::Quantiles | MeasureOp::Quantile)
    }

    /// One number (what an alert rule can compare).
    pub fn is_scalar(&self) -> bool {
        !matches!(self.op, MeasureOp::Classes | MeasureOp::Quantiles)
    }
}

#[derive(Debug)]
pub struct Top {
    pub name: String,
    pub scope: usize,
    pub shown_in: Vec<usize>,
    pub by: String,
    pub of: Vec<usize>,
    pub window_secs: i64,
}

#[derive(Debug)]
pub struct Members {
    pub key: Vec<String>,
    pub count: String,
    /// (summary key, index in `key`).
    pub distinct: Vec<(String, usize)>,
}

#[derive(Debug)]
pub struct List {
    pub name: String,
    pub scope: usize,
    pub window_secs: i64,
    pub count: String,
    pub rows: String,
    pub members: String,
    pub columns: Vec<usize>,
    /// (row key, classes field index).
    pub dominant: Vec<(String, usize)>,
    pub class_names: Option<(String, usize)>,
    pub order_by: usize,
}

fn check_name(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.chars().count() <= MAX_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} {name:?}: use 1 to {MAX_NAME} letters, digits, _ or -"
        ))
    }
}

/// The classes of the first `classify` measure of rollup `name`, its
/// columns named `<field>_<class>`.
fn rollup_classes(
    processors: &ProcessorRegistry,
    name: &str,
    field: &str,
    kind: &str,
) -> Result<Vec<(String, Option<Expr>)>, String> {
    let Some(def) = processors.get(name).and_then(|p| p.get::<RollupDef>()) else {
        return Err(format!(
            "point {field:?}: rollup = {name:?} names no rollup processor"
        ));
    };
    if !def.kinds.iter().any(|k| k == kind) {
        return Err(format!(
            "point {field:?}: rollup {name:?} does not read kind {kind:?}"
        ));
    }
    let prefix = format!("{field}_");
    for t in &def.tables {
        for m in &t.measures {
            if let RollupMeasure::Classify { classes, .. } = m {
                return Ok(classes
                    .iter()
                    .map(|c| {
                        let n = c.column.strip_prefix(&prefix).unwrap_or(&c.column);
                        (n.to_string(), c.filter.clone())
                    })
                    .collect());
            }
        }
    }
    Err(format!(
        "point {field:?}: rollup {name:?} has no classify measure"
    ))
}

impl View {
    /// Checks `def` and lays it out; the error names the key at fault.
    /// `properties`: the event fields the kind's schema declares (every
    /// dimension, member key and expression must read one of them).
    pub fn compile(
        def: ViewDef,
        processors: &ProcessorRegistry,
        properties: &[String],
    ) -> Result<View, String> {
        if def.kind_of_file != super::VIEW_TYPE {
            return Err("type must be \"view\"".into());
        }
        let known = |what: &str, field: &str| {
            if properties.iter().any(|p| p == field) {
                Ok(())
            } else {
                Err(format!(
                    "{what} reads {field:?}, which is not a property of the {} schema",
                    def.kind
                ))
            }
        };
        let read = |what: &str, e: Option<&Expr>| -> Result<(), String> {
            for f in e.map(Expr::fields).unwrap_or_default() {
                known(what, &f)?;
            }
            Ok(())
        };
        for s in &def.scopes {
            for d in &s.dims {
                known(&format!("scope {:?}", s.name), d)?;
            }
        }
        for p in &def.points {
            let what = format!("point {:?}", p.name);
            read(&what, p.value.as_ref())?;
            read(&what, p.filter.as_ref())?;
            for c in &p.classes {
                read(&what, c.filter.as_ref())?;
            }
        }
        read("sketch", def.sketch.as_ref().map(|s| &s.value))?;
        if let Some(m) = &def.members {
            for k in &m.key {
                known("members", k)?;
            }
            // each subject's members are then its share of the view's:
            // together at most hub.max_peers per scope
            for s in &def.scopes {
                if let Some(d) = s.dims.iter().find(|d| !m.key.contains(d)) {
                    return Err(format!(
                        "members: key must hold every dimension of every scope (scope {:?} has {d:?})",
                        s.name
                    ));
                }
            }
        }
        check_name("view name", &def.name)?;
        if def.scopes.is_empty() {
            return Err("a view needs at least one [[scope]]".into());
        }
        let mut channel_names = HashSet::new();
        let mut scopes = Vec::new();
        for s in def.scopes {
            check_name("scope name", &s.name)?;
            if !channel_names.insert(s.name.clone()) {
                return Err(format!("scope {:?} is named twice", s.name));
            }
            if s.dims.iter().any(|d| d.is_empty()) {
                return Err(format!("scope {:?}: a dimension is empty", s.name));
            }
            scopes.push(Scope {
                name: s.name,
                dims: s.dims,
            });
        }
        let scope_index = |what: &str, name: &str| {
            scopes
                .iter()
                .position(|s| s.name == name)
                .ok_or_else(|| format!("{what}: no scope is named {name:?}"))
        };
        let mut fields: Vec<Field> = Vec::new();
        let mut width = 0;
        for p in def.points {
            check_name("point name", &p.name)?;
            if SERIES_KEYS.contains(&p.name.as_str()) || fields.iter().any(|f| f.name == p.name) {
                return Err(format!(
                    "point {:?} is named twice, or takes a series key ({})",
                    p.name,
                    SERIES_KEYS.join(", ")
                ));
            }
            let bad = |m: &str| Err(format!("point {:?}: {m}", p.name));
            let classes = match p.op {
                PointOp::Count if p.value.is_some() => return bad("count takes no value"),
                PointOp::Sum if p.value.is_none() => return bad("sum needs a value"),
                PointOp::Sum
                    if p.integer
                        && p.value.as_ref().is_some_and(|v| {
                            v.fields().len() != 1 || v.fields().first().map(String::as_str) != Some(v.source().trim())
                        }) =>
                {
                    return bad("integer = true sums a bare field (its whole values); drop integer to sum an expression")
                }
                PointOp::Classes => match (&p.rollup, p.classes.is_empty()) {
                    (Some(r), true) => rollup_classes(processors, r, &p.name, &def.kind)?,
                    (None, false) => p
                        .classes
                        .iter()
                        .map(|c| (c.name.clone(), c.filter.clone()))
                        .collect(),
                    _ => return bad("classes needs either classes = [...] or rollup = \"...\""),
                },
                _ if !p.classes.is_empty() || p.rollup.is_some() => {
                    return bad("only op = \"classes\" takes classes or rollup")
                }
                _ => Vec::new(),
            };
            let slot = width;
            width += if p.op == PointOp::Classes {
                classes.len()
            } else {
                1
            };
            fields.push(Field {
                integer: p.op != PointOp::Sum || p.integer,
                name: p.name,
                op: p.op,
                value: p.value,
                filter: p.filter,
                slot,
                classes,
            });
        }
        let field_index = |what: &str, name: &str| {
            fields
                .iter()
                .position(|f| f.name == name)
                .ok_or_else(|| format!("{what}: no point field is named {name:?}"))
        };
        let scalar_slot = |what: &str, name: &str| -> Result<usize, String> {
            let i = field_index(what, name)?;
            match fields.get(i) {
                Some(f) if f.op != PointOp::Classes => Ok(f.slot),
                _ => Err(format!("{what}: {name:?} is a classes field, not a number")),
            }
        };
        let events = {
            let i = field_index("events", &def.events)?;
            match fields.get(i) {
                Some(f) if f.op == PointOp::Count && f.filter.is_none() => f.slot,
                _ => {
                    return Err(format!(
                        "events = {:?} must name a count without where",
                        def.events
                    ))
                }
            }
        };
        let mut measures: Vec<Measure> = Vec::new();
        let mut measure_names = HashSet::new();
        for m in def.measures {
            check_name("measure name", &m.name)?;
            if !measure_names.insert(m.name.clone()) {
                return Err(format!("measure {:?} is named twice", m.name));
            }
            let what = format!("measure {:?}", m.name);
            let bad = |r: &str| Err(format!("{what}: {r}"));
            let needs_sketch = matches!(m.op, MeasureOp::Quantiles | MeasureOp::Quantile);
            if needs_sketch && def.sketch.is_none() {
                return bad("quantiles need a [sketch]");
            }
            let takes_of = !needs_sketch;
            if takes_of && m.of.is_empty() {
                return bad("needs of = [point fields]");
            }
            if !takes_of && !m.of.is_empty() {
                return bad("quantiles take no of");
            }
            let needs_per = matches!(m.op, MeasureOp::Ratio | MeasureOp::Avg);
            if needs_per != m.per.is_some() {
                return bad("per (the denominator) is for ratio and avg only, and they need it");
            }
            if !m.scale.is_finite() || (m.op != MeasureOp::Rate && m.scale != 1.0) {
                return bad("scale is a finite number, for rate only");
            }
            let q = match (m.op, m.q) {
                (MeasureOp::Quantile, Some(q)) if (0.0..=1.0).contains(&q) => q,
                (MeasureOp::Quantile, _) => return bad("q must be 0 to 1"),
                (_, Some(_)) => return bad("q is for quantile only"),
                (_, None) => 0.0,
            };
            let (of, field, integer) = if m.op == MeasureOp::Classes {
                let [name] = m.of.as_slice() else {
                    return bad("classes takes one classes field");
                };
                let i = field_index(&what, name)?;
                match fields.get(i) {
                    Some(f) if f.op == PointOp::Classes => (vec![f.slot], Some(i), true),
                    _ => return bad("of must be a classes field"),
                }
            } else {
                let mut slots = Vec::new();
                let mut integer = true;
                for name in &m.of {
                    slots.push(scalar_slot(&what, name)?);
                    integer &= fields.iter().any(|f| &f.name == name && f.integer);
                }
                (slots, None, integer && m.op == MeasureOp::Total)
            };
            let per = match &m.per {
                Some(p) => Some(scalar_slot(&what, p)?),
                None => None,
            };
            measures.push(Measure {
                label: m.label.unwrap_or_else(|| m.name.clone()),
                name: m.name,
                op: m.op,
                of,
                per,
                scale: m.scale,
                q,
                summary: m.summary,
                integer,
                field,
                unit: m.unit,
            });
        }
        let mut tops = Vec::new();
        for t in def.tops {
            check_name("top name", &t.name)?;
            let what = format!("top {:?}", t.name);
            let scope = scope_index(&what, &t.scope)?;
            let ranked = &scopes
                .get(scope)
                .map(|s| s.dims.clone())
                .unwrap_or_default();
            let mut shown_in = Vec::new();
            for s in &t.shown_in {
                let i = scope_index(&what, s)?;
                let dims = scopes.get(i).map(|s| &s.dims);
                if dims.is_some_and(|d| d.iter().any(|x| !ranked.contains(x))) {
                    return Err(format!(
                        "{what}: scope {s:?} has a dimension the ranked scope {:?} lacks",
                        t.scope
                    ));
                }
                shown_in.push(i);
            }
            if !(1..=300).contains(&t.window_secs) {
                return Err(format!("{what}: window_secs must be 1 to 300"));
            }
            if ranked.contains(&t.by) {
                return Err(format!(
                    "{what}: by = {:?} is a dimension of its rows",
                    t.by
                ));
            }
            let of =
                t.of.iter()
                    .map(|n| scalar_slot(&what, n))
                    .collect::<Result<Vec<_>, _>>()?;
            if of.is_empty() {
                return Err(format!("{what}: needs of = [point fields]"));
            }
            tops.push(Top {
                name: t.name,
                scope,
                shown_in,
                by: t.by,
                of,
                window_secs: t.window_secs,
            });
        }
        let members = match def.members {
            None => None,
            Some(m) => {
                if m.key.is_empty() {
                    return Err("members: key needs at least one field".into());
                }
                let mut distinct = Vec::new();
                for (name, field) in m.distinct {
                    let Some(i) = m.key.iter().position(|k| *k == field) else {
                        return Err(format!(
                            "members: distinct {name:?} counts {field:?}, which is not in key"
                        ));
                    };
                    distinct.push((name, i));
                }
                Some(Members {
                    key: m.key,
                    count: m.count,
                    distinct,
                })
            }
        };
        let mut lists = Vec::new();
        unique(
            "a summary",
            ["1m", "5m"]
                .into_iter()
                .chain(tops.iter().map(|t| t.name.as_str()))
                .chain(members.iter().flat_map(|m| {
                    std::iter::once(m.count.as_str())
                        .chain(m.distinct.iter().map(|(n, _)| n.as_str()))
                })),
        )?;
        for l in def.lists {
            check_name("list name", &l.name)?;
            if !channel_names.insert(l.name.clone()) {
                return Err(format!(
                    "list {:?}: a scope or another list has this name (both are channels)",
                    l.name
                ));
            }
            let what = format!("list {:?}", l.name);
            if members.is_none() {
                return Err(format!("{what}: lists need [members]"));
            }
            if !(1..=300).contains(&l.window_secs) {
                return Err(format!("{what}: window_secs must be 1 to 300"));
            }
            let scope = scope_index(&what, &l.scope)?;
            let measure = |n: &str| {
                measures
                    .iter()
                    .position(|m| {
                        m.name == n && m.op != MeasureOp::Quantiles && m.op != MeasureOp::Quantile
                    })
                    .ok_or_else(|| format!("{what}: no measure without quantiles is named {n:?}"))
            };
            let columns = l
                .columns
                .iter()
                .map(|c| measure(c))
                .collect::<Result<Vec<_>, _>>()?;
            let order_by = measure(&l.order_by)?;
            if measures.get(order_by).is_some_and(|m| !m.is_scalar()) {
                return Err(format!(
                    "{what}: order_by names a classes measure; name one with one value"
                ));
            }
            let classes_field = |n: &str| -> Result<usize, String> {
                let i = field_index(&what, n)?;
                match fields.get(i) {
                    Some(f) if f.op == PointOp::Classes => Ok(i),
                    _ => Err(format!("{what}: {n:?} is not a classes field")),
                }
            };
            let mut dominant = Vec::new();
            for (key, f) in &l.dominant {
                dominant.push((key.clone(), classes_field(f)?));
            }
            let class_names = match (&l.class_names, dominant.first()) {
                (Some(k), Some((_, f))) => Some((k.clone(), *f)),
                (Some(_), None) => {
                    return Err(format!(
                        "{what}: class_names lists the classes of dominant, which is empty"
                    ))
                }
                (None, _) => None,
            };
            let dims = scopes.get(scope).map(|s| &s.dims[..]).unwrap_or_default();
            unique(
                &format!("a row of {what}"),
                dims.iter()
                    .map(String::as_str)
                    .chain(std::iter::once(l.members.as_str()))
                    .chain(
                        columns
                            .iter()
                            .filter_map(|c| measures.get(*c))
                            .map(|m| m.name.as_str()),
                    )
                    .chain(dominant.iter().map(|(k, _)| k.as_str())),
            )?;
            unique(
                &format!("the summary of {what}"),
                [l.count.as_str(), l.rows.as_str()]
                    .into_iter()
                    .chain(class_names.iter().map(|(k, _)| k.as_str())),
            )?;
            lists.push(List {
                name: l.name,
                scope,
                window_secs: l.window_secs,
                count: l.count,
                rows: l.rows,
                members: l.members,
                columns,
                dominant,
                class_names,
                order_by,
            });
        }
        Ok(View {
            name: def.name,
            kind: def.kind,
            scopes,
            fields,
            width,
            events,
            sketch: def.sketch.map(|s| s.value),
            measures,
            tops,
            members,
            lists,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
type = "view"
name = "dns"
kind = "dns"
events = "queries"
[[scope]]
name = "overview"
[[scope]]
name = "resolver"
dims = ["resolver"]
[[point]]
name = "queries"
op = "count"
[[point]]
name = "failures"
op = "count"
where = "rcode != 'NOERROR'"
[sketch]
value = "latency_ms"
[[measure]]
name = "failure_rate"
op = "ratio"
of = ["failures"]
per = "queries"
"#;

    fn compile(extra: &str) -> Result<View, String> {
        let def: ViewDef = toml::from_str(&format!("{BASE}{extra}")).map_err(|e| e.to_string())?;
        let fields = [
            "kind",
            "ts",
            "resolver",
            "qtype",
            "rcode",
            "latency_ms",
            "client",
        ];
        let properties: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
        View::compile(def, &ProcessorRegistry::default(), &properties)
    }

    #[test]
    fn a_small_view_compiles_and_lays_out_its_slots() {
        let v = compile("").expect("compiles");
        assert_eq!((v.width, v.events), (2, 0));
        assert_eq!(v.measures[0].of, vec![1]);
        assert_eq!(v.measures[0].per, Some(0));
    }

    #[test]
    fn mistakes_are_refused_with_the_key_at_fault() {
        let cases = [
            ("[[point]]\nname = \"t\"\nop = \"count\"", "series key"),
            ("[[point]]\nname = \"b\"\nop = \"sum\"\nvalue = \"latency_ms * 2\"\ninteger = true", "bare field"),
            ("[[point]]\nname = \"b\"\nop = \"sum\"", "sum needs a value"),
            ("[[point]]\nname = \"c\"\nop = \"classes\"", "classes needs"),
            ("[[point]]\nname = \"c\"\nop = \"classes\"\nrollup = \"nope\"", "names no rollup"),
            ("[[measure]]\nname = \"x\"\nop = \"rate\"\nof = [\"nope\"]", "no point field is named \"nope\""),
            ("[[measure]]\nname = \"x\"\nop = \"ratio\"\nof = [\"queries\"]", "per (the denominator)"),
            ("[[measure]]\nname = \"x\"\nop = \"quantile\"", "q must be 0 to 1"),
            ("[[measure]]\nname = \"failure_rate\"\nop = \"total\"\nof = [\"queries\"]", "named twice"),
            ("[[top]]\nname = \"1m\"\nscope = \"resolver\"\nin = [\"overview\"]\nby = \"qps\"\nof = [\"queries\"]", "key \"1m\" twice"),
            ("[[top]]\nname = \"t\"\nscope = \"overview\"\nin = [\"resolver\"]\nby = \"qps\"\nof = [\"queries\"]", "lacks"),
            ("[[list]]\nname = \"all\"\nscope = \"resolver\"\ncount = \"n\"\nrows = \"rows\"\nmembers = \"m\"\ncolumns = []\norder_by = \"failure_rate\"", "lists need [members]"),
            ("[[scope]]\nname = \"overview\"", "named twice"),
            ("[[scope]]\nname = \"a:b\"", "letters, digits"),
            ("[[scope]]\nname = \"q\"\ndims = [\"qtyp\"]", "not a property of the dns schema"),
            ("[[point]]\nname = \"x\"\nop = \"count\"\nwhere = \"rcod == 1\"", "\"rcod\", which is not a property"),
            ("[members]\nkey = [\"client\"]\ncount = \"clients\"", "every dimension of every scope"),
            ("[[top]]\nname = \"t\"\nscope = \"resolver\"\nin = [\"overview\"]\nby = \"resolver\"\nof = [\"queries\"]", "is a dimension of its rows"),
        ];
        for (extra, want) in cases {
            let e = compile(extra).expect_err(extra);
            assert!(e.contains(want), "{extra}: {e}");
        }
    }
}

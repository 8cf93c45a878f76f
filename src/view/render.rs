//! What a view computes: an event's point, and the JSON of points,
//! measures and summaries.

use serde_json::{json, Map, Value};

use super::compile::{Measure, View};
use super::def::{MeasureOp, PointOp};
use super::Target;
use crate::event::subject::dim_value;
use crate::sketch::DdSketch;

/// The additive figures of one bucket, one slot per number (a classes
/// field takes one per class). Empty until something is added.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Cells(pub Box<[f64]>);

impl Cells {
    /// Adds `o` slot by slot.
    pub fn merge(&mut self, o: &Cells) {
        if self.0.is_empty() {
            self.0.clone_from(&o.0);
            return;
        }
        if self.0.len() < o.0.len() {
            let mut v = self.0.to_vec();
            v.resize(o.0.len(), 0.0);
            self.0 = v.into_boxed_slice();
        }
        for (a, b) in self.0.iter_mut().zip(o.0.iter()) {
            *a += b;
        }
    }

    /// Bytes held on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.0.len() * std::mem::size_of::<f64>()
    }

    /// Slot `i` (0 when absent).
    pub fn get(&self, i: usize) -> f64 {
        self.0.get(i).copied().unwrap_or(0.0)
    }

    fn sum(&self, slots: &[usize]) -> f64 {
        slots.iter().map(|s| self.get(*s)).sum()
    }
}

/// A subject an event counts in: its channel name, scope and dimension values.
pub type SubjectOf = (String, usize, Box<[Box<str>]>);

/// `n` rounded to two decimals.
fn two_decimals(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn number(v: f64, integer: bool) -> Value {
    if integer && v >= 0.0 && v <= u64::MAX as f64 {
        json!(v as u64)
    } else {
        json!(v)
    }
}

impl View {
    /// An event's point and its sketch value.
    pub fn fold(&self, ev: &Map<String, Value>) -> (Cells, Option<f64>) {
        let mut cells = vec![0.0; self.width];
        for f in &self.fields {
            if f.filter.as_ref().is_some_and(|w| !w.eval_bool(ev)) {
                continue;
            }
            let v = match f.op {
                PointOp::Count => 1.0,
                PointOp::Sum => match &f.value {
                    Some(x) if f.integer => x
                        .eval_exact_int(ev)
                        .filter(|n| *n >= 0 && *n <= i128::from(u64::MAX))
                        .map_or(0.0, |n| n as f64),
                    Some(x) => x.eval_f64(ev).unwrap_or(0.0),
                    None => 0.0,
                },
                PointOp::Classes => {
                    let at = f
                        .classes
                        .iter()
                        .position(|(_, w)| w.as_ref().is_none_or(|w| w.eval_bool(ev)));
                    if let Some(c) = at.and_then(|i| cells.get_mut(f.slot + i)) {
                        *c = 1.0;
                    }
                    continue;
                }
            };
            if let Some(c) = cells.get_mut(f.slot) {
                *c = v;
            }
        }
        let sketch = self.sketch.as_ref().and_then(|s| s.eval_f64(ev));
        (Cells(cells.into_boxed_slice()), sketch)
    }

    /// The subjects an event counts in, in scope order: channel name,
    /// scope, dimension values (normalized as the rollups' dimensions are).
    pub fn subjects(&self, ev: &Map<String, Value>) -> Vec<SubjectOf> {
        self.scopes
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let dims: Box<[Box<str>]> =
                    s.dims.iter().map(|d| dim_value(ev.get(d), None)).collect();
                let mut name = format!("{}:{}", self.name, s.name);
                for d in dims.iter() {
                    name.push(':');
                    name.push_str(d);
                }
                (name, i, dims)
            })
            .collect()
    }

    /// The member an event speaks for (`None` without `[members]`).
    pub fn member_of(&self, ev: &Map<String, Value>) -> Option<Box<[Box<str>]>> {
        let m = self.members.as_ref()?;
        Some(m.key.iter().map(|k| dim_value(ev.get(k), None)).collect())
    }

    /// The JSON of a point at second `sec` (`t` in ms).
    pub fn point_json(&self, cells: &Cells, sec: i64) -> Value {
        let mut o = self.fields_json(cells);
        o.insert("t".into(), json!(sec * 1000));
        Value::Object(o)
    }

    /// The point fields of `cells` by name (whole numbers for counts,
    /// integer sums and classes).
    pub fn fields_json(&self, cells: &Cells) -> Map<String, Value> {
        let mut o = Map::new();
        for f in &self.fields {
            let v = if f.op == PointOp::Classes {
                (0..f.classes.len())
                    .map(|i| number(cells.get(f.slot + i), true))
                    .collect::<Vec<_>>()
                    .into()
            } else {
                number(cells.get(f.slot), f.integer)
            };
            o.insert(f.name.clone(), v);
        }
        o
    }

    /// A measure's number over a window of `secs` seconds whose total is
    /// `t` (what alert rules compare; quantile lists give 0).
    pub fn measure_f64(&self, m: &Measure, t: &Cells, secs: i64, sketch: Option<&DdSketch>) -> f64 {
        match self.measure(m, t, secs, sketch) {
            Value::Number(n) => n.as_f64().unwrap_or(0.0),
            _ => 0.0,
        }
    }

    /// A measure's JSON over a window of `secs` seconds whose total is `t`.
    pub fn measure(&self, m: &Measure, t: &Cells, secs: i64, sketch: Option<&DdSketch>) -> Value {
        let of = t.sum(&m.of);
        let per = m.per.map_or(0.0, |p| t.get(p));
        match m.op {
            MeasureOp::Rate => json!(of * m.scale / secs.max(1) as f64),
            MeasureOp::Total => number(of, m.integer),
            MeasureOp::Ratio if per == 0.0 => json!(0.0),
            MeasureOp::Ratio => json!(of / per),
            MeasureOp::Avg if per == 0.0 => Value::Null,
            MeasureOp::Avg => json!(of / per),
            MeasureOp::Classes => {
                let Some(f) = m.field.and_then(|i| self.fields.get(i)) else {
                    return json!({});
                };
                let counts: Map<String, Value> = f
                    .classes
                    .iter()
                    .enumerate()
                    .map(|(i, (n, _))| (n.clone(), number(t.get(f.slot + i), true)))
                    .collect();
                Value::Object(counts)
            }
            MeasureOp::Quantiles => {
                let q = |x: f64| sketch.and_then(|sk| sk.quantile(x)).map(two_decimals);
                json!({"p50": q(0.5), "p95": q(0.95), "p99": q(0.99)})
            }
            MeasureOp::Quantile => json!(sketch.and_then(|sk| sk.quantile(m.q)).unwrap_or(0.0)),
        }
    }

    /// The summary window of `secs` seconds: every measure shown in
    /// summaries, by name (`sketch` is asked once, when one needs it).
    pub fn window_json(&self, t: &Cells, secs: i64, sketch: impl FnOnce() -> DdSketch) -> Value {
        let shown = || self.measures.iter().filter(|m| m.summary);
        let sk = shown().any(Measure::needs_sketch).then(sketch);
        let o: Map<String, Value> = shown()
            .map(|m| (m.name.clone(), self.measure(m, t, secs, sk.as_ref())))
            .collect();
        Value::Object(o)
    }

    /// The summary of a channel without data.
    pub fn empty_summary(&self, target: &Target) -> Value {
        let mut o = Map::new();
        match target {
            Target::Scope { scope, .. } => {
                o.insert("1m".into(), Value::Null);
                o.insert("5m".into(), Value::Null);
                for t in self.tops.iter().filter(|t| t.shown_in.contains(scope)) {
                    o.insert(t.name.clone(), json!([]));
                }
                if let Some(m) = &self.members {
                    o.insert(m.count.clone(), json!(0));
                    for (name, _) in &m.distinct {
                        o.insert(name.clone(), json!(0));
                    }
                }
            }
            Target::List { list, .. } => {
                if let Some(l) = self.lists.get(*list) {
                    o.insert(l.count.clone(), json!(0));
                    o.insert(l.rows.clone(), json!([]));
                    if let Some((k, f)) = &l.class_names {
                        o.insert(k.clone(), self.class_names(*f));
                    }
                }
            }
            Target::Alerts => {}
        }
        Value::Object(o)
    }

    /// The class names of classes field `f`, as JSON.
    pub fn class_names(&self, f: usize) -> Value {
        self.fields
            .get(f)
            .map(|f| f.classes.iter().map(|(n, _)| json!(n)).collect::<Vec<_>>())
            .unwrap_or_default()
            .into()
    }

    /// The most frequent class of classes field `f` in `t` (`null` when
    /// none has an event; ties go to the first).
    pub fn dominant(&self, f: usize, t: &Cells) -> Value {
        let Some(f) = self.fields.get(f) else {
            return Value::Null;
        };
        let mut best: Option<(f64, usize)> = None;
        for i in 0..f.classes.len() {
            let n = t.get(f.slot + i);
            if n > 0.0 && best.is_none_or(|(b, _)| n > b) {
                best = Some((n, i));
            }
        }
        best.and_then(|(_, i)| f.classes.get(i))
            .map_or(Value::Null, |(n, _)| json!(n))
    }
}

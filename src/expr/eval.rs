//! Evaluation over one event (a JSON object), without allocating: numbers and
//! booleans are copied, strings borrowed from the event or the expression.

use std::borrow::Cow;
use std::cmp::Ordering;

use serde_json::{Map, Value as Json};

use super::{BinOp, Lit, Node, Step};

/// A value during evaluation.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Null,
    Bool(bool),
    Num(f64),
    Str(Cow<'a, str>),
}

impl Value<'_> {
    /// false, null, 0 (and NaN) and "" are falsy; everything else is truthy.
    pub fn truthy(&self) -> bool {
        match self {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Num(n) => *n != 0.0 && !n.is_nan(),
            Value::Str(s) => !s.is_empty(),
        }
    }

    /// Detaches the value from what it borrows (copies a borrowed string).
    pub fn into_owned(self) -> Value<'static> {
        match self {
            Value::Null => Value::Null,
            Value::Bool(b) => Value::Bool(b),
            Value::Num(n) => Value::Num(n),
            Value::Str(s) => Value::Str(Cow::Owned(s.into_owned())),
        }
    }
}

fn lit(l: &Lit) -> Value<'_> {
    match l {
        Lit::Null => Value::Null,
        Lit::Bool(b) => Value::Bool(*b),
        Lit::Num(n) => Value::Num(*n),
        Lit::Str(s) => Value::Str(Cow::Borrowed(s)),
    }
}

pub(super) fn field(v: Option<&Json>) -> Value<'_> {
    match v {
        None | Some(Json::Null) => Value::Null,
        Some(Json::Bool(b)) => Value::Bool(*b),
        Some(Json::Number(n)) => n.as_f64().map_or(Value::Null, Value::Num),
        Some(Json::String(s)) => Value::Str(Cow::Borrowed(s)),
        // Arrays and objects are not values of this language.
        Some(Json::Array(_) | Json::Object(_)) => Value::Null,
    }
}

fn equal(a: &Value<'_>, b: &Value<'_>) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Num(x), Value::Num(y)) => x == y,
        (Value::Str(x), Value::Str(y)) => x == y,
        _ => false,
    }
}

fn order(a: &Value<'_>, b: &Value<'_>) -> Option<Ordering> {
    match (a, b) {
        (Value::Num(x), Value::Num(y)) => x.partial_cmp(y),
        (Value::Str(x), Value::Str(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

fn member(v: &Value<'_>, list: &[Lit]) -> Value<'static> {
    Value::Bool(list.iter().any(|l| equal(v, &lit(l))))
}

/// A binary operator on two evaluated operands (`&&`/`||` by truthiness).
fn apply(op: BinOp, l: &Value<'_>, r: &Value<'_>) -> Value<'static> {
    use Ordering::{Equal, Greater, Less};
    let ord = || order(l, r);
    match op {
        BinOp::Or => Value::Bool(l.truthy() || r.truthy()),
        BinOp::And => Value::Bool(l.truthy() && r.truthy()),
        BinOp::Eq => Value::Bool(equal(l, r)),
        BinOp::Ne => Value::Bool(!equal(l, r)),
        BinOp::Lt => Value::Bool(ord() == Some(Less)),
        BinOp::Le => Value::Bool(matches!(ord(), Some(Less | Equal))),
        BinOp::Gt => Value::Bool(ord() == Some(Greater)),
        BinOp::Ge => Value::Bool(matches!(ord(), Some(Greater | Equal))),
        BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div => match (l, r) {
            (Value::Num(x), Value::Num(y)) => match op {
                BinOp::Add => Value::Num(x + y),
                BinOp::Sub => Value::Num(x - y),
                BinOp::Mul => Value::Num(x * y),
                _ if *y == 0.0 => Value::Null,
                _ => Value::Num(x / y),
            },
            _ => Value::Null,
        },
    }
}

/// `l op rhs`, evaluating `rhs` only when `&&`/`||` need it.
fn binary<'x>(op: BinOp, l: Value<'x>, rhs: &'x Node, ev: &'x Map<String, Json>) -> Value<'x> {
    match op {
        BinOp::And => Value::Bool(l.truthy() && eval(rhs, ev).truthy()),
        BinOp::Or => Value::Bool(l.truthy() || eval(rhs, ev).truthy()),
        _ => apply(op, &l, &eval(rhs, ev)),
    }
}

/// Evaluates a node. Recursion follows the tree, whose height the parser
/// bounds (flat runs of operators are `Chain`s, walked in a loop).
pub(super) fn eval<'x>(n: &'x Node, ev: &'x Map<String, Json>) -> Value<'x> {
    match n {
        Node::Lit(l) => lit(l),
        Node::Field(f) => field(ev.get(&**f)),
        Node::Not(a) => Value::Bool(!eval(a, ev).truthy()),
        Node::Neg(a) => match eval(a, ev) {
            Value::Num(x) => Value::Num(-x),
            _ => Value::Null,
        },
        Node::Bin(op, a, b) => binary(*op, eval(a, ev), b, ev),
        Node::In(a, list) => member(&eval(a, ev), list),
        Node::Chain(first, steps) => steps.iter().fold(eval(first, ev), |acc, step| match step {
            Step::Op(op, rhs) => binary(*op, acc, rhs, ev),
            Step::In(list) => member(&acc, list),
        }),
    }
}

//! A tiny, safe expression language for processor definitions:
//! `status >= 500 && status < 600`, `candidate_type == 'relay'`,
//! `bytes_sent + bytes_received`, `method in ['GET', 'HEAD']`.
//!
//! Grammar, lowest precedence first: `||`, `&&`, `== !=`, `< <= > >=` and
//! `in [literals]`, `+ -`, `* /`, unary `! -`, then literals (numbers,
//! 'strings' or "strings" with `\\ \' \"` escapes, `true`, `false`, `null`),
//! identifiers (top-level event fields) and parentheses. Binary operators are
//! left-associative.
//!
//! Semantics: a missing field (or JSON null, array, object) is `null`. Numbers
//! compare numerically, strings lexically; `==` across types is false
//! (`null == null` is true); ordering across types or with `null` is false.
//! Arithmetic on non-numbers, and division by zero, give `null`. `&& || !`
//! use truthiness (false, null, 0 and "" are falsy), give a bool and
//! short-circuit.
//!
//! Expressions come from user files and values from untrusted events: nothing
//! here panics, the length and nesting of an expression are bounded, and runs
//! of one operator (`a + b + c …`) are kept flat, so neither parsing nor
//! evaluation can recurse deeper than about `7 × MAX_DEPTH` frames.

mod eval;
mod parse;

pub use eval::Value;

use serde_json::{Map, Value as Json};

/// Longest expression accepted, in characters.
pub const MAX_EXPR_CHARS: usize = 4_096;
/// Deepest nesting accepted: parentheses and unary `!`/`-` inside each other.
pub const MAX_DEPTH: usize = 64;

/// Why an expression was rejected. `pos` is a 1-based character column.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExprError {
    #[error("at column {pos}: {reason}")]
    Parse { pos: usize, reason: String },
    #[error("expression longer than {MAX_EXPR_CHARS} characters")]
    TooLong,
    #[error("expression nested deeper than {MAX_DEPTH} levels of parentheses or unary operators")]
    TooDeep,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Lit {
    Null,
    Bool(bool),
    Num(f64),
    Str(Box<str>),
}

/// One step of a left-associative run of same-precedence operators.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Step {
    Op(BinOp, Node),
    In(Box<[Lit]>),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    Lit(Lit),
    Field(Box<str>),
    Not(Box<Node>),
    Neg(Box<Node>),
    Bin(BinOp, Box<Node>, Box<Node>),
    In(Box<Node>, Box<[Lit]>),
    /// `a + b - c …`: two or more steps, applied left to right in a loop.
    Chain(Box<Node>, Box<[Step]>),
}

/// A compiled expression.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    src: Box<str>,
    root: Node,
}

impl Expr {
    pub fn parse(src: &str) -> Result<Expr, ExprError> {
        // Cheap byte test first: a char is at most 4 bytes.
        if src.len() > MAX_EXPR_CHARS && src.chars().count() > MAX_EXPR_CHARS {
            return Err(ExprError::TooLong);
        }
        let root = parse::parse(src)?;
        Ok(Expr {
            src: src.into(),
            root,
        })
    }

    /// The original text.
    pub fn source(&self) -> &str {
        &self.src
    }

    /// Event fields the expression reads, sorted and deduplicated.
    pub fn fields(&self) -> Vec<String> {
        fn walk(n: &Node, out: &mut Vec<String>) {
            match n {
                Node::Field(f) => out.push(f.to_string()),
                Node::Lit(_) => {}
                Node::Not(a) | Node::Neg(a) | Node::In(a, _) => walk(a, out),
                Node::Bin(_, a, b) => {
                    walk(a, out);
                    walk(b, out);
                }
                Node::Chain(first, steps) => {
                    walk(first, out);
                    for s in steps.iter() {
                        if let Step::Op(_, n) = s {
                            walk(n, out);
                        }
                    }
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.root, &mut out);
        out.sort();
        out.dedup();
        out
    }

    /// The expression's value for one event. Strings read from the event are
    /// borrowed; only a bare string literal (`'x'`) is copied.
    pub fn eval<'a>(&self, event: &'a Map<String, Json>) -> Value<'a> {
        match &self.root {
            Node::Field(f) => eval::field(event.get(&**f)),
            // Operators never yield strings, so only a literal root allocates.
            root => eval::eval(root, event).into_owned(),
        }
    }

    /// Truthiness of the value: false, null, 0 and "" are false.
    pub fn eval_bool(&self, event: &Map<String, Json>) -> bool {
        eval::eval(&self.root, event).truthy()
    }

    /// The exact integer of an expression that is a bare field holding a
    /// JSON integer (which `eval_f64` would round past 2^53); `None`
    /// otherwise.
    pub fn eval_exact_int(&self, event: &Map<String, Json>) -> Option<i128> {
        let Node::Field(f) = &self.root else {
            return None;
        };
        match event.get(&**f) {
            Some(Json::Number(n)) => n
                .as_i64()
                .map(i128::from)
                .or_else(|| n.as_u64().map(i128::from)),
            _ => None,
        }
    }

    /// A number (`true`/`false` as 1/0); `None` for null and strings.
    pub fn eval_f64(&self, event: &Map<String, Json>) -> Option<f64> {
        match eval::eval(&self.root, event) {
            Value::Num(n) => Some(n),
            Value::Bool(b) => Some(if b { 1.0 } else { 0.0 }),
            Value::Null | Value::Str(_) => None,
        }
    }
}

impl std::str::FromStr for Expr {
    type Err = ExprError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Expr::parse(s)
    }
}

impl std::fmt::Display for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.src)
    }
}

impl<'de> serde::Deserialize<'de> for Expr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Expr;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an expression string such as \"status >= 500\"")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Expr, E> {
                Expr::parse(s).map_err(|e| E::custom(format!("invalid expression {s:?}: {e}")))
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests;

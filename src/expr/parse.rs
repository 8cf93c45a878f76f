//! Lexer and precedence-climbing parser. Positions are 0-based character
//! indices internally and 1-based columns in errors.

use super::{BinOp, ExprError, Lit, Node, Step, MAX_DEPTH};

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64),
    Str(Box<str>),
    Ident(Box<str>),
    Op(&'static str),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    End,
}

fn err(at: usize, reason: impl Into<String>) -> ExprError {
    ExprError::Parse {
        pos: at + 1,
        reason: reason.into(),
    }
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Num(n) => format!("number {n}"),
        Tok::Str(s) => format!("string {s:?}"),
        Tok::Ident(s) => format!("name '{s}'"),
        Tok::Op(o) => format!("'{o}'"),
        Tok::LParen => "'('".into(),
        Tok::RParen => "')'".into(),
        Tok::LBracket => "'['".into(),
        Tok::RBracket => "']'".into(),
        Tok::Comma => "','".into(),
        Tok::End => "the end of the expression".into(),
    }
}

const OPS2: [&str; 6] = ["&&", "||", "==", "!=", "<=", ">="];
const OPS1: [&str; 7] = ["<", ">", "+", "-", "*", "/", "!"];

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn lex(src: &str) -> Result<Vec<(Tok, usize)>, ExprError> {
    let chars: Vec<char> = src.chars().collect();
    let at = |i: usize| chars.get(i).copied();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(c) = at(i) {
        let start = i;
        let tok = match c {
            c if c.is_whitespace() => {
                i += 1;
                continue;
            }
            '(' => Tok::LParen,
            ')' => Tok::RParen,
            '[' => Tok::LBracket,
            ']' => Tok::RBracket,
            ',' => Tok::Comma,
            '\'' | '"' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match at(i) {
                        None => {
                            return Err(err(
                                start,
                                format!("unterminated string: expected a closing {c}"),
                            ))
                        }
                        Some(q) if q == c => break,
                        Some('\\') => {
                            match at(i + 1) {
                                Some(e @ ('\\' | '\'' | '"')) => s.push(e),
                                Some('n') => s.push('\n'),
                                Some('t') => s.push('\t'),
                                Some(e) => {
                                    return Err(err(
                                        i,
                                        format!(
                                            "unknown escape \\{}: expected \\\\, \\' or \\\"",
                                            e.escape_debug()
                                        ),
                                    ))
                                }
                                None => {
                                    return Err(err(
                                        start,
                                        format!("unterminated string: expected a closing {c}"),
                                    ))
                                }
                            }
                            i += 2;
                        }
                        Some(ch) => {
                            s.push(ch);
                            i += 1;
                        }
                    }
                }
                Tok::Str(s.into())
            }
            c if c.is_ascii_digit()
                || (c == '.' && at(i + 1).is_some_and(|d| d.is_ascii_digit())) =>
            {
                let digits = |mut j: usize| {
                    while at(j).is_some_and(|d| d.is_ascii_digit()) {
                        j += 1;
                    }
                    j
                };
                let mut j = digits(i);
                if at(j) == Some('.') {
                    j = digits(j + 1);
                }
                if matches!(at(j), Some('e' | 'E')) {
                    let k = if matches!(at(j + 1), Some('+' | '-')) {
                        j + 2
                    } else {
                        j + 1
                    };
                    if at(k).is_some_and(|d| d.is_ascii_digit()) {
                        j = digits(k);
                    }
                }
                let mut end = j;
                while at(end).is_some_and(|d| is_ident_char(d) || d == '.') {
                    end += 1;
                }
                let text: String = chars.get(i..end).unwrap_or_default().iter().collect();
                let n = match text.parse::<f64>() {
                    Ok(n) if end == j && n.is_finite() => n,
                    Ok(_) if end == j => return Err(err(start, format!("number {text} is out of range"))),
                    _ => return Err(err(start, format!("malformed number {text:?}: expected digits, an optional fraction and exponent"))),
                };
                out.push((Tok::Num(n), start));
                i = end;
                continue;
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let mut j = i;
                while at(j).is_some_and(is_ident_char) {
                    j += 1;
                }
                let text: String = chars.get(i..j).unwrap_or_default().iter().collect();
                out.push((Tok::Ident(text.into()), start));
                i = j;
                continue;
            }
            c => {
                let next = at(i + 1);
                if let Some(op) = OPS2.into_iter().find(|o| {
                    let mut oc = o.chars();
                    oc.next() == Some(c) && oc.next() == next
                }) {
                    out.push((Tok::Op(op), start));
                    i += 2;
                    continue;
                }
                if let Some(op) = OPS1.into_iter().find(|o| o.starts_with(c)) {
                    Tok::Op(op)
                } else {
                    return Err(err(
                        start,
                        match c {
                            '=' => "unexpected '=': expected '==' to compare".to_string(),
                            '&' | '|' => format!("unexpected '{c}': expected '{c}{c}'"),
                            _ => format!("unexpected character {:?}", c),
                        },
                    ));
                }
            }
        };
        out.push((tok, start));
        i += 1;
    }
    out.push((Tok::End, chars.len()));
    Ok(out)
}

/// A binary operator (or `in`) and its precedence (higher binds tighter).
#[derive(Clone, Copy)]
enum Infix {
    Op(BinOp, u8),
    In,
}

fn infix(t: &Tok) -> Option<Infix> {
    let op = match t {
        Tok::Ident(s) if &**s == "in" => return Some(Infix::In),
        Tok::Op("||") => (BinOp::Or, 0),
        Tok::Op("&&") => (BinOp::And, 1),
        Tok::Op("==") => (BinOp::Eq, 2),
        Tok::Op("!=") => (BinOp::Ne, 2),
        Tok::Op("<") => (BinOp::Lt, 3),
        Tok::Op("<=") => (BinOp::Le, 3),
        Tok::Op(">") => (BinOp::Gt, 3),
        Tok::Op(">=") => (BinOp::Ge, 3),
        Tok::Op("+") => (BinOp::Add, 4),
        Tok::Op("-") => (BinOp::Sub, 4),
        Tok::Op("*") => (BinOp::Mul, 5),
        Tok::Op("/") => (BinOp::Div, 5),
        _ => return None,
    };
    Some(Infix::Op(op.0, op.1))
}

/// `in` binds like the ordering comparisons.
const IN_PREC: u8 = 3;

fn prec(i: Infix) -> u8 {
    match i {
        Infix::Op(_, p) => p,
        Infix::In => IN_PREC,
    }
}

/// A node from a first operand and a run of same-precedence steps.
fn build(first: Node, steps: Vec<Step>) -> Node {
    let mut it = steps.into_iter();
    match (it.next(), it.len()) {
        (None, _) => first,
        (Some(Step::Op(op, rhs)), 0) => Node::Bin(op, Box::new(first), Box::new(rhs)),
        (Some(Step::In(list)), 0) => Node::In(Box::new(first), list),
        (Some(s), _) => Node::Chain(Box::new(first), std::iter::once(s).chain(it).collect()),
    }
}

// Errors are built out of line so that the recursive parsing functions keep
// small stack frames.

#[cold]
#[inline(never)]
fn found(at: usize, expected: &str, t: &Tok) -> ExprError {
    err(at, format!("expected {expected}, found {}", describe(t)))
}

#[cold]
#[inline(never)]
fn no_value(at: usize, before: Option<&Tok>, t: &Tok) -> ExprError {
    match (t, before) {
        (Tok::Ident(s), _) if &**s == "in" => err(at, "expected a value before 'in'"),
        (_, Some(b)) => found(at, &format!("a value after {}", describe(b)), t),
        (_, None) => found(at, "a value", t),
    }
}

#[cold]
#[inline(never)]
fn unclosed(at: usize, open: usize, t: &Tok) -> ExprError {
    let what = format!("')' to close the '(' at column {}", open + 1);
    found(at, &what, t)
}

pub(super) fn parse(src: &str) -> Result<Node, ExprError> {
    let toks = lex(src)?;
    let end = src.chars().count();
    let mut p = Parser {
        toks,
        pos: 0,
        depth: 0,
        end,
    };
    if p.peek() == &Tok::End {
        return Err(err(0, "empty expression: expected a value"));
    }
    let node = p.expr(0)?;
    let (t, at) = p.bump();
    match t {
        Tok::End => Ok(node),
        Tok::RParen => Err(err(at, "unmatched ')': expected an operator or the end")),
        t => Err(found(at, "an operator or the end of the expression", &t)),
    }
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    pos: usize,
    depth: usize,
    end: usize,
}

impl Parser {
    fn peek(&self) -> &Tok {
        self.toks.get(self.pos).map_or(&Tok::End, |t| &t.0)
    }

    /// Takes the next token and its position; stays on `End`.
    fn bump(&mut self) -> (Tok, usize) {
        match self.toks.get(self.pos) {
            Some((t, at)) => {
                if *t != Tok::End {
                    self.pos += 1;
                }
                (t.clone(), *at)
            }
            None => (Tok::End, self.end),
        }
    }

    /// Precedence climbing: an expression of operators binding at least as
    /// tightly as `min`. A run of operators of one precedence becomes one
    /// flat `Chain` (left-associative), so the tree only deepens where
    /// precedence rises or parentheses and unary operators nest.
    fn expr(&mut self, min: u8) -> Result<Node, ExprError> {
        let mut lhs = self.unary()?;
        let mut run: Option<u8> = None;
        let mut steps = Vec::new();
        while let Some(op) = infix(self.peek()) {
            let p = prec(op);
            if p < min {
                break;
            }
            self.bump();
            if run != Some(p) {
                lhs = build(lhs, std::mem::take(&mut steps));
                run = Some(p);
            }
            steps.push(match op {
                Infix::In => Step::In(self.list()?),
                Infix::Op(op, p) => Step::Op(op, self.expr(p + 1)?),
            });
        }
        Ok(build(lhs, steps))
    }

    /// Prefix `!` and `-` (in a loop, counted as nesting), then a primary.
    fn unary(&mut self) -> Result<Node, ExprError> {
        let mut prefix = Vec::new();
        while let Tok::Op(o @ ("!" | "-")) = self.peek() {
            prefix.push(*o == "!");
            self.bump();
            if self.depth + prefix.len() > MAX_DEPTH {
                return Err(ExprError::TooDeep);
            }
        }
        self.depth += prefix.len();
        let mut node = self.primary()?;
        self.depth -= prefix.len();
        for not in prefix.into_iter().rev() {
            node = match (not, node) {
                (true, n) => Node::Not(Box::new(n)),
                (false, Node::Lit(Lit::Num(n))) => Node::Lit(Lit::Num(-n)),
                (false, n) => Node::Neg(Box::new(n)),
            };
        }
        Ok(node)
    }

    fn primary(&mut self) -> Result<Node, ExprError> {
        let idx = self.pos;
        let (t, at) = self.bump();
        Ok(match t {
            Tok::Num(n) => Node::Lit(Lit::Num(n)),
            Tok::Str(s) => Node::Lit(Lit::Str(s)),
            Tok::Ident(s) => match &*s {
                "true" => Node::Lit(Lit::Bool(true)),
                "false" => Node::Lit(Lit::Bool(false)),
                "null" => Node::Lit(Lit::Null),
                "in" => return Err(no_value(at, None, &Tok::Ident(s))),
                _ => Node::Field(s),
            },
            Tok::LParen => {
                if self.depth >= MAX_DEPTH {
                    return Err(ExprError::TooDeep);
                }
                self.depth += 1;
                let inner = self.expr(0)?;
                self.depth -= 1;
                match self.bump() {
                    (Tok::RParen, _) => inner,
                    (t, at2) => return Err(unclosed(at2, at, &t)),
                }
            }
            t => {
                let before = idx.checked_sub(1).and_then(|i| self.toks.get(i));
                return Err(no_value(at, before.map(|b| &b.0), &t));
            }
        })
    }

    fn list(&mut self) -> Result<Box<[Lit]>, ExprError> {
        let (t, at) = self.bump();
        if t != Tok::LBracket {
            return Err(found(at, "'[' after 'in'", &t));
        }
        let mut out = Vec::new();
        loop {
            if self.peek() == &Tok::RBracket {
                self.bump(); // `[]`, or a trailing comma
                return Ok(out.into());
            }
            let (t, at) = self.bump();
            out.push(match t {
                Tok::Num(n) => Lit::Num(n),
                Tok::Str(s) => Lit::Str(s),
                Tok::Op("-") => match self.bump() {
                    (Tok::Num(n), _) => Lit::Num(-n),
                    (t, at) => return Err(found(at, "a number after '-'", &t)),
                },
                Tok::Ident(s) if &*s == "true" => Lit::Bool(true),
                Tok::Ident(s) if &*s == "false" => Lit::Bool(false),
                Tok::Ident(s) if &*s == "null" => Lit::Null,
                t => {
                    return Err(found(
                        at,
                        "a literal in the list after 'in' (lists hold literals only)",
                        &t,
                    ))
                }
            });
            match self.bump() {
                (Tok::Comma, _) => {}
                (Tok::RBracket, _) => return Ok(out.into()),
                (t, at) => return Err(found(at, "',' or ']' in the list", &t)),
            }
        }
    }
}

use super::*;
use serde_json::json;
use std::borrow::Cow;

fn ev(v: Json) -> Map<String, Json> {
    v.as_object().cloned().unwrap_or_default()
}

fn p(src: &str) -> Expr {
    Expr::parse(src).unwrap_or_else(|e| panic!("{src:?}: {e}"))
}

fn b(src: &str, e: &Map<String, Json>) -> bool {
    p(src).eval_bool(e)
}

fn n(src: &str, e: &Map<String, Json>) -> Option<f64> {
    p(src).eval_f64(e)
}

/// The error message of a malformed expression.
fn fail(src: &str) -> String {
    match Expr::parse(src) {
        Ok(x) => panic!("{src:?} parsed as {x:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn precedence_and_associativity() {
    let e = ev(json!({}));
    assert_eq!(n("1 + 2 * 3", &e), Some(7.0));
    assert_eq!(n("2 * 3 + 1", &e), Some(7.0));
    assert_eq!(n("(1 + 2) * 3", &e), Some(9.0));
    assert_eq!(n("10 - 4 - 3", &e), Some(3.0), "left-associative -");
    assert_eq!(n("24 / 4 / 2", &e), Some(3.0), "left-associative /");
    assert_eq!(n("10 - 4 + 3", &e), Some(9.0));
    assert_eq!(n("-2 * -3", &e), Some(6.0));
    assert_eq!(n("2 - -3", &e), Some(5.0));
    assert_eq!(n("-(1 + 2)", &e), Some(-3.0));
    assert_eq!(n("1.5e3 + .5 + 2E-1", &e), Some(1500.7));
    assert!(b("true || false && false", &e), "&& binds tighter than ||");
    assert!(!b("(true || false) && false", &e));
    assert!(b("1 < 2 == 2 < 3", &e), "ordering binds tighter than ==");
    assert!(b("1 + 1 < 3", &e), "+ binds tighter than <");
    assert!(!b("!1 == 1", &e), "! binds tighter than ==: (!1) == 1");
    assert!(b("!false && !(1 > 2)", &e));
    assert!(!b("3 > 2 > 1", &e), "(3 > 2) > 1 compares a bool");
    assert!(b("2 in [1, 2] == true", &e));
}

#[test]
fn each_operator_on_fields() {
    let e = ev(json!({"status": 503, "ct": "relay", "loss": 0.03, "rtt": 149.9, "jit": 25}));
    for (src, want) in [
        ("status >= 500 && status < 600", true),
        ("status >= 400 && status < 500", false),
        ("status == 503", true),
        ("status != 503", false),
        ("status > 503", false),
        ("status >= 503", true),
        ("status < 503", false),
        ("status <= 503", true),
        ("ct == 'relay'", true),
        ("ct != \"host\"", true),
        ("loss < 0.03", false),
        ("rtt < 150 && loss < 0.04 && !(jit >= 20)", false),
        ("rtt < 150 && loss < 0.04 && !(jit >= 30)", true),
        ("status == 1 || ct == 'relay'", true),
    ] {
        assert_eq!(b(src, &e), want, "{src}");
    }
    assert_eq!(n("status + 1", &e), Some(504.0));
    assert_eq!(n("status - 3", &e), Some(500.0));
    assert_eq!(n("status * 2", &e), Some(1006.0));
    assert_eq!(n("jit / 2", &e), Some(12.5));
    assert_eq!(n("-jit", &e), Some(-25.0));
    assert_eq!(n("status > 1", &e), Some(1.0));
    assert_eq!(n("!status", &e), Some(0.0));
}

#[test]
fn in_lists() {
    let e = ev(json!({"m": "GET", "s": 404, "t": true}));
    assert!(b("m in ['GET', 'HEAD']", &e));
    assert!(!b("m in ['POST', \"PUT\"]", &e));
    assert!(b("s in [200, 404,]", &e), "a trailing comma is fine");
    assert!(b("s in [-1, 404]", &e));
    assert!(!b("s in ['404']", &e), "no cross-type equality");
    assert!(b("t in [true]", &e) && b("missing in [null]", &e));
    assert!(!b("m in []", &e));
    assert!(b("s + 1 in [405]", &e), "in binds looser than +");
    assert!(b("!(m in ['POST'])", &e));
    assert!(b("m in ['GET'] in [true]", &e), "left to right");
}

#[test]
fn numeric_versus_string_compare() {
    let e = ev(json!({"n": 10, "s": "10", "t": "9"}));
    assert!(b("n > 9", &e), "numbers numerically");
    assert!(!b("s > t", &e), "strings lexically: '10' < '9'");
    assert!(b("'abc' < 'abd' && 'b' > 'abc' && 'a' <= 'a'", &e));
    assert!(!b("s == n", &e) && b("s != n", &e));
    assert!(!b("s < n", &e) && !b("s > n", &e) && !b("s >= n", &e));
    assert!(b("n == 10.0", &e));
    assert!(!b("true == 1", &e), "bool is not a number");
}

#[test]
fn null_and_missing() {
    let e = ev(json!({"u": null, "x": 0, "s": "", "a": [1], "o": {}, "y": 2}));
    assert!(b("u == null", &e) && b("missing == null", &e) && b("missing == u", &e));
    assert!(!b("missing != null", &e));
    assert!(!b("u == 0", &e) && b("u != 0", &e) && !b("u == ''", &e));
    for op in ["<", "<=", ">", ">="] {
        assert!(!b(&format!("missing {op} 0"), &e), "missing {op} 0");
        assert!(!b(&format!("null {op} null"), &e), "null {op} null");
    }
    assert!(!b("u", &e) && !b("x", &e) && !b("s", &e) && !b("missing", &e));
    assert!(b("!u && !x && !s && y && 'a'", &e));
    assert_eq!(n("missing + 1", &e), None);
    assert_eq!(n("'a' * 2", &e), None);
    assert_eq!(n("true + 1", &e), None);
    assert_eq!(n("-s", &e), None);
    assert!(b("a == null && o == null", &e), "arrays/objects are null");
    assert_eq!(n("true", &e), Some(1.0));
    assert_eq!(n("false", &e), Some(0.0));
    assert_eq!(p("missing").eval(&e), Value::Null);
}

#[test]
fn division_by_zero_is_null() {
    let e = ev(json!({"z": 0, "x": 5}));
    assert_eq!(n("1 / 0", &e), None);
    assert_eq!(n("x / z", &e), None);
    assert_eq!(n("0 / 0", &e), None);
    assert_eq!(n("x / -0.0", &e), None);
    assert!(b("x / z == null", &e));
    assert_eq!(n("x / 2", &e), Some(2.5));
}

#[test]
fn short_circuit() {
    let e = ev(json!({"x": 1}));
    // `&&`/`||` yield bools, and the right side is skipped when decided.
    assert_eq!(p("x || missing").eval(&e), Value::Bool(true));
    assert_eq!(p("missing && x").eval(&e), Value::Bool(false));
    assert_eq!(p("x && 'yes'").eval(&e), Value::Bool(true));
    assert!(b("x == 1 || (missing / 0)", &e));
    assert!(!b("x == 2 && (1 / 0 == null)", &e));
    assert!(b("0 || 0 || x", &e) && !b("x && x && 0", &e));
}

#[test]
fn strings_escapes_and_borrowing() {
    let e = ev(json!({"s": "it's \"q\"\\", "t": "a\tb"}));
    assert!(b(r#"s == 'it\'s "q"\\'"#, &e));
    assert!(b(r#"s == "it's \"q\"\\""#, &e));
    assert!(b(r"t == 'a\tb'", &e));
    assert_eq!(p(r"'\\'").eval(&e), Value::Str(Cow::Borrowed("\\")));
    // A field's string is borrowed from the event, not copied.
    match p("s").eval(&e) {
        Value::Str(Cow::Borrowed(s)) => assert_eq!(s, "it's \"q\"\\"),
        other => panic!("expected a borrowed string, got {other:?}"),
    }
    match p("(s)").eval(&e) {
        Value::Str(s) => assert_eq!(s, "it's \"q\"\\"),
        other => panic!("{other:?}"),
    }
    assert_eq!(n("s", &e), None);
}

#[test]
fn error_messages_name_position_and_expectation() {
    let cases = [
        (
            "status >= ",
            "at column 11: expected a value after '>=', found the end of the expression",
        ),
        (
            "(a",
            "at column 3: expected ')' to close the '(' at column 1, found the end",
        ),
        (
            "a ==== b",
            "at column 5: expected a value after '==', found '=='",
        ),
        (
            "'unterminated",
            "at column 1: unterminated string: expected a closing '",
        ),
        (
            "a in [b]",
            "at column 7: expected a literal in the list after 'in'",
        ),
        ("", "at column 1: empty expression"),
        ("   ", "at column 1: empty expression"),
        ("a = 1", "at column 3: unexpected '=': expected '=='"),
        ("a & b", "at column 3: unexpected '&': expected '&&'"),
        (
            "a b",
            "at column 3: expected an operator or the end of the expression, found name 'b'",
        ),
        ("a)", "at column 2: unmatched ')'"),
        ("1..2", "at column 1: malformed number \"1..2\""),
        ("3abc", "at column 1: malformed number"),
        ("1e999", "at column 1: number 1e999 is out of range"),
        (
            "a in 3",
            "at column 6: expected '[' after 'in', found number 3",
        ),
        ("a in [1 2]", "at column 9: expected ',' or ']'"),
        ("a in [-x]", "at column 8: expected a number after '-'"),
        ("x > 1 #", "at column 7: unexpected character '#'"),
        ("'a\\q'", "at column 3: unknown escape \\q"),
        ("()", "at column 2: expected a value after '(', found ')'"),
        ("in [1]", "at column 1: expected a value before 'in'"),
        ("é == 1", "at column 1: unexpected character 'é'"),
        ("'é' == ", "at column 8: expected a value after '=='"),
    ];
    for (src, want) in cases {
        let msg = fail(src);
        assert!(msg.starts_with(want), "{src:?}: got {msg:?}, want {want:?}");
    }
    assert!(matches!(
        Expr::parse("(a"),
        Err(ExprError::Parse { pos: 3, .. })
    ));
}

#[test]
fn depth_and_length_limits() {
    let nest = |k: usize| format!("{}x{}", "(".repeat(k), ")".repeat(k));
    assert!(Expr::parse(&nest(MAX_DEPTH)).is_ok());
    assert_eq!(Expr::parse(&nest(MAX_DEPTH + 1)), Err(ExprError::TooDeep));
    assert_eq!(Expr::parse(&nest(2_000)), Err(ExprError::TooDeep));
    assert_eq!(Expr::parse(&"(".repeat(4_000)), Err(ExprError::TooDeep));
    assert_eq!(
        Expr::parse(&format!("{}x", "!".repeat(1_000))),
        Err(ExprError::TooDeep)
    );
    assert_eq!(
        Expr::parse(&format!("{}x", "-".repeat(1_000))),
        Err(ExprError::TooDeep)
    );
    assert_eq!(Expr::parse(&nest(10_000)), Err(ExprError::TooLong));
    assert!(Expr::parse(&"x".repeat(MAX_EXPR_CHARS)).is_ok());
    assert_eq!(
        Expr::parse(&"x".repeat(MAX_EXPR_CHARS + 1)),
        Err(ExprError::TooLong)
    );
    assert_eq!(
        Expr::parse(&"é".repeat(MAX_EXPR_CHARS + 1)),
        Err(ExprError::TooLong)
    );
    assert_eq!(
        ExprError::TooDeep.to_string(),
        "expression nested deeper than 64 levels of parentheses or unary operators"
    );
}

#[test]
fn limits_bound_stack_use() {
    // Worst cases within the limits: nesting to MAX_DEPTH through every
    // precedence level (each round nests `-`, `(`, `!`, `(`), and the longest
    // flat chains. Parse and evaluate them on a small stack (a quarter of a
    // tokio worker's 2 MiB) to show recursion stays bounded.
    let rounds = |k: usize| {
        (0..k).fold(String::from("x"), |inner, _| {
            format!("-(x || x && x == x < x + x * !({inner}))")
        })
    };
    let deepest = rounds(MAX_DEPTH / 4);
    let too_deep = rounds(MAX_DEPTH / 4 + 1);
    let chain = vec!["1"; 2_000].join("+");
    let ors = vec!["x"; 1_300].join("||");
    assert!(chain.len() <= MAX_EXPR_CHARS && ors.len() <= MAX_EXPR_CHARS);
    let handle = std::thread::Builder::new()
        .stack_size(512 * 1024)
        .spawn(move || {
            let e = ev(json!({"x": 1}));
            let d = Expr::parse(&deepest).map(|x| x.eval_f64(&e));
            let t = Expr::parse(&too_deep).map(|_| ());
            let c = Expr::parse(&chain).map(|x| x.eval_f64(&e));
            let o = Expr::parse(&ors).map(|x| x.eval_bool(&e));
            (d, t, c, o)
        })
        .expect("spawn");
    let (d, t, c, o) = handle.join().expect("no stack overflow");
    // `x || …` is a boolean, and negating a boolean is null (not a number).
    assert_eq!(d, Ok(None));
    assert_eq!(t, Err(ExprError::TooDeep));
    assert_eq!(c, Ok(Some(2_000.0)));
    assert_eq!(o, Ok(true));
}

#[test]
fn fields_and_source() {
    let x = p("b + a > 3 && a in [1, 'z'] || !c || (d) == 'lit' || true");
    assert_eq!(x.fields(), vec!["a", "b", "c", "d"]);
    assert_eq!(
        x.source(),
        "b + a > 3 && a in [1, 'z'] || !c || (d) == 'lit' || true"
    );
    assert_eq!(x.to_string(), x.source());
    assert!(p("1 + 2").fields().is_empty());
    assert_eq!(p("x + x + y - x").fields(), vec!["x", "y"]);
    let y: Expr = "status >= 500".parse().expect("FromStr");
    assert_eq!(y, p("status >= 500"));
}

#[test]
fn deserializes_from_strings() {
    let e: Expr = serde_json::from_str("\"status >= 500\"").expect("deserialize");
    assert!(e.eval_bool(&ev(json!({"status": 502}))));
    assert!(!e.eval_bool(&ev(json!({"status": 404}))));
    let err = serde_json::from_str::<Expr>("\"status >= \"").expect_err("bad");
    let msg = err.to_string();
    assert!(msg.contains("\"status >= \""), "{msg}");
    assert!(
        msg.contains("at column 11: expected a value after '>='"),
        "{msg}"
    );
    let err = serde_json::from_str::<Expr>("42").expect_err("not a string");
    assert!(err.to_string().contains("expression string"), "{err}");
    #[derive(serde::Deserialize)]
    struct Def {
        r#where: Option<Expr>,
    }
    let d: Def = serde_json::from_str(r#"{"where": "candidate_type == 'relay'"}"#).expect("def");
    assert_eq!(
        d.r#where.map(|x| x.fields()),
        Some(vec!["candidate_type".to_string()])
    );
}

#[test]
fn arbitrary_input_never_panics() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let tokens = [
        "a", "b", "_x", "1", "2.5", ".5", "1e3", "e", "-", "+", "*", "/", "!", "(", ")", "[", "]",
        ",", "<", "<=", ">", ">=", "==", "!=", "=", "&&", "||", "&", "|", "in", "null", "true",
        "'s'", "\"t\"", "'", "\"", "\\", " ", "é", "\u{0}", "0", ".",
    ];
    let events = [
        ev(json!({"a": 1, "b": "x", "_x": null})),
        ev(json!({"a": "1", "b": 0.0, "_x": [1], "e": {}})),
        ev(json!({})),
    ];
    let mut parsed = 0;
    for i in 0..30_000 {
        let len = rng.random_range(0..40);
        let src = if i % 2 == 0 {
            let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        } else {
            (0..len)
                .map(|_| tokens[rng.random_range(0..tokens.len())])
                .collect()
        };
        if let Ok(x) = Expr::parse(&src) {
            parsed += 1;
            let _ = x.fields();
            for e in &events {
                let _ = (x.eval(e), x.eval_bool(e), x.eval_f64(e));
            }
        }
    }
    assert!(
        parsed > 100,
        "the generator should produce some valid input: {parsed}"
    );
}

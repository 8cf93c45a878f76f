//! The crates a service embeds compile none of the server's heavy
//! dependencies: `cargo tree` of `flowmeter-collector` and `flowmeter-core`
//! (normal dependencies, default and all features) names none of sqlx,
//! rdkafka, clickhouse or jsonschema; and the server's own tree has no
//! `flowmeter-bench`. No servers needed.

use std::process::Command;

/// Crates that only the server may pull in.
const SERVER_ONLY: [&str; 4] = ["sqlx", "rdkafka", "clickhouse", "jsonschema"];

/// The package names of `cargo tree -p PACKAGE -e normal --prefix none`.
fn tree(package: &str, extra: &[&str]) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["tree", "--locked", "-e", "normal", "--prefix", "none", "-p"])
        .arg(package)
        .args(extra)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree -p {package} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    names(&String::from_utf8_lossy(&out.stdout))
}

/// `name v1.2.3 (…)` lines to names.
fn names(tree: &str) -> Vec<String> {
    tree.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The server-only crates in a tree: a name, or a name's `-sys`/`-core`
/// style family (`sqlx-mysql`, `rdkafka-sys`, `clickhouse-derive`, …).
fn server_only(names: &[String]) -> Vec<String> {
    let mut found: Vec<String> = names
        .iter()
        .filter(|n| {
            SERVER_ONLY
                .iter()
                .any(|s| *n == s || n.starts_with(&format!("{s}-")))
        })
        .cloned()
        .collect();
    found.sort();
    found.dedup();
    found
}

#[test]
fn the_embeddable_crates_compile_none_of_the_server() {
    for package in ["flowmeter-collector", "flowmeter-core"] {
        for features in [&[][..], &["--all-features"][..]] {
            let names = tree(package, features);
            assert!(
                names.iter().any(|n| n == package),
                "{package}: not in its own tree: {names:?}"
            );
            let found = server_only(&names);
            assert!(
                found.is_empty(),
                "{package} {features:?} depends on {found:?}: move what needs them to the flowmeter crate"
            );
        }
    }
}

/// The check finds them where they are: in the server's own tree.
#[test]
fn the_check_sees_the_servers_dependencies() {
    let found = server_only(&tree("flowmeter", &[]));
    for s in SERVER_ONLY {
        assert!(found.iter().any(|f| f == s), "{s} not found in {found:?}");
    }
    assert_eq!(
        server_only(&names(
            "sqlx-mysql v0.8.6\nsqlxx v1.0.0\nredis v1.0.0 (*)\n"
        )),
        ["sqlx-mysql"]
    );
}

/// The load generator and the benchmarks build on the server, never the
/// other way: `flowmeter-bench` is at most a dev-dependency of the server's
/// tests, so `cargo build -p flowmeter` does not compile it (issue 15).
#[test]
fn the_server_does_not_depend_on_the_bench() {
    for features in [&[][..], &["--all-features"][..]] {
        let names = tree("flowmeter", features);
        assert!(
            names.iter().any(|n| n == "flowmeter"),
            "flowmeter: not in its own tree: {names:?}"
        );
        assert!(
            !names.iter().any(|n| n == "flowmeter-bench"),
            "flowmeter {features:?} depends on flowmeter-bench: the server must not use the bench crate"
        );
    }
}

//! The README's "Using it" commands, run the way it prints them, so it can
//! never drift from the CLI: every `flowmeter …` line of the first ```sh
//! block under "## Using it" that lists commands goes through `sh -c` with
//! the built binary first on PATH, in the repository, on a prefix and
//! database of the test's own (the FLOWMETER__… variables the demo's
//! profile also yields to) and a server the test starts from the README's
//! own `flowmeter serve` line.
//!
//! Lines the test bounds: `loadgen` runs 2 s instead of its `--duration`,
//! `serve` lines keep running until the end (a worker must join the
//! shards), `query` needs a ClickHouse archive the setup does not enable and
//! must say so, and `bench` (minutes, a release build, its own prefix) is
//! left to tests/integration/bench_cli.rs. Any other line must exit 0 with output.
//! The README's `export … FLOWMETER_PROFILE=demo` line (the one the demo's
//! banner prints) is checked to reach the demo's prefix and database.

use crate::common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{repo, wait_until, ChildGuard, TestEnv};

/// The `flowmeter …` lines of the commands block under "## Using it".
fn using_it_lines(readme: &str) -> Vec<String> {
    let section = readme
        .split("\n## Using it")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("README.md has a \"## Using it\" section");
    let mut blocks = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in section.lines() {
        match (&mut current, line.trim_start()) {
            (None, l) if l.starts_with("```sh") => current = Some(Vec::new()),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(b), l) => b.push(l.to_string()),
            _ => {}
        }
    }
    // the block of commands: the one with the most `flowmeter` lines
    blocks
        .into_iter()
        .map(|b| {
            b.into_iter()
                .filter(|l| l.starts_with("flowmeter "))
                .collect::<Vec<_>>()
        })
        .max_by_key(Vec::len)
        .unwrap_or_default()
}

/// The words of a line before its `#` comment.
fn words(line: &str) -> Vec<&str> {
    line.split('#')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect()
}

/// A shell running `line` in the repository, with the test's environment.
fn shell(line: &str, env: &TestEnv, listen: &str) -> Command {
    let bin = Path::new(env!("CARGO_BIN_EXE_flowmeter"));
    let dir = bin.parent().expect("the binary's directory");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![dir.to_path_buf()];
    dirs.extend(std::env::split_paths(&path));
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(line)
        .current_dir(repo())
        .env("PATH", std::env::join_paths(dirs).expect("PATH"))
        .env_remove("FLOWMETER_PROFILE")
        .env("FLOWMETER__REDIS__PREFIX", &env.name)
        .env("FLOWMETER__MYSQL__URL", &env.settings.mysql.url)
        .env("FLOWMETER__SERVER__LISTEN", listen)
        .env("RUST_LOG", "warn");
    c
}

/// Runs `line` to its end (bounded, so a hang fails instead of blocking).
fn run(line: &str, env: &TestEnv, listen: &str) -> Output {
    let child = shell(line, env, listen)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sh");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(Duration::from_secs(180)) {
        Ok(out) => out.expect("output"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("`{line}` did not finish");
        }
    }
}

fn show(line: &str, out: &Output) -> String {
    format!(
        "`{line}` exited {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Workers of `http_rollup` in the status (each publishes its own figures).
async fn rollup_workers(env: &TestEnv) -> usize {
    flowmeter::app::status(&env.settings)
        .await
        .map(|s| {
            s.processors
                .iter()
                .filter(|p| p.name == "http_rollup")
                .map(|p| p.workers.len())
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_using_it_commands_work_as_printed() {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let lines = using_it_lines(&readme);
    let subcommands: Vec<&str> = lines
        .iter()
        .filter_map(|l| words(l).get(1).copied())
        .collect();
    for needed in ["migrate", "serve", "status"] {
        assert!(
            subcommands.contains(&needed),
            "no `flowmeter {needed}` in {lines:#?}"
        );
    }

    let env = TestEnv::new("readme");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let base = format!("http://{listen}");
    let client = common::http_client();
    let mut servers: Vec<(String, ChildGuard)> = Vec::new();

    for line in &lines {
        let w = words(line);
        match w.get(1).copied() {
            Some("serve") => {
                let mut child = ChildGuard(
                    shell(&format!("exec {line}"), &env, &listen)
                        .stdout(Stdio::null())
                        .stderr(Stdio::inherit())
                        .spawn()
                        .expect("run sh"),
                );
                if servers.is_empty() {
                    // the first serve is the server the rest talk to; give it
                    // the demo's sample events, so there is data to show
                    let c = client.clone();
                    let url = format!("{base}/healthz");
                    wait_until(Duration::from_secs(60), || {
                        let (c, url) = (c.clone(), url.clone());
                        async move { c.get(url).send().await.is_ok() }
                    })
                    .await;
                    let sample =
                        std::fs::read_to_string(repo().join("testdata/sample/events.ndjson"))
                            .expect("sample events");
                    let (code, reply) =
                        common::post_ndjson(&client, &format!("{base}/v1/events"), sample).await;
                    assert_eq!(code, 202, "{reply}");
                    // and wait until they are rolled up, as in the demo
                    let c = client.clone();
                    let url = format!(
                        "{base}/v1/rollups/hourly?kind=http&from=2026-03-04T00:00:00Z&to=2026-03-05T00:00:00Z"
                    );
                    wait_until(Duration::from_secs(60), || {
                        let (c, url) = (c.clone(), url.clone());
                        async move {
                            let v = common::get_json(&c, url).await;
                            v["rows"].as_array().is_some_and(|r| !r.is_empty())
                        }
                    })
                    .await;
                } else {
                    // a further worker joins the shards while the first runs
                    let before = servers.len();
                    wait_until(Duration::from_secs(60), || async {
                        rollup_workers(&env).await > before
                    })
                    .await;
                }
                assert!(child.running(), "`{line}` exited");
                servers.push((line.clone(), child));
            }
            Some("bench") => {
                eprintln!("skipped `{line}`: minutes long and needs a release build (tests/integration/bench_cli.rs runs bench)");
            }
            Some("query") => {
                let out = run(line, &env, &listen);
                assert_eq!(out.status.code(), Some(1), "{}", show(line, &out));
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(
                    err.contains("ClickHouse archive is not enabled")
                        && err.contains("docs/archive.md"),
                    "{}",
                    show(line, &out)
                );
            }
            Some(sub) => {
                let mut line = line.clone();
                if sub == "loadgen" {
                    let d = w
                        .iter()
                        .position(|a| *a == "--duration")
                        .and_then(|i| w.get(i + 1))
                        .expect("loadgen's line gives --duration");
                    line = line.replacen(&format!("--duration {d}"), "--duration 2", 1);
                }
                let out = run(&line, &env, &listen);
                eprintln!("{}", show(&line, &out));
                let stdout = String::from_utf8_lossy(&out.stdout);
                // `status --max-lag-secs` exits 2 when a group is behind
                let ok = match (sub, out.status.code()) {
                    (_, Some(0)) => true,
                    ("status", Some(2)) => w.contains(&"--max-lag-secs"),
                    _ => false,
                };
                assert!(ok, "{}", show(&line, &out));
                assert!(!stdout.trim().is_empty(), "{}", show(&line, &out));
                let expect: &[&str] = match sub {
                    "migrate" => &["migrations applied"],
                    // the test's data, not the defaults'
                    "config" | "status" => &[&env.name],
                    "groups" => &["rollup"],
                    "replay" => &["http_rollup"],
                    "shards" => &["current", "redis.shards"],
                    "loadgen" => &["accepted"],
                    _ => &[],
                };
                for e in expect {
                    assert!(stdout.contains(e), "no {e:?}: {}", show(&line, &out));
                }
            }
            None => unreachable!("lines start with `flowmeter `"),
        }
    }
    assert!(!servers.is_empty(), "the README starts no server");
    for (line, mut child) in servers.into_iter().rev() {
        assert!(child.running(), "`{line}` exited early");
        assert!(child.terminate().success(), "`{line}` did not stop cleanly");
    }
    env.cleanup().await;
}

#[test]
fn the_parser_finds_the_commands_block() {
    let readme = "# x\n## Using it\n\ntext\n\n```sh\nexport A=1\n```\n\n```sh\nflowmeter migrate   # a\nflowmeter status\n```\n## Next\n```sh\nflowmeter bench\n```\n";
    assert_eq!(
        using_it_lines(readme),
        vec!["flowmeter migrate   # a", "flowmeter status"]
    );
    assert_eq!(
        words("flowmeter dlq list   # x y"),
        vec!["flowmeter", "dlq", "list"]
    );
}

/// The README's `export …` line under "## Using it" (what the demo's banner
/// prints) and `--profile demo` both point a command at the demo's prefix
/// and database.
#[test]
fn the_export_line_and_the_profile_point_at_the_demo() {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let section = readme
        .split("\n## Using it")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a \"## Using it\" section");
    let export = section
        .lines()
        .find(|l| l.starts_with("export ") && l.contains("FLOWMETER_PROFILE=demo"))
        .expect("an `export … FLOWMETER_PROFILE=demo` line");
    let bin = Path::new(env!("CARGO_BIN_EXE_flowmeter"));
    let dir = bin.parent().expect("the binary's directory");
    // the line's own PATH entry may hold another build: this test's goes first
    let line = format!(
        "{export}; export PATH=\"{}:$PATH\"; flowmeter config",
        dir.display()
    );
    let demo = |c: &mut Command| {
        let out = c
            .current_dir(repo())
            .env_remove("FLOWMETER_PROFILE")
            .env_remove("FLOWMETER__REDIS__PREFIX")
            .env_remove("FLOWMETER__MYSQL__URL")
            .output()
            .expect("run");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("prefix = \"fmdemo\"") && text.contains("3306/fmdemo\""),
            "{text}"
        );
    };
    demo(Command::new("sh").arg("-c").arg(&line));
    demo(Command::new(bin).args(["--profile", "demo", "config"]));
    demo(Command::new(bin).args(["config", "--profile", "demo"]));
}

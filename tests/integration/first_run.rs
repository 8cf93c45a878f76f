//! The first-run path: read-only commands leave nothing behind on a database
//! nobody migrated and say to run `flowmeter migrate`; `serve` says the same;
//! and several `serve --roles rollup` workers on one config run side by side.

use crate::common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{cli, database_exists, keys_under, wait_until, ChildGuard, TestEnv};
use flowmeter::app::{self, Roles};
use tokio_util::sync::CancellationToken;

/// Output of one CLI run, stdout and stderr together.
fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_commands_create_nothing_and_say_run_migrate() {
    let env = TestEnv::new("readonly");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = env.write_config(dir.path());
    assert!(!database_exists(&env.name).await);

    let out = cli(&config, &["status"]);
    assert!(out.status.success(), "{}", text(&out));
    let all = text(&out);
    assert!(
        all.contains(&format!(
            "database `{}` does not exist: run `flowmeter migrate`",
            env.name
        )),
        "{all}"
    );
    assert!(!all.contains("scripts/services start"), "{all}");
    for args in [
        &["status", "--json"][..],
        &["groups", "list"],
        &["groups", "list", "--json"],
        &["dlq", "list"],
        &["trim", "--dry-run"],
        &["config"],
    ] {
        let out = cli(&config, args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
    }
    // `query` needs the archive; without it, it says so, and touches nothing
    let out = cli(&config, &["query", "--kind", "http"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("ClickHouse archive is not enabled"),
        "{}",
        text(&out)
    );

    assert!(
        !database_exists(&env.name).await,
        "a read-only command created the database"
    );
    assert_eq!(keys_under(&env, &env.name).await, Vec::<String>::new());

    // a database without tables (created by hand, never migrated): the
    // missing table is named, with the fix
    common::create_empty_database(&env.name).await;
    let out = cli(&config, &["status"]);
    assert!(out.status.success(), "{}", text(&out));
    let all = text(&out);
    assert!(
        all.contains("fm_checkpoints: does not exist: run `flowmeter migrate`"),
        "{all}"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_an_unmigrated_database_says_run_migrate() {
    let env = TestEnv::new("unmigrated");
    let serve = |roles: &str| {
        let settings = env.settings.clone();
        let roles: Roles = roles.parse().expect("roles");
        async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            // fails before it serves; the token only bounds a surprise
            let stop = CancellationToken::new();
            let guard = stop.clone().drop_guard();
            let r = tokio::time::timeout(
                Duration::from_secs(60),
                app::serve(settings, roles, Some(listener), stop),
            )
            .await
            .expect("serve returns");
            drop(guard);
            r.expect_err("serve refuses an unmigrated database")
                .to_string()
        }
    };
    for roles in ["ingest,api,rollup,hub", "rollup", "api"] {
        let err = serve(roles).await;
        assert_eq!(
            err,
            format!(
                "MySQL: database `{}` does not exist: run `flowmeter migrate`",
                env.name
            ),
            "{roles}"
        );
    }
    assert!(
        !database_exists(&env.name).await,
        "serve created the database"
    );

    // the database exists, its tables do not
    common::create_empty_database(&env.name).await;
    for roles in ["rollup", "api"] {
        let err = serve(roles).await;
        assert!(
            err.contains("does not exist: run `flowmeter migrate`"),
            "{roles}: {err}"
        );
        assert!(!err.contains("add a migration that creates it"), "{err}");
    }
    env.cleanup().await;
}

/// Two `serve --roles rollup` processes with the same config (whose
/// `server.listen` is taken) both run and share the shards: workers bind
/// `server.worker_listen`, a free port by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rollup_workers_on_one_config_both_run() {
    let mut env = TestEnv::new("workers");
    env.migrate().await;
    // server.listen is busy: a worker must not need it
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    env.settings.server.listen = taken.local_addr().expect("addr").to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = env.write_config(dir.path());
    let spawn = || {
        ChildGuard(
            Command::new(env!("CARGO_BIN_EXE_flowmeter"))
                .arg("--config")
                .arg(&config)
                .args(["serve", "--roles", "rollup"])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn flowmeter"),
        )
    };
    let mut a = spawn();
    let mut b = spawn();
    // both take part: the status lists two workers of the http rollup
    let settings = env.settings.clone();
    wait_until(Duration::from_secs(60), || {
        let settings = settings.clone();
        async move {
            let status = app::status(&settings).await.expect("status");
            status
                .processors
                .iter()
                .any(|p| p.name == "http_rollup" && p.workers.len() == 2)
        }
    })
    .await;
    assert!(a.running() && b.running(), "a worker exited");
    assert!(a.terminate().success());
    assert!(b.terminate().success());
    env.cleanup().await;
}

/// `serve` with its log written to a file, as a service manager or
/// `2> file` does: the lines are plain text, without ANSI colour codes
/// (telemetry colours only a terminal), whatever NO_COLOR says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_written_to_a_file_carry_no_colour_codes() {
    let env = TestEnv::new("log_file");
    env.migrate().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = env.write_config(dir.path());
    let log = dir.path().join("serve.log");
    let child = ChildGuard(
        Command::new(env!("CARGO_BIN_EXE_flowmeter"))
            .arg("--config")
            .arg(&config)
            .args([
                "serve",
                "--roles",
                "ingest,api,rollup",
                "--listen",
                "127.0.0.1:0",
            ])
            .env("RUST_LOG", "info")
            .env_remove("NO_COLOR")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn flowmeter"),
    );
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until(Duration::from_secs(60), || {
        let up = read().contains("listening");
        async move { up }
    })
    .await;
    assert!(child.terminate().success());
    let text = read();
    // levels and fields are written, and shutdown too: the whole run
    assert!(
        text.contains(" INFO ") && text.contains("roles=") && text.contains("shutting down"),
        "{text}"
    );
    assert!(
        !text.contains('\x1b'),
        "colour codes in a log file: {text:?}"
    );
    env.cleanup().await;
}

/// Pods that each run `flowmeter migrate` before they serve (k8s/base) start
/// together: concurrent runs on a fresh database all succeed, one after the
/// other under the migration lock, and each migration is applied once.
/// (sqlx's own lock is none on MariaDB: without flowmeter's, three of four
/// such runs failed with "migration N is partially applied".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrations_all_succeed() {
    let env = TestEnv::new("migrate_race");
    let s = &env.settings;
    let runs = tokio::join!(
        app::migrate(s),
        app::migrate(s),
        app::migrate(s),
        app::migrate(s)
    );
    for r in [runs.0, runs.1, runs.2, runs.3] {
        r.expect("every concurrent migrate succeeds");
    }
    let files = std::fs::read_dir(&s.paths.migrations)
        .expect("migrations dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
        })
        .count();
    let store = env.store().await;
    let applied = common::scalar(
        &store,
        "SELECT COUNT(*) FROM _sqlx_migrations WHERE success = 1",
    )
    .await;
    assert_eq!(applied, i64::try_from(files).expect("count"));
}

//! `flowmeter verify --truth FILE` against a running stack: a loadgen run's
//! truth matches the rollup tables; a tampered row makes it fail, naming
//! the row and the measure.

use crate::common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_passes_on_a_loadgen_truth_and_names_a_tampered_row() {
    let mut env = TestEnv::new("verify");
    env.settings.rollup.flush_interval_ms = 100;
    env.migrate().await;
    let server = env.start("ingest,api,rollup").await;
    let dir = tempfile::tempdir().expect("tmp");
    let config = env.write_config(dir.path());
    let truth = dir.path().join("truth.ndjson");
    let truth_arg = truth.to_str().expect("utf-8 path");
    let url = server.url("");
    let args = [
        "loadgen",
        "--url",
        &url,
        "--rate",
        "3000",
        "--duration",
        "1",
        "--kind",
        "mixed",
        "--quiet",
        "--truth",
        truth_arg,
    ];
    let sent = tokio::task::spawn_blocking({
        let config = config.clone();
        let args = args.map(String::from);
        move || cli_ok(&config, &args.each_ref().map(String::as_str))
    })
    .await
    .expect("loadgen");
    assert!(sent.contains("3000"), "{sent}");

    // the workers may still be flushing: verify waits for them
    let run = |args: Vec<String>| {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            cli(&config, &args)
        })
    };
    let verify = |wait: &str| {
        ["verify", "--truth", truth_arg, "--wait", wait]
            .map(String::from)
            .to_vec()
    };
    let out = run(verify("60")).await.expect("verify");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("the tables match the truth") && stdout.contains("3,000 events"),
        "{stdout}"
    );

    // one row tampered with: exit 1, the row and the measure named
    let store = env.store().await;
    let (service, endpoint, method): (String, String, String) = sqlx::query_as(
        "SELECT CAST(service AS CHAR), CAST(endpoint AS CHAR), CAST(method AS CHAR) \
         FROM http_hourly ORDER BY requests DESC, endpoint LIMIT 1",
    )
    .fetch_one(store.pool())
    .await
    .expect("a row");
    sqlx::query(
        "UPDATE http_hourly SET requests = requests + 1 WHERE service = ? AND endpoint = ? AND method = ?",
    )
    .bind(&service)
    .bind(&endpoint)
    .bind(&method)
    .execute(store.pool())
    .await
    .expect("tamper");
    let out = run(verify("0")).await.expect("verify");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    println!("{stdout}{stderr}");
    let row = format!("service={service} endpoint={endpoint} method={method}");
    let line = stdout
        .lines()
        .find(|l| l.contains(&row))
        .unwrap_or_else(|| panic!("no line for {row}:\n{stdout}"));
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cells.first(), Some(&"http"), "{line}");
    assert!(cells.contains(&"requests"), "{line}");
    assert_eq!(cells.last(), Some(&"+1"), "{line}");
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("http ")).count(),
        1,
        "only the tampered measure: {stdout}"
    );
    assert!(stdout.contains("1 row differs"), "{stdout}");
    assert!(stderr.contains("differ"), "{stderr}");

    // a file that is not a truth file names its line
    std::fs::write(&truth, "{\"kind\": \"http\"}\n").expect("write");
    let out = run(verify("0")).await.expect("verify");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("line 1"), "{stderr}");

    server.stop().await;
    env.cleanup().await;
}

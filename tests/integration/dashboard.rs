//! The dashboard in headless Chromium against a real `flowmeter serve`
//! (tests/browser/dashboard.mjs): first load, live numbers, resume after a
//! dropped socket and after a server restart, 500+ meetings rendered and
//! scrolled with only the visible rows in the DOM (frame times reported, not
//! asserted), CSV/JSON export equal to the API's answer; History readable
//! at 1400×900 and 390×844 and opening on data; alert messages with units.

use crate::common;

use common::browser::BrowserRun;
use common::TestEnv;

const READ: &str = "read-token-0123456789";
const INGEST: &str = "ingest-token-0123456789";

async fn scenario(name: &str) -> serde_json::Value {
    scenario_with(name, |_, _| {}).await
}

/// A scenario whose env `setup` may change (with a directory for copied
/// definitions that lives as long as the run).
async fn scenario_with(
    name: &str,
    setup: impl FnOnce(&mut TestEnv, &std::path::Path),
) -> serde_json::Value {
    let _turn = common::heavy().await;
    let defs = tempfile::tempdir().expect("tempdir");
    let mut env = TestEnv::new(&format!("dash_{name}"));
    setup(&mut env, defs.path());
    env.settings.auth.tokens = common::read_and_ingest_tokens(READ, INGEST);
    env.settings.hub.tick_grace_ms = 200;
    env.migrate().await;
    let run = BrowserRun::new(&mut env);
    let out = run.node(
        "dashboard.mjs",
        &[
            ("FM_SCENARIO", name.to_string()),
            ("FM_READ", READ.to_string()),
            ("FM_INGEST", INGEST.to_string()),
        ],
    );
    if let Ok(dir) = std::env::var("FM_SCREENSHOTS") {
        for f in std::fs::read_dir(run.dir.path())
            .expect("run dir")
            .flatten()
        {
            if f.path().extension().is_some_and(|e| e == "png") {
                let _ = std::fs::copy(f.path(), std::path::Path::new(&dir).join(f.file_name()));
            }
        }
    }
    env.cleanup().await;
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_goes_live_and_resumes_after_drops_and_restarts() {
    let r = scenario("live").await;
    eprintln!("measured: {r}");
    assert!(
        r["live_ms"].as_f64().is_some(),
        "the script reported its figures"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_lists_500_meetings_rendering_only_visible_rows() {
    let r = scenario("meetings").await;
    eprintln!("measured: {r}");
    assert!(r["rendered_rows"].as_u64().is_some_and(|n| n > 0 && n < 60));
    assert!(r["rendered_rows_scrolling"]
        .as_u64()
        .is_some_and(|n| n > 0 && n < 60));
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_history_exports_exactly_what_the_api_answers() {
    let r = scenario("history").await;
    eprintln!("measured: {r}");
    assert!(r["rows"].as_u64().is_some_and(|n| n > 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_shows_alert_messages_with_units() {
    let r = scenario_with("alerts", |env, dir| {
        common::use_copied_definitions(env, dir);
        std::fs::write(
            dir.join("processors/alerts.toml"),
            r#"
type = "alerts"
[[rule]]
name = "errors"
type = "threshold"
protocol = "http"
metric = "error_rate"
scope = "service"
window_secs = 3
value = 0.5
severity = "critical"
for = 1
clear_for = 60
min_events = 5
"#,
        )
        .expect("rules");
    })
    .await;
    eprintln!("measured: {r}");
    assert!(r["message"].as_str().is_some_and(|m| m.contains(" %")));
}

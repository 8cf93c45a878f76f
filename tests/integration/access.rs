//! Tokens and scopes on every endpoint, CORS on ingest for browser
//! collectors, and the embedded dashboard assets (ETag, gzip).

use crate::common;

use common::{http_client, http_event, TestEnv};
use flowmeter::config::TokenConfig;
use reqwest::header;

const READ: &str = "read-token-0123456789";
const INGEST: &str = "ingest-token-0123456789";

fn tokens() -> Vec<TokenConfig> {
    common::read_and_ingest_tokens(READ, INGEST)
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_scopes_and_cors_guard_the_api() {
    let mut env = TestEnv::new("access");
    env.settings.auth.tokens = tokens();
    env.settings.ingest.cors_origins = vec!["https://meet.example.com".into()];
    env.migrate().await;
    let server = env.start("ingest,api").await;
    let c = http_client();
    let events = serde_json::json!([http_event(1, chrono::Utc::now().timestamp_millis())]);
    let post = |url: String, auth: Option<&'static str>, origin: Option<&'static str>| {
        let mut r = c.post(url).json(&events);
        if let Some(t) = auth {
            r = r.bearer_auth(t);
        }
        if let Some(o) = origin {
            r = r.header(header::ORIGIN, o);
        }
        r.send()
    };
    let events_url = server.url("/v1/events");

    // ingest: no token 401, read token 403, ingest token (header or query) 202
    let r = post(events_url.clone(), None, None).await.expect("post");
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.expect("json");
    assert!(body["error"]
        .as_str()
        .is_some_and(|e| e.contains("missing token")));
    assert_eq!(
        post(events_url.clone(), Some(READ), None)
            .await
            .expect("post")
            .status(),
        403
    );
    assert_eq!(
        post(events_url.clone(), Some(INGEST), None)
            .await
            .expect("post")
            .status(),
        202
    );
    let r = post(format!("{events_url}?token={INGEST}"), None, None)
        .await
        .expect("post");
    assert_eq!(r.status(), 202);

    // a listed origin gets CORS headers, on the preflight and on the answer
    let pre = c
        .request(reqwest::Method::OPTIONS, &events_url)
        .header(header::ORIGIN, "https://meet.example.com")
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "content-type")
        .send()
        .await
        .expect("preflight");
    assert_eq!(pre.status(), 204);
    assert_eq!(
        pre.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://meet.example.com"
    );
    assert!(pre.headers()[header::ACCESS_CONTROL_ALLOW_HEADERS]
        .to_str()
        .is_ok_and(|h| h.contains("content-type")));
    let r = post(
        format!("{events_url}?token={INGEST}"),
        None,
        Some("https://meet.example.com"),
    )
    .await
    .expect("post");
    assert_eq!(r.status(), 202);
    assert_eq!(
        r.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://meet.example.com"
    );
    // an error answer carries them too, so the page can read why
    let r = post(events_url.clone(), None, Some("https://meet.example.com"))
        .await
        .expect("post");
    assert_eq!(r.status(), 401);
    assert!(r
        .headers()
        .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
    // another origin is refused before anything is read, even with a good token
    let r = post(
        events_url.clone(),
        Some(INGEST),
        Some("https://evil.example.net"),
    )
    .await
    .expect("post");
    assert_eq!(r.status(), 403);
    let cors = r
        .headers()
        .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN);
    let body: serde_json::Value = r.json().await.expect("json");
    assert!(body["error"]
        .as_str()
        .is_some_and(|e| e.contains("ingest.cors_origins")));
    assert!(!cors);
    // the server's own origin (the dashboard's pages) passes
    let own: &'static str = Box::leak(format!("http://{}", server.addr).into_boxed_str());
    assert_eq!(
        post(events_url.clone(), Some(INGEST), Some(own))
            .await
            .expect("post")
            .status(),
        202
    );

    // read endpoints: 401 / 403 / 200
    let get = |path: &str, t: Option<&str>| {
        let mut r = c.get(server.url(path));
        if let Some(t) = t {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    for path in [
        "/v1/rollups/hourly?kind=http",
        "/v1/status",
        "/v1/alerts?limit=1",
    ] {
        assert_eq!(get(path, None).await.expect("get").status(), 401, "{path}");
        assert_eq!(
            get(path, Some(INGEST)).await.expect("get").status(),
            403,
            "{path}"
        );
        assert_eq!(
            get(path, Some(READ)).await.expect("get").status(),
            200,
            "{path}"
        );
    }
    // `?token=` works on every read endpoint (it used to be refused as an
    // unknown filter on rollups and alerts), and so does a lowercase scheme
    for path in [
        "/v1/rollups/hourly?kind=http&",
        "/v1/rollups/daily?kind=http&",
        "/v1/status?",
        "/v1/alerts?limit=1&",
    ] {
        let r = c
            .get(server.url(&format!("{path}token={READ}")))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 200, "{path}");
        let r = c
            .get(server.url(path))
            .header(header::AUTHORIZATION, format!("bearer {READ}"))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 200, "{path}");
    }
    // probes and the pages stay open
    assert_eq!(get("/healthz", None).await.expect("get").status(), 200);
    assert_eq!(get("/", None).await.expect("get").status(), 200);
    server.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_assets_are_embedded_cached_and_compressed() {
    let env = TestEnv::new("assets");
    let server = env.start("ingest").await;
    let c = http_client();
    let r = c.get(server.url("/")).send().await.expect("get /");
    assert_eq!(r.status(), 200);
    assert!(r.headers()[header::CONTENT_TYPE]
        .to_str()
        .is_ok_and(|t| t.starts_with("text/html")));
    let etag = r.headers()[header::ETAG].clone();
    assert!(r.text().await.expect("body").contains("/assets/app.js"));
    // revalidation: 304 without a body
    let r = c
        .get(server.url("/"))
        .header(header::IF_NONE_MATCH, etag)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 304);
    // gzip when asked (reqwest here does not decompress)
    let r = c
        .get(server.url("/assets/app.js"))
        .header(header::ACCEPT_ENCODING, "gzip")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()[header::CONTENT_ENCODING], "gzip");
    // the SDK may be loaded from any page
    let r = c
        .get(server.url("/sdk/webrtc-stats.js"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    // the charting library is embedded by this build (npm is present in CI)
    let r = c
        .get(server.url("/assets/uplot.js"))
        .send()
        .await
        .expect("get");
    assert!(
        r.bytes().await.expect("body").len() > 10_000,
        "uPlot was embedded (build.rs ran npm ci)"
    );
    assert_eq!(
        c.get(server.url("/assets/nope.js"))
            .send()
            .await
            .expect("get")
            .status(),
        404
    );
    server.stop().await;
    env.cleanup().await;
}

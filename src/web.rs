//! The dashboard and the browser SDK, embedded in the binary.
//!
//! | path | what |
//! |---|---|
//! | `/` | the dashboard (`web/dashboard/`; docs/dashboard.md) |
//! | `/assets/*` | its script, style sheet and the pinned uPlot (installed by `build.rs`) |
//! | `/sdk/webrtc-stats.js` | the browser WebRTC collector (`web/sdk/`; docs/collector.md) |
//!
//! Every asset has a strong `ETag` (its content hash) and `Cache-Control:
//! no-cache`, so browsers revalidate with one 304 per file; bodies are
//! gzip-compressed when the client accepts it. The pages carry no data: the
//! data comes from the API and the hub, which check tokens.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

static ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../web/dashboard/index.html"),
    },
    Asset {
        name: "app.js",
        content_type: JS,
        body: include_bytes!("../web/dashboard/app.js"),
    },
    Asset {
        name: "app.css",
        content_type: CSS,
        body: include_bytes!("../web/dashboard/app.css"),
    },
    Asset {
        name: "uplot.js",
        content_type: JS,
        body: include_bytes!(concat!(env!("OUT_DIR"), "/uplot.js")),
    },
    Asset {
        name: "uplot.css",
        content_type: CSS,
        body: include_bytes!(concat!(env!("OUT_DIR"), "/uplot.css")),
    },
    Asset {
        name: "webrtc-stats.js",
        content_type: JS,
        body: include_bytes!("../web/sdk/webrtc-stats.js"),
    },
];

/// ETags, computed once.
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            let h = xxhash_rust::xxh3::xxh3_64(a.body);
            HeaderValue::from_str(&format!("\"{h:016x}\""))
                .unwrap_or(HeaderValue::from_static("\"0\""))
        })
        .collect()
});

/// Whether the build embedded the charting library (`npm` was available).
pub fn charts_embedded() -> bool {
    ASSETS
        .iter()
        .any(|a| a.name == "uplot.js" && !a.body.is_empty())
}

fn serve(name: &str, headers: &HeaderMap) -> Response {
    let Some(i) = ASSETS.iter().position(|a| a.name == name) else {
        return (StatusCode::NOT_FOUND, "no such asset\n").into_response();
    };
    let (asset, etag) = (&ASSETS[i], &ETAGS[i]);
    let cached = headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes());
    let common = [
        (header::ETAG, etag.clone()),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
    ];
    if cached {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (
        common,
        [(header::CONTENT_TYPE, asset.content_type)],
        asset.body,
    )
        .into_response()
}

/// Routes of the dashboard and the SDK (every role serves them).
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/",
            get(|h: HeaderMap| async move { serve("index.html", &h) }),
        )
        .route(
            "/assets/{file}",
            get(|Path(f): Path<String>, h: HeaderMap| async move {
                match f.as_str() {
                    "index.html" | "webrtc-stats.js" => serve("", &h),
                    f => serve(f, &h),
                }
            }),
        )
        .route(
            "/sdk/webrtc-stats.js",
            get(|h: HeaderMap| async move {
                let mut r = serve("webrtc-stats.js", &h);
                // meeting pages on other origins load it with <script src>
                r.headers_mut().insert(
                    header::ACCESS_CONTROL_ALLOW_ORIGIN,
                    HeaderValue::from_static("*"),
                );
                r
            }),
        )
        .layer(tower_http::compression::CompressionLayer::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_has_a_distinct_etag_and_the_pages_are_present() {
        assert_eq!(ETAGS.len(), ASSETS.len());
        for a in ASSETS {
            if !a.name.starts_with("uplot") {
                assert!(!a.body.is_empty(), "{} is empty", a.name);
            }
        }
        let index = std::str::from_utf8(ASSETS[0].body).expect("utf-8");
        assert!(index.contains("/assets/app.js"));
    }
}

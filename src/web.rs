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

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// One embedded file, served at `path`.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    /// Loadable from pages of any origin (the SDK).
    any_origin: bool,
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

static ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../web/dashboard/index.html"),
        any_origin: false,
    },
    Asset {
        path: "/assets/app.js",
        content_type: JS,
        body: include_bytes!("../web/dashboard/app.js"),
        any_origin: false,
    },
    Asset {
        path: "/assets/app.css",
        content_type: CSS,
        body: include_bytes!("../web/dashboard/app.css"),
        any_origin: false,
    },
    Asset {
        path: "/assets/uplot.js",
        content_type: JS,
        body: include_bytes!(concat!(env!("OUT_DIR"), "/uplot.js")),
        any_origin: false,
    },
    Asset {
        path: "/assets/uplot.css",
        content_type: CSS,
        body: include_bytes!(concat!(env!("OUT_DIR"), "/uplot.css")),
        any_origin: false,
    },
    Asset {
        path: "/sdk/webrtc-stats.js",
        content_type: JS,
        body: include_bytes!("../web/sdk/webrtc-stats.js"),
        // meeting pages on other origins load it with <script src>
        any_origin: true,
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

fn serve(i: usize, headers: &HeaderMap) -> Response {
    let (asset, etag) = (&ASSETS[i], &ETAGS[i]);
    let cached = headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes());
    let mut resp = if cached {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, asset.content_type)], asset.body).into_response()
    };
    let h = resp.headers_mut();
    h.insert(header::ETAG, etag.clone());
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if asset.any_origin {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
    }
    resp
}

/// Routes of the dashboard and the SDK (every role serves them): one per
/// asset; other paths fall through to the API's 404.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let mut r = Router::new();
    for (i, a) in ASSETS.iter().enumerate() {
        r = r.route(a.path, get(move |h: HeaderMap| async move { serve(i, &h) }));
    }
    r.layer(tower_http::compression::CompressionLayer::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_has_a_distinct_etag_and_the_pages_are_present() {
        assert_eq!(ETAGS.len(), ASSETS.len());
        for a in ASSETS {
            if !a.path.contains("uplot") {
                assert!(!a.body.is_empty(), "{} is empty", a.path);
            }
        }
        let index = std::str::from_utf8(ASSETS[0].body).expect("utf-8");
        assert!(index.contains("/assets/app.js"));
    }
}

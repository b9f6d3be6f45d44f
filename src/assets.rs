//! The files a pod serves to browsers: the JavaScript client at
//! `GET /herald.js` (always) and, with `--demo`, the demo chat at
//! `GET /demo` with a link to it at `GET /`.
//!
//! Both are embedded at build time from `clients/`, so the module a page
//! imports from a pod is byte for byte the one in `clients/js/`. Each
//! response carries a strong `ETag` (a hash of the embedded bytes) and
//! `Cache-Control`, so a browser revalidates cheaply and a new build is
//! picked up within the cache lifetime.

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::topic::{FNV_OFFSET, fnv1a};

/// The JavaScript client, as published in `clients/js/`.
const CLIENT_JS: &str = include_str!("../clients/js/herald.js");

/// The demo chat page.
const DEMO_HTML: &str = include_str!("../clients/demo/index.html");

/// The landing page of a pod with `--demo`.
const INDEX_HTML: &str = "<!doctype html><meta charset=utf-8><title>herald</title>\
<p>This herald pod runs with <code>--demo</code>: open the <a href=\"/demo\">demo chat</a>. \
The JavaScript client is at <a href=\"/herald.js\">/herald.js</a>.</p>\n";

/// How long a browser may use a served file before it revalidates.
const CACHE_CONTROL: &str = "public, max-age=300";

/// `GET /herald.js`, and with `demo` also `GET /demo` and `GET /`.
pub fn router(demo: bool) -> Router {
    let router = Router::new().route(
        "/herald.js",
        get(|headers: HeaderMap| async move {
            serve(&headers, CLIENT_JS, "text/javascript; charset=utf-8")
        }),
    );
    if !demo {
        return router;
    }
    router
        .route(
            "/demo",
            get(|headers: HeaderMap| async move {
                serve(&headers, DEMO_HTML, "text/html; charset=utf-8")
            }),
        )
        .route(
            "/",
            get(|headers: HeaderMap| async move {
                serve(&headers, INDEX_HTML, "text/html; charset=utf-8")
            }),
        )
}

/// One embedded file, or 304 when the browser's copy is current.
fn serve(request: &HeaderMap, body: &'static str, content_type: &'static str) -> Response {
    let etag = format!("\"{:016x}\"", fnv1a(FNV_OFFSET, body.as_bytes()));
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|tags| {
            tags.split(',')
                .any(|tag| tag.trim() == etag || tag.trim() == "*")
        });
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CACHE_CONTROL),
    );
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    if fresh {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    (headers, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(if_none_match: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(tag) = if_none_match {
            headers.insert(
                header::IF_NONE_MATCH,
                HeaderValue::from_str(tag).expect("header"),
            );
        }
        headers
    }

    #[test]
    fn a_file_is_served_with_its_type_an_etag_and_a_cache_lifetime() {
        let response = serve(&request(None), CLIENT_JS, "text/javascript; charset=utf-8");
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers();
        assert_eq!(
            headers[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        assert_eq!(headers[header::CACHE_CONTROL], CACHE_CONTROL);
        assert!(
            headers[header::ETAG]
                .to_str()
                .expect("etag")
                .starts_with('"')
        );
    }

    #[test]
    fn a_browser_holding_the_current_etag_gets_304_without_a_body() {
        let first = serve(&request(None), CLIENT_JS, "text/javascript");
        let etag = first.headers()[header::ETAG]
            .to_str()
            .expect("etag")
            .to_owned();
        let again = serve(
            &request(Some(&format!("\"old\", {etag}"))),
            CLIENT_JS,
            "text/javascript",
        );
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert!(!again.headers().contains_key(header::CONTENT_TYPE));
        let stale = serve(&request(Some("\"old\"")), CLIENT_JS, "text/javascript");
        assert_eq!(stale.status(), StatusCode::OK);
    }
}

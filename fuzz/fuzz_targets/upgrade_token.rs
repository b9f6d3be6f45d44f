//! An upgrade request's token places, as `token_from_upgrade` reads them:
//! the input is split at NUL bytes into an `Authorization` value, a query
//! string and `Sec-WebSocket-Protocol` values. Checks: no panic, a token
//! found is never empty, one from a header is a part of that header, and
//! a token's `Debug` shows only where it came from.

#![no_main]

use herald::auth::{TokenSource, offers_subprotocol, token_from_upgrade};
use http::{HeaderMap, HeaderValue, header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|&b| b == 0);
    let authorization = parts.next().unwrap_or_default();
    let query = parts.next().map(String::from_utf8_lossy);
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_bytes(authorization) {
        headers.insert(header::AUTHORIZATION, value);
    }
    for protocol in parts {
        if let Ok(value) = HeaderValue::from_bytes(protocol) {
            headers.append(header::SEC_WEBSOCKET_PROTOCOL, value);
        }
    }
    let _ = offers_subprotocol(&headers);
    let Some(token) = token_from_upgrade(&headers, query.as_deref()) else {
        return;
    };
    assert!(!token.value.is_empty(), "an empty token was taken");
    if token.source != TokenSource::Query {
        let from = match token.source {
            TokenSource::Header => vec![authorization],
            _ => headers
                .get_all(header::SEC_WEBSOCKET_PROTOCOL)
                .iter()
                .map(HeaderValue::as_bytes)
                .collect(),
        };
        let bytes = token.value.as_bytes();
        assert!(
            from.iter()
                .any(|h| h.windows(bytes.len()).any(|w| w == bytes)),
            "a token that its header does not hold"
        );
    }
    // Compared whole: a token may well be a piece of the redacted text.
    assert_eq!(
        format!("{token:?}"),
        format!(
            "Token {{ value: \"[redacted]\", source: {:?} }}",
            token.source
        ),
        "Debug shows more than the token's source"
    );
});

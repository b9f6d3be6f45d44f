//! Where a WebSocket client's token comes from. Backends and tools set
//! `Authorization: Bearer`; browsers cannot set headers on a WebSocket, so
//! they put the token in the `token` query parameter or offer it as a
//! subprotocol, `new WebSocket(url, ["herald.v1", "bearer." + jwt])`.
//!
//! The subprotocol route keeps the token out of URLs (and so out of access
//! logs), but the server must answer the handshake by selecting
//! [`SUBPROTOCOL`], never the `bearer.` entry: the response would otherwise
//! echo the token, and a browser fails a handshake whose answer is not one of
//! the protocols it offered, so a client offering `bearer.` must offer
//! `herald.v1` too.

use std::fmt;

use axum::http::HeaderMap;
use axum::http::header::SEC_WEBSOCKET_PROTOCOL;

use super::api_tokens::bearer;

/// The WebSocket subprotocol of protocol v1; the only one the server selects.
pub const SUBPROTOCOL: &str = "herald.v1";

/// The prefix of the subprotocol entry that carries a token.
pub const BEARER_PROTOCOL_PREFIX: &str = "bearer.";

/// The query parameter that carries a token.
pub const TOKEN_QUERY_PARAMETER: &str = "token";

/// Where a token was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer <token>`.
    Header,
    /// The `token` query parameter.
    Query,
    /// A `bearer.<token>` entry of `Sec-WebSocket-Protocol`.
    Subprotocol,
}

impl TokenSource {
    /// A fixed label, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Header => "header",
            Self::Query => "query",
            Self::Subprotocol => "subprotocol",
        }
    }
}

/// A token a client presented, not yet verified. Its `Debug` output hides
/// the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// The token itself.
    pub value: String,
    /// Where it came from.
    pub source: TokenSource,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("value", &"[redacted]")
            .field("source", &self.source)
            .finish()
    }
}

/// The token of an upgrade request, from the first place that holds one:
/// the `Authorization: Bearer` header, then the `token` query parameter
/// (percent-decoded; `query` is the URI's query without `?`), then a
/// `bearer.<token>` entry of `Sec-WebSocket-Protocol`. A place holding
/// something unusable (another scheme, an empty value) is skipped.
pub fn token_from_upgrade(headers: &HeaderMap, query: Option<&str>) -> Option<Token> {
    let found = |value: String, source| Some(Token { value, source });
    if let Some(value) = bearer(headers) {
        return found(value.to_owned(), TokenSource::Header);
    }
    if let Some(value) = query.and_then(|q| query_parameter(q, TOKEN_QUERY_PARAMETER)) {
        return found(value, TokenSource::Query);
    }
    if let Some(value) = offered_protocols(headers).find_map(|p| {
        p.strip_prefix(BEARER_PROTOCOL_PREFIX)
            .filter(|t| !t.is_empty())
    }) {
        return found(value.to_owned(), TokenSource::Subprotocol);
    }
    None
}

/// Whether the client offered [`SUBPROTOCOL`]. A client that sent its token
/// as a subprotocol but did not offer this one cannot be answered in a way a
/// browser accepts.
pub fn offers_subprotocol(headers: &HeaderMap) -> bool {
    offered_protocols(headers).any(|p| p == SUBPROTOCOL)
}

/// Every entry of every `Sec-WebSocket-Protocol` header, trimmed.
fn offered_protocols(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// The first non-empty value of `name` in a query string, decoded as
/// `application/x-www-form-urlencoded` (what `URLSearchParams` writes).
/// `None` when absent, empty, or not UTF-8 once decoded.
fn query_parameter(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (form_decode(key)? == name).then(|| form_decode(value))?
        })
        .find(|value| !value.is_empty())
}

/// Decodes `+` as a space and `%XX` as a byte; a `%` not followed by two
/// hex digits stays as it is.
fn form_decode(text: &str) -> Option<String> {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                bytes.get(i + 1).and_then(|&b| hex(b)),
                bytes.get(i + 2).and_then(|&b| hex(b)),
            ) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use axum::http::header::AUTHORIZATION;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn token(value: &str, source: TokenSource) -> Option<Token> {
        Some(Token {
            value: value.to_owned(),
            source,
        })
    }

    #[test]
    fn a_token_is_found_in_the_authorization_header() {
        let h = headers(&[("authorization", "Bearer from.header")]);
        assert_eq!(
            token_from_upgrade(&h, None),
            token("from.header", TokenSource::Header)
        );
    }

    #[test]
    fn a_token_is_found_in_the_query_and_percent_decoded() {
        let h = HeaderMap::new();
        assert_eq!(
            token_from_upgrade(&h, Some("v=1&token=a%2Eb.c%5Fd&x")),
            token("a.b.c_d", TokenSource::Query)
        );
        assert_eq!(
            token_from_upgrade(&h, Some("token=")),
            None,
            "an empty value is no token"
        );
        assert_eq!(
            token_from_upgrade(&h, Some("token=&token=second")),
            token("second", TokenSource::Query)
        );
        assert_eq!(token_from_upgrade(&h, Some("tokens=x&atoken=y")), None);
    }

    #[test]
    fn a_token_is_found_in_the_subprotocol_header() {
        let h = headers(&[("sec-websocket-protocol", "herald.v1, bearer.aaa.bbb.ccc")]);
        assert_eq!(
            token_from_upgrade(&h, None),
            token("aaa.bbb.ccc", TokenSource::Subprotocol)
        );
        assert!(offers_subprotocol(&h));
        let split = headers(&[
            ("sec-websocket-protocol", "herald.v1"),
            ("sec-websocket-protocol", "bearer.t"),
        ]);
        assert_eq!(
            token_from_upgrade(&split, None),
            token("t", TokenSource::Subprotocol)
        );
        let empty = headers(&[("sec-websocket-protocol", "herald.v1, bearer.")]);
        assert_eq!(token_from_upgrade(&empty, None), None);
    }

    #[test]
    fn the_header_wins_over_the_query_which_wins_over_the_subprotocol() {
        let all = headers(&[
            ("authorization", "Bearer h"),
            ("sec-websocket-protocol", "herald.v1, bearer.s"),
        ]);
        assert_eq!(
            token_from_upgrade(&all, Some("token=q")),
            token("h", TokenSource::Header)
        );
        let no_header = headers(&[("sec-websocket-protocol", "herald.v1, bearer.s")]);
        assert_eq!(
            token_from_upgrade(&no_header, Some("token=q")),
            token("q", TokenSource::Query)
        );
    }

    #[test]
    fn an_unusable_authorization_header_falls_through_to_the_next_place() {
        let h = headers(&[("authorization", "Basic dXNlcjpwYXNz")]);
        assert_eq!(
            token_from_upgrade(&h, Some("token=q")),
            token("q", TokenSource::Query)
        );
    }

    #[test]
    fn no_token_anywhere_is_none() {
        let h = headers(&[("sec-websocket-protocol", "herald.v1")]);
        assert_eq!(token_from_upgrade(&h, Some("room=1")), None);
        assert_eq!(token_from_upgrade(&HeaderMap::new(), None), None);
    }

    #[test]
    fn offering_only_a_bearer_protocol_is_not_offering_herald_v1() {
        let h = headers(&[("sec-websocket-protocol", "bearer.t")]);
        assert!(!offers_subprotocol(&h));
        assert!(!offers_subprotocol(&HeaderMap::new()));
    }

    #[test]
    fn debug_output_hides_the_token() {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer s3cr3t"));
        let t = token_from_upgrade(&h, None).expect("a token");
        assert!(!format!("{t:?}").contains("s3cr3t"));
    }

    #[test]
    fn form_decoding_handles_plus_bad_escapes_and_bad_utf8() {
        assert_eq!(form_decode("a+b%20c").as_deref(), Some("a b c"));
        assert_eq!(form_decode("100%").as_deref(), Some("100%"));
        assert_eq!(form_decode("%zz%4").as_deref(), Some("%zz%4"));
        assert_eq!(form_decode("%C3%A9").as_deref(), Some("é"));
        assert_eq!(form_decode("%FF"), None);
    }
}

//! Bearer tokens for the gRPC API (`--api-tokens-file`): backends present
//! `authorization: Bearer <token>`, and the call is allowed when the token
//! is one of the file's lines. Several lines at once let a token be rotated
//! without downtime: add the new one, move the backends, remove the old one.
//!
//! File format: one token per line; surrounding whitespace is ignored, as
//! are blank lines and lines starting with `#`. A token is 1 to
//! [`MAX_API_TOKEN_BYTES`] visible ASCII characters (no spaces). It may be
//! followed, after spaces, by comma-separated topic patterns (names or
//! `prefix*`, as in a user token's claims): that token may then publish to
//! and read only those topics ([`TokenScope`]). An empty file is valid and
//! refuses every call (with a warning in the log).
//!
//! [`ApiTokens::check`] takes the same time whatever the stored tokens hold:
//! every stored token is compared over a fixed padded length, without an
//! early exit, so timing reveals neither a token's bytes nor its length.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use tokio_util::sync::CancellationToken;

use super::reload::{self, Fingerprint};
use super::{AuthError, TopicPatterns};

/// The longest API token accepted, in bytes. Every comparison costs this
/// many byte operations per stored token.
pub const MAX_API_TOKEN_BYTES: usize = 512;

/// Tokens shorter than this are accepted with a warning: they can be guessed.
const MIN_SAFE_TOKEN_BYTES: usize = 16;

/// The set of valid gRPC bearer tokens, reloaded from its file. Cloning is
/// cheap; every clone sees a reload.
#[derive(Clone)]
pub struct ApiTokens {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    tokens: ArcSwap<TokenSet>,
    loaded: Fingerprint,
}

/// One stored token, zero-padded to the fixed comparison length.
struct Padded {
    bytes: Box<[u8; MAX_API_TOKEN_BYTES]>,
    len: usize,
}

/// What a valid API token may do: every topic, or only those its line in
/// the file lists.
#[derive(Debug, Clone)]
pub struct TokenScope {
    topics: Option<Arc<TopicPatterns>>,
}

impl TokenScope {
    /// A token without topic limits.
    pub fn unlimited() -> Self {
        Self { topics: None }
    }

    /// Whether the token may publish to and read `topic`.
    pub fn allows(&self, topic: &str) -> bool {
        self.topics.as_ref().is_none_or(|t| t.allows(topic))
    }

    /// Whether the token is limited to some topics (and so may not use
    /// the operator calls).
    pub fn is_limited(&self) -> bool {
        self.topics.is_some()
    }
}

struct TokenSet(Vec<(Padded, TokenScope)>);

impl TokenSet {
    fn parse(contents: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(contents).map_err(|_| "is not UTF-8 text".to_owned())?;
        let mut tokens = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line_no = index + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (token, patterns) = match line.split_once(char::is_whitespace) {
                Some((token, rest)) => (token, Some(rest.trim())),
                None => (line, None),
            };
            let scope = match patterns {
                None => TokenScope::unlimited(),
                Some(list) => {
                    let entries: Vec<&str> = list.split(',').map(str::trim).collect();
                    let topics = TopicPatterns::parse(&entries)
                        .map_err(|e| format!("line {line_no}: topic patterns: {e}"))?;
                    TokenScope {
                        topics: Some(Arc::new(topics)),
                    }
                }
            };
            // Errors name the line, never its contents: it is a secret.
            if token.len() > MAX_API_TOKEN_BYTES {
                return Err(format!(
                    "line {line_no}: a token is at most {MAX_API_TOKEN_BYTES} bytes"
                ));
            }
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!(
                    "line {line_no}: a token is visible ASCII without spaces"
                ));
            }
            if token.len() < MIN_SAFE_TOKEN_BYTES {
                tracing::warn!(
                    line = line_no,
                    "an API token is shorter than {MIN_SAFE_TOKEN_BYTES} bytes; use a long random one"
                );
            }
            let mut bytes = Box::new([0u8; MAX_API_TOKEN_BYTES]);
            bytes[..token.len()].copy_from_slice(token.as_bytes());
            tokens.push((
                Padded {
                    bytes,
                    len: token.len(),
                },
                scope,
            ));
        }
        if tokens.is_empty() {
            tracing::warn!("the API tokens file holds no token; every gRPC call will be refused");
        }
        Ok(Self(tokens))
    }

    fn find(&self, presented: &[u8]) -> Option<TokenScope> {
        // Depends only on what the caller sent, which the caller knows.
        if presented.is_empty() || presented.len() > MAX_API_TOKEN_BYTES {
            return None;
        }
        let mut padded = [0u8; MAX_API_TOKEN_BYTES];
        padded[..presented.len()].copy_from_slice(presented);
        // Every token is compared in full; the match's index is kept with
        // arithmetic, not a branch.
        let mut found = usize::MAX;
        for (index, (token, _)) in self.0.iter().enumerate() {
            let mut diff = token.len ^ presented.len();
            for (a, b) in token.bytes.iter().zip(padded.iter()) {
                diff |= usize::from(a ^ b);
            }
            let hit = usize::from(std::hint::black_box(diff) == 0);
            found = hit * index + (1 - hit) * found;
        }
        let found = std::hint::black_box(found);
        self.0.get(found).map(|(_, scope)| scope.clone())
    }
}

impl ApiTokens {
    /// Reads the tokens file. Fails when it cannot be read or a line is not
    /// a valid token.
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let contents = std::fs::read(path).map_err(|source| AuthError::Read {
            path: path.to_owned(),
            source,
        })?;
        let tokens = TokenSet::parse(&contents).map_err(|reason| AuthError::Invalid {
            path: path.to_owned(),
            reason,
        })?;
        tracing::info!(path = %path.display(), tokens = tokens.0.len(), "gRPC API tokens loaded");
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                tokens: ArcSwap::from_pointee(tokens),
                loaded: Fingerprint::of(&contents),
            }),
        })
    }

    /// What `presented` may do if it is one of the current tokens, in time
    /// that does not depend on the stored tokens.
    pub fn check(&self, presented: &str) -> Option<TokenScope> {
        self.inner.tokens.load().find(presented.as_bytes())
    }

    /// How many tokens are currently valid.
    pub fn len(&self) -> usize {
        self.inner.tokens.load().0.len()
    }

    /// Whether no token is valid (every call is refused).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Re-reads the file whenever its contents change, until `shutdown`. A
    /// file with an invalid line is logged and ignored: the current tokens
    /// stay valid. Spawn it on the server's task tracker.
    pub fn watch(self, shutdown: CancellationToken) -> impl Future<Output = ()> + Send + 'static {
        self.watch_every(reload::POLL_INTERVAL, shutdown)
    }

    fn watch_every(
        self,
        interval: Duration,
        shutdown: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        let inner = self.inner;
        let path = inner.path.clone();
        let loaded = inner.loaded;
        reload::watch_file(
            path,
            "API tokens",
            loaded,
            interval,
            shutdown,
            move |contents| {
                let tokens = TokenSet::parse(contents)?;
                let summary = format!("{} tokens", tokens.0.len());
                inner.tokens.store(Arc::new(tokens));
                Ok(summary)
            },
        )
    }
}

impl fmt::Debug for ApiTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiTokens")
            .field("path", &self.inner.path)
            .field("tokens", &self.len())
            .finish()
    }
}

/// The token of an `Authorization` header value `Bearer <token>` (scheme
/// case-insensitive, one or more spaces). `None` for another scheme, an
/// empty token, or a token with spaces inside. Works on a tonic metadata
/// value too: `metadata.get("authorization")?.to_str().ok()`.
pub fn parse_bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim_start_matches(' ');
    (!token.is_empty() && !token.contains(|c: char| c.is_ascii_whitespace())).then_some(token)
}

/// The bearer token of a request's `Authorization` header, if it has one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    parse_bearer(headers.get(AUTHORIZATION)?.to_str().ok()?)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use axum::http::HeaderValue;

    use super::*;

    const TOKEN_A: &str = "tok_aaaaaaaaaaaaaaaaaaaaaaaa";
    const TOKEN_B: &str = "tok_bbbbbbbbbbbbbbbbbbbbbbbb";

    fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, contents).expect("write");
        path
    }

    #[test]
    fn tokens_are_read_one_per_line_skipping_blanks_and_comments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(
            dir.path(),
            "tokens",
            &format!("# rotation 2024-06\n\n  {TOKEN_A}  \r\n#{TOKEN_B}\n"),
        );
        let tokens = ApiTokens::load(&path).expect("valid file");
        assert_eq!(tokens.len(), 1);
        assert!(tokens.check(TOKEN_A).is_some());
        assert!(
            tokens.check(TOKEN_B).is_none(),
            "a commented-out token is not valid"
        );
    }

    #[test]
    fn a_token_followed_by_patterns_is_limited_to_those_topics() {
        let set = TokenSet::parse(format!("{TOKEN_A} orders:*,audit\n{TOKEN_B}\n").as_bytes())
            .expect("valid");
        let limited = set.find(TOKEN_A.as_bytes()).expect("a token");
        assert!(limited.is_limited());
        assert!(limited.allows("orders:1") && limited.allows("audit"));
        assert!(!limited.allows("room:1") && !limited.allows("auditor"));
        let unlimited = set.find(TOKEN_B.as_bytes()).expect("a token");
        assert!(!unlimited.is_limited() && unlimited.allows("room:1"));
        let bad = TokenSet::parse(format!("{TOKEN_A} room 1\n").as_bytes());
        assert!(bad.is_err_and(|e| e.contains("line 1: topic patterns")));
    }

    #[test]
    fn only_exact_tokens_pass() {
        let set = TokenSet::parse(format!("{TOKEN_A}\n{TOKEN_B}\n").as_bytes()).expect("valid");
        assert!(set.find(TOKEN_A.as_bytes()).is_some());
        assert!(set.find(TOKEN_B.as_bytes()).is_some());
        for wrong in [
            "",
            "tok_",
            &TOKEN_A[..TOKEN_A.len() - 1],
            &format!("{TOKEN_A}a"),
            &format!("{TOKEN_A}\0"),
            &"a".repeat(MAX_API_TOKEN_BYTES + 1),
        ] {
            assert!(set.find(wrong.as_bytes()).is_none(), "{wrong:?}");
        }
    }

    #[test]
    fn a_token_of_the_maximum_length_works() {
        let longest = "x".repeat(MAX_API_TOKEN_BYTES);
        let set = TokenSet::parse(longest.as_bytes()).expect("valid");
        assert!(set.find(longest.as_bytes()).is_some());
    }

    #[test]
    fn an_empty_file_is_valid_and_refuses_everything() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(dir.path(), "tokens", "# nothing yet\n\n");
        let tokens = ApiTokens::load(&path).expect("valid file");
        assert!(tokens.is_empty());
        assert!(tokens.check(TOKEN_A).is_none());
        assert!(tokens.check("").is_none());
    }

    #[test]
    fn a_bad_line_is_refused_by_number_without_quoting_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(
            dir.path(),
            "tokens",
            &format!("{TOKEN_A}\nsecret with space\n"),
        );
        let err = ApiTokens::load(&path)
            .expect_err("invalid file")
            .to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(!err.contains("secret"), "{err}");
        let too_long = "y".repeat(MAX_API_TOKEN_BYTES + 1);
        assert!(TokenSet::parse(too_long.as_bytes()).is_err());
        assert!(TokenSet::parse(b"\xff\xfe").is_err());
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let err = ApiTokens::load(Path::new("/nonexistent/herald-tokens"))
            .expect_err("missing")
            .to_string();
        assert!(err.contains("/nonexistent/herald-tokens"), "{err}");
    }

    #[test]
    fn checking_takes_about_as_long_for_a_near_miss_as_for_a_far_miss() {
        // A coarse guard against an early exit creeping back in: compare
        // many times a token that differs in its first byte with one that
        // differs in its last. Generous bound; this is not a timing proof.
        let token = "z".repeat(MAX_API_TOKEN_BYTES);
        let set = TokenSet::parse(token.as_bytes()).expect("valid");
        let mut near = token.clone().into_bytes();
        near[MAX_API_TOKEN_BYTES - 1] = b'y';
        let mut far = token.into_bytes();
        far[0] = b'y';
        let time = |probe: &[u8]| {
            let start = Instant::now();
            for _ in 0..20_000 {
                assert!(set.find(std::hint::black_box(probe)).is_none());
            }
            start.elapsed()
        };
        let (near, far) = (time(&near), time(&far));
        let ratio = near.as_secs_f64() / far.as_secs_f64();
        assert!((0.1..10.0).contains(&ratio), "near {near:?} vs far {far:?}");
    }

    #[tokio::test]
    async fn a_rotated_file_is_picked_up_and_a_broken_one_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(dir.path(), "tokens", &format!("{TOKEN_A}\n"));
        let tokens = ApiTokens::load(&path).expect("valid file");
        let shutdown = CancellationToken::new();
        let watcher = tokio::spawn(
            tokens
                .clone()
                .watch_every(Duration::from_millis(10), shutdown.clone()),
        );

        write(dir.path(), "tokens", &format!("{TOKEN_A}\n{TOKEN_B}\n"));
        reload::wait_until(|| tokens.check(TOKEN_B).is_some()).await;
        write(dir.path(), "tokens", &format!("{TOKEN_B}\n"));
        reload::wait_until(|| tokens.check(TOKEN_A).is_none()).await;

        write(dir.path(), "tokens", "not a token\n");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            tokens.check(TOKEN_B).is_some(),
            "an invalid file keeps the current tokens"
        );

        shutdown.cancel();
        watcher.await.expect("the watcher stops on shutdown");
    }

    #[test]
    fn bearer_accepts_any_case_of_the_scheme_and_extra_spaces() {
        assert_eq!(parse_bearer("Bearer abc.def"), Some("abc.def"));
        assert_eq!(parse_bearer("bearer abc"), Some("abc"));
        assert_eq!(parse_bearer("BEARER   abc  "), Some("abc"));
    }

    #[test]
    fn bearer_refuses_other_schemes_and_empty_or_spaced_tokens() {
        for value in [
            "",
            "Bearer",
            "Bearer ",
            "Bearer    ",
            "Basic dXNlcjpwYXNz",
            "Bearerabc",
            "Bearer a b",
            "Bearer a\tb",
            "Token abc",
        ] {
            assert_eq!(parse_bearer(value), None, "{value:?}");
        }
    }

    #[test]
    fn bearer_reads_the_authorization_header() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer t0k"));
        assert_eq!(bearer(&headers), Some("t0k"));
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_bytes(b"Bearer \xff").expect("opaque value"),
        );
        assert_eq!(bearer(&headers), None, "a non-ASCII value is no token");
    }
}

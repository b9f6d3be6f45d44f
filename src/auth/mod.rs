//! Who may connect, and what they may do once connected. Pure checks and the
//! file watchers that keep their keys current; no transport. The WebSocket
//! gateway and the gRPC server call in here at their edges and turn the
//! answers into their own replies.
//!
//! ```text
//!  WebSocket upgrade ── token_from_upgrade ──▶ Verifier::verify ──▶ Identity
//!     (header, ?token=, subprotocol)             │ refused: HTTP 401 + TokenError, no socket
//!                                                ▼
//!  subscribe / publish ───────────────▶ Identity::may_subscribe / may_publish
//!                                                │ refused: error reply `forbidden`, socket stays
//!  gRPC call ── bearer / parse_bearer ──▶ ApiTokens::check
//!                                                │ refused: UNAUTHENTICATED
//! ```
//!
//! - **WebSocket users** present a JWT at the upgrade ([`extract`]). The
//!   [`Verifier`] checks it against one key source, a shared HS256 secret, a
//!   PEM public key (RS256 or ES256), a JWKS file, or an identity provider's
//!   JWKS over HTTPS ([`provider`]), each key pinned to one algorithm, plus
//!   `exp`, `nbf`, and `iss`/`aud` when configured ([`jwt`]).
//!   A refused token never opens a socket: the gateway answers 401 with the
//!   [`TokenError`] text, which never quotes the token.
//! - **Topic permissions** come from the token: `topics` lists the names and
//!   `prefix*` patterns the user may subscribe to, `publish` those they may
//!   publish to ([`patterns`]). Every user may also subscribe to
//!   `user:<sub>`; that is how a backend reaches one user on whichever pods
//!   hold their connections: publish to `user:42` and every device of user
//!   42 gets it. A refused subscribe or publish gets the error reply
//!   `forbidden` and the connection stays open.
//! - **Backends** calling the gRPC API present a bearer token from the
//!   tokens file ([`api_tokens`]); a missing or unknown token is
//!   `UNAUTHENTICATED`.
//!
//! Key and token files come from Kubernetes Secrets. [`Verifier::watch`] and
//! [`ApiTokens::watch`] poll their file's contents and swap in a changed
//! file atomically (or, for a provider, fetch its set as it asks); a broken
//! file or set is logged and the previous keys stay.

pub mod api_tokens;
mod error;
pub mod extract;
pub mod jwt;
pub mod patterns;
pub mod provider;
pub(crate) mod reload;

pub use api_tokens::{ApiTokens, MAX_API_TOKEN_BYTES, TokenScope, bearer, parse_bearer};
pub use error::AuthError;
pub use extract::{
    BEARER_PROTOCOL_PREFIX, SUBPROTOCOL, Token, TokenSource, offers_subprotocol, token_from_upgrade,
};
pub use jwt::{
    DEFAULT_LEEWAY, Identity, JwtSettings, MAX_TOKEN_BYTES, TokenError, USER_TOPIC_PREFIX, Verifier,
};
pub use patterns::{PatternError, TopicPatterns};

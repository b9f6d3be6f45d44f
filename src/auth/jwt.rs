//! JWT verification for WebSocket users: the key source (`--jwt-secret-file`,
//! `--jwt-public-key-file`, `--jwks-file`, or an identity provider's
//! `--jwks-url` / `--oidc-issuer`, see [`provider`](super::provider)), the
//! checks a token must pass, and the [`Identity`] a valid token yields.
//!
//! Each key is pinned to exactly one algorithm when it is loaded: a secret
//! (or a JWKS `oct` key) to HS256, an RSA key to RS256, a P-256 key to
//! ES256. A token whose header
//! names any other algorithm is refused before any signature is checked, so
//! `alg: none` and the HS256-signed-with-the-public-key confusion cannot
//! work. Then, in this order: signature, `exp` (required), `nbf` (when
//! present), `iss` and `aud` (each required and checked only when
//! configured), and finally herald's own claims `sub`, `topics`, `publish`.
//!
//! The keys sit behind an [`ArcSwap`], so [`Verifier::verify`] never waits
//! and [`Verifier::watch`] can swap in a rotated key file (or a provider's
//! new key set) while connections are being verified; a bad new file leaves
//! the old keys in force.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind, Validation};
use serde::Deserialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::AuthError;
use super::patterns::TopicPatterns;
use super::provider::Provider;
use super::reload::{self, Fingerprint};
use crate::topic::Topic;

/// The longest token accepted, in bytes. Most tokens are under 4 KiB, but
/// an identity provider that puts group lists in the claims can reach 10–20
/// KiB; the cap leaves room for those and still bounds the work an
/// anonymous client can ask for. A longer token is `TooLong`, not
/// malformed.
pub const MAX_TOKEN_BYTES: usize = 32 * 1024;

/// The clock skew tolerated on `exp` and `nbf` unless configured otherwise.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

/// Where the verification keys come from and what tokens must claim; the
/// JWT half of the command line. Exactly one of the three files, the JWKS
/// URL and the OIDC issuer must be set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSettings {
    /// `--jwt-secret-file`: an HS256 shared secret; one trailing newline
    /// (`\n` or `\r\n`) is ignored.
    pub secret_file: Option<PathBuf>,
    /// `--jwt-public-key-file`: a PEM public key, RSA (RS256) or P-256
    /// (ES256), told apart by its contents.
    pub public_key_file: Option<PathBuf>,
    /// `--jwks-file`: a JWKS document; tokens pick a key by `kid`.
    pub jwks_file: Option<PathBuf>,
    /// `--jwks-url`: a JWKS document fetched over HTTPS and kept current.
    pub jwks_url: Option<String>,
    /// `--oidc-issuer`: an OpenID Connect issuer; its discovery document
    /// names the JWKS URL, and tokens must carry it as `iss`.
    pub oidc_issuer: Option<String>,
    /// `--jwks-ca-file`: the CA bundle the provider's certificate must
    /// chain to, instead of the system's.
    pub jwks_ca_file: Option<PathBuf>,
    /// `--jwt-issuer`: when set, `iss` must be present and equal.
    pub issuer: Option<String>,
    /// `--jwt-audience`: when set, `aud` must be present and contain it.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf` (whole seconds count).
    pub leeway: Duration,
    /// `--presence-info-claim`: the claim whose JSON value becomes the
    /// user's presence `info` (at most [`MAX_INFO_BYTES`] compact).
    pub info_claim: Option<String>,
}

/// Largest presence `info` a token may carry, in bytes of compact JSON.
pub const MAX_INFO_BYTES: usize = crate::presence::MAX_INFO_BYTES;

impl Default for JwtSettings {
    fn default() -> Self {
        Self {
            secret_file: None,
            public_key_file: None,
            jwks_file: None,
            jwks_url: None,
            oidc_issuer: None,
            jwks_ca_file: None,
            issuer: None,
            audience: None,
            leeway: DEFAULT_LEEWAY,
            info_claim: None,
        }
    }
}

/// Why a token was refused. The messages are short, fixed and safe for an
/// HTTP 401 body: none of them quotes the token or its claims.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a JWT: wrong shape, bad base64 or JSON.
    #[error("token is malformed")]
    Malformed,
    /// Longer than [`MAX_TOKEN_BYTES`].
    #[error("token is longer than {MAX_TOKEN_BYTES} bytes, the most accepted")]
    TooLong,
    /// The signature does not match the key.
    #[error("token signature is invalid")]
    BadSignature,
    /// The header names an algorithm the key is not pinned to (including
    /// `none`, and HS256 when the key is public).
    #[error("token algorithm is not accepted")]
    WrongAlgorithm,
    /// `exp` is in the past.
    #[error("token has expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token is not valid yet")]
    NotYetValid,
    /// `iss` is missing or not the configured issuer.
    #[error("token issuer is not accepted")]
    WrongIssuer,
    /// `aud` is missing or does not contain the configured audience.
    #[error("token audience is not accepted")]
    WrongAudience,
    /// The `kid` names no key of the JWKS (or the token has no `kid` and the
    /// set holds several keys).
    #[error("token key id is unknown")]
    UnknownKey,
    /// `sub` is missing, null or empty.
    #[error("token has no subject")]
    MissingSubject,
    /// A claim has the wrong form; the reason names the claim, not its value.
    #[error("token claims are invalid: {0}")]
    BadClaims(String),
}

impl TokenError {
    /// A fixed snake_case label, for logs and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::TooLong => "too_long",
            Self::BadSignature => "bad_signature",
            Self::WrongAlgorithm => "wrong_algorithm",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::UnknownKey => "unknown_key",
            Self::MissingSubject => "missing_subject",
            Self::BadClaims(_) => "bad_claims",
        }
    }
}

/// Who a verified token belongs to and which topics they may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user id (`sub`). May hold any characters the issuer put there;
    /// log it with `?` formatting.
    pub sub: String,
    /// Topics the user may subscribe to (`topics`), besides `user:<sub>`.
    pub subscribe: TopicPatterns,
    /// Topics the user may publish to from the WebSocket (`publish`).
    pub publish: TopicPatterns,
    /// When the token expires (`exp`); a gateway may close the connection
    /// then.
    pub expires_at: SystemTime,
    /// The user's presence `info`: the configured claim's value as compact
    /// JSON, when the token has it.
    pub info: Option<Arc<str>>,
}

/// The topic prefix every user may always subscribe under, with their `sub`.
pub const USER_TOPIC_PREFIX: &str = "user:";

impl Identity {
    /// Whether the user may subscribe to `topic`: a `topics` entry allows it,
    /// or it is exactly `user:<sub>`.
    pub fn may_subscribe(&self, topic: &str) -> bool {
        topic.strip_prefix(USER_TOPIC_PREFIX) == Some(self.sub.as_str())
            || self.subscribe.allows(topic)
    }

    /// Whether the user may publish to `topic`: only a `publish` entry allows
    /// it (not even `user:<sub>` is implied).
    pub fn may_publish(&self, topic: &str) -> bool {
        self.publish.allows(topic)
    }

    /// The user's own topic, `user:<sub>`, when that is a valid topic name
    /// (it is not when `sub` holds characters topics may not).
    pub fn user_topic(&self) -> Option<Topic> {
        Topic::new(&format!("{USER_TOPIC_PREFIX}{}", self.sub)).ok()
    }
}

/// Checks tokens against the configured keys. Cloning is cheap; every clone
/// sees a reload.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    source: KeySource,
    rules: Rules,
    keys: ArcSwap<KeyRing>,
    loaded: Fingerprint,
}

#[derive(Debug)]
enum KeySource {
    Secret(PathBuf),
    PublicKey(PathBuf),
    Jwks(PathBuf),
    Provider(Box<Provider>),
}

impl KeySource {
    /// The key file, for the sources that are one.
    fn path(&self) -> Option<&Path> {
        match self {
            Self::Secret(p) | Self::PublicKey(p) | Self::Jwks(p) => Some(p),
            Self::Provider(_) => None,
        }
    }
}

/// The claim checks shared by every key.
#[derive(Debug, Clone)]
struct Rules {
    issuer: Option<String>,
    audience: Option<String>,
    leeway_secs: u64,
    info_claim: Option<String>,
}

impl Rules {
    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.leeway_secs;
        v.validate_exp = true;
        v.validate_nbf = true;
        let mut required = vec!["exp"];
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
            required.push("iss");
        }
        // NB: without a configured audience, `aud` is ignored rather than
        // refused (jsonwebtoken refuses any `aud` it was not told about).
        v.validate_aud = self.audience.is_some();
        if let Some(aud) = &self.audience {
            v.set_audience(&[aud]);
            required.push("aud");
        }
        v.set_required_spec_claims(&required);
        v
    }
}

/// One key and the one algorithm it verifies.
struct PinnedKey {
    alg: Algorithm,
    key: DecodingKey,
    validation: Validation,
}

/// The current keys.
enum KeyRing {
    Single(Box<PinnedKey>),
    Set(Vec<(Option<String>, PinnedKey)>),
}

impl KeyRing {
    fn parse(source: &KeySource, contents: &[u8], rules: &Rules) -> Result<Self, String> {
        match source {
            KeySource::Secret(_) => {
                parse_secret(contents, rules).map(|k| Self::Single(Box::new(k)))
            }
            KeySource::PublicKey(_) => {
                parse_public_key(contents, rules).map(|k| Self::Single(Box::new(k)))
            }
            KeySource::Jwks(_) => parse_jwks(contents, rules, Secrets::Allowed).map(Self::Set),
            KeySource::Provider(_) => parse_jwks(contents, rules, Secrets::Refused).map(Self::Set),
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, Self::Set(keys) if keys.is_empty())
    }

    fn describe(&self) -> String {
        match self {
            Self::Single(k) => format!("one {:?} key", k.alg),
            Self::Set(keys) => {
                let kids: Vec<&str> = keys
                    .iter()
                    .map(|(kid, _)| kid.as_deref().unwrap_or("(no kid)"))
                    .collect();
                format!("{} JWKS keys: {}", keys.len(), kids.join(", "))
            }
        }
    }

    fn find(&self, kid: Option<&str>) -> Option<&PinnedKey> {
        match self {
            Self::Single(key) => Some(key),
            Self::Set(keys) => match kid {
                Some(kid) => keys
                    .iter()
                    .find(|(k, _)| k.as_deref() == Some(kid))
                    .map(|(_, key)| key),
                // Without a `kid`, only a set of one key is unambiguous.
                None => match keys.as_slice() {
                    [(_, key)] => Some(key),
                    _ => None,
                },
            },
        }
    }
}

fn pin(alg: Algorithm, key: DecodingKey, rules: &Rules) -> PinnedKey {
    PinnedKey {
        alg,
        validation: rules.validation(alg),
        key,
    }
}

/// The shortest HS256 secret RFC 7518 §3.2 allows: as long as the hash.
const MIN_SECRET_BYTES: usize = 32;

fn parse_secret(contents: &[u8], rules: &Rules) -> Result<PinnedKey, String> {
    let secret = contents
        .strip_suffix(b"\n")
        .map(|s| s.strip_suffix(b"\r").unwrap_or(s))
        .unwrap_or(contents);
    if secret.is_empty() {
        return Err("the HS256 secret is empty".into());
    }
    if secret.len() < MIN_SECRET_BYTES {
        tracing::warn!(
            bytes = secret.len(),
            "the HS256 secret is shorter than {MIN_SECRET_BYTES} bytes; use a longer random secret"
        );
    }
    Ok(pin(
        Algorithm::HS256,
        DecodingKey::from_secret(secret),
        rules,
    ))
}

fn parse_public_key(contents: &[u8], rules: &Rules) -> Result<PinnedKey, String> {
    let text = std::str::from_utf8(contents).map_err(|_| "is not a PEM file (not text)")?;
    let label = text
        .split_once("-----BEGIN ")
        .and_then(|(_, rest)| rest.split_once("-----"))
        .map(|(label, _)| label)
        .ok_or("is not a PEM file (no -----BEGIN line)")?;
    if label.contains("PRIVATE") {
        return Err(
            "holds a private key; give the public key (`openssl pkey -in key.pem -pubout`)".into(),
        );
    }
    if label.contains("CERTIFICATE") {
        return Err(
            "holds a certificate; give its public key (`openssl x509 -in cert.pem -pubkey -noout`)"
                .into(),
        );
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(contents) {
        check_rsa_key(&key)?;
        return Ok(pin(Algorithm::RS256, key, rules));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(contents) {
        check_p256_key(&key)?;
        return Ok(pin(Algorithm::ES256, key, rules));
    }
    Err("is not an RSA or P-256 EC public key (RS256 and ES256 are supported)".into())
}

/// The smallest RSA modulus accepted, in bytes (2048 bits).
const MIN_RSA_MODULUS_BYTES: usize = 256;

/// Parses the key now, so a bad file fails at load and not on first use.
fn check_rsa_key(key: &DecodingKey) -> Result<(), String> {
    let n_len = match key.kind() {
        DecodingKeyKind::SecretOrDer(der) => {
            let (n, _) = (DEFAULT_PROVIDER
                .key_utils
                .rsa_pub_components_from_public_key)(der)
            .map_err(|e| format!("is not a valid RSA public key: {e}"))?;
            n.len()
        }
        DecodingKeyKind::RsaModulusExponent { n, e } => {
            if e.is_empty() {
                return Err("RSA key has an empty exponent".into());
            }
            n.iter().skip_while(|b| **b == 0).count()
        }
    };
    if n_len < MIN_RSA_MODULUS_BYTES {
        return Err(format!(
            "RSA key is {} bits; at least 2048 are required",
            n_len * 8
        ));
    }
    Ok(())
}

/// A JWKS `oct` key must be as long as RFC 7518 §3.2 asks: unlike the
/// `--jwt-secret-file`, which only warns, there is no old setup to keep
/// working.
fn check_secret_length(key: &DecodingKey) -> Result<(), String> {
    match key.kind() {
        DecodingKeyKind::SecretOrDer(secret) if secret.len() >= MIN_SECRET_BYTES => Ok(()),
        DecodingKeyKind::SecretOrDer(secret) => Err(format!(
            "oct key is {} bytes; HS256 needs at least {MIN_SECRET_BYTES}",
            secret.len()
        )),
        DecodingKeyKind::RsaModulusExponent { .. } => Err("oct key is not a secret".into()),
    }
}

fn check_p256_key(key: &DecodingKey) -> Result<(), String> {
    (DEFAULT_PROVIDER.verifier_factory)(&Algorithm::ES256, key)
        .map(drop)
        .map_err(|_| "is not a valid P-256 public key (ES256 needs the P-256 curve)".into())
}

#[derive(Deserialize)]
struct JwksDocument {
    keys: Vec<Value>,
}

/// Whether a JWKS may hold symmetric (`oct`) keys: from a file, yes; from
/// a URL, never, since a secret published at a URL lets anyone sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Secrets {
    Allowed,
    Refused,
}

fn parse_jwks(
    contents: &[u8],
    rules: &Rules,
    secrets: Secrets,
) -> Result<Vec<(Option<String>, PinnedKey)>, String> {
    let doc: JwksDocument = serde_json::from_slice(contents)
        .map_err(|e| format!("is not a JWKS document (a JSON object with `keys`): {e}"))?;
    let mut keys: Vec<(Option<String>, PinnedKey)> = Vec::new();
    for (index, value) in doc.keys.into_iter().enumerate() {
        // One unusable key (another algorithm, an encryption key) must not
        // take the others down with it: skip it with a warning.
        let jwk: Jwk = match serde_json::from_value(value) {
            Ok(jwk) => jwk,
            Err(e) => {
                tracing::warn!(index, error = %e, "skipping a JWKS key that cannot be parsed");
                continue;
            }
        };
        let kid = jwk.common.key_id.clone();
        match pin_jwk(&jwk, rules, secrets) {
            Ok(key) => {
                if let Some(kid) = &kid
                    && keys.iter().any(|(k, _)| k.as_ref() == Some(kid))
                {
                    return Err(format!("kid {kid:?} appears more than once"));
                }
                keys.push((kid, key));
            }
            Err(reason) => tracing::warn!(index, ?kid, %reason, "skipping a JWKS key"),
        }
    }
    if keys.is_empty() {
        let usable = match secrets {
            Secrets::Allowed => "RSA for RS256, EC P-256 for ES256, or oct for HS256",
            Secrets::Refused => "RSA for RS256, or EC P-256 for ES256",
        };
        return Err(format!("holds no usable key ({usable})"));
    }
    if keys.len() > 1 && keys.iter().any(|(kid, _)| kid.is_none()) {
        tracing::warn!("a JWKS with several keys has keys without `kid`; no token can select them");
    }
    Ok(keys)
}

fn pin_jwk(jwk: &Jwk, rules: &Rules, secrets: Secrets) -> Result<PinnedKey, String> {
    if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
        return Err("`use` is not `sig`".into());
    }
    let (alg, key) = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => {
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("bad RSA key: {e}"))?;
            check_rsa_key(&key)?;
            (Algorithm::RS256, key)
        }
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("bad EC key: {e}"))?;
            check_p256_key(&key)?;
            (Algorithm::ES256, key)
        }
        AlgorithmParameters::OctetKey(_) if secrets == Secrets::Refused => {
            return Err(
                "a symmetric (`oct`) key from a URL is never used: anyone who can \
                        read it could sign tokens; put HS256 keys in a --jwks-file"
                    .into(),
            );
        }
        AlgorithmParameters::OctetKey(_) => {
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("bad oct key: {e}"))?;
            check_secret_length(&key)?;
            (Algorithm::HS256, key)
        }
        _ => return Err("only RSA, EC P-256 and oct keys are supported".into()),
    };
    let named = match jwk.common.key_algorithm {
        None => true,
        Some(KeyAlgorithm::RS256) => alg == Algorithm::RS256,
        Some(KeyAlgorithm::ES256) => alg == Algorithm::ES256,
        Some(KeyAlgorithm::HS256) => alg == Algorithm::HS256,
        Some(_) => false,
    };
    if !named {
        return Err("`alg` is not RS256, ES256 or HS256 (or does not fit the key type)".into());
    }
    Ok(pin(alg, key, rules))
}

impl Verifier {
    /// Reads the one configured key source. Fails when none or several are
    /// set, or when the file cannot be read or holds no usable key. An
    /// identity provider is not asked yet: until [`Verifier::watch`] has
    /// fetched its first set, no token verifies and
    /// [`Verifier::has_keys`] is false.
    pub fn load(settings: &JwtSettings) -> Result<Self, AuthError> {
        let JwtSettings {
            secret_file,
            public_key_file,
            jwks_file,
            jwks_url,
            oidc_issuer,
            jwks_ca_file,
            issuer,
            audience,
            leeway,
            info_claim,
        } = settings;
        let mut sources = Vec::new();
        if let Some(p) = secret_file {
            sources.push((KeySource::Secret(p.clone()), "--jwt-secret-file"));
        }
        if let Some(p) = public_key_file {
            sources.push((KeySource::PublicKey(p.clone()), "--jwt-public-key-file"));
        }
        if let Some(p) = jwks_file {
            sources.push((KeySource::Jwks(p.clone()), "--jwks-file"));
        }
        if jwks_url.is_some() || oidc_issuer.is_some() {
            if let (Some(_), Some(_)) = (jwks_url, oidc_issuer) {
                return Err(AuthError::SeveralKeySources(
                    "--jwks-url and --oidc-issuer".into(),
                ));
            }
            let provider = Provider::new(
                jwks_url.as_deref(),
                oidc_issuer.as_deref(),
                jwks_ca_file.as_deref(),
            )?;
            let flag = if jwks_url.is_some() {
                "--jwks-url"
            } else {
                "--oidc-issuer"
            };
            sources.push((KeySource::Provider(Box::new(provider)), flag));
        }
        let source = match sources.len() {
            0 => return Err(AuthError::NoKeySource),
            1 => sources.remove(0).0,
            _ => {
                let flags: Vec<&str> = sources.iter().map(|(_, flag)| *flag).collect();
                return Err(AuthError::SeveralKeySources(flags.join(" and ")));
            }
        };
        let rules = Rules {
            // Tokens of an OIDC provider name it as `iss`.
            issuer: issuer.clone().or_else(|| oidc_issuer.clone()),
            audience: audience.clone(),
            leeway_secs: leeway.as_secs(),
            info_claim: info_claim.clone(),
        };
        let (keys, loaded) = match source.path() {
            Some(path) => {
                let contents = std::fs::read(path).map_err(|source| AuthError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                let keys = KeyRing::parse(&source, &contents, &rules).map_err(|reason| {
                    AuthError::Invalid {
                        path: path.to_owned(),
                        reason,
                    }
                })?;
                tracing::info!(path = %path.display(), "JWT verification with {}", keys.describe());
                (keys, Fingerprint::of(&contents))
            }
            None => (KeyRing::Set(Vec::new()), Fingerprint::of(&[])),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                loaded,
                keys: ArcSwap::from_pointee(keys),
                source,
                rules,
            }),
        })
    }

    /// How long past `exp` a token is still accepted (for clocks that
    /// differ between the issuer and the pod).
    pub fn leeway(&self) -> Duration {
        Duration::from_secs(self.inner.rules.leeway_secs)
    }

    /// Whether any key is loaded: false only while an identity provider's
    /// first key set has not arrived.
    pub fn has_keys(&self) -> bool {
        !self.inner.keys.load().is_empty()
    }

    /// [`Verifier::verify`], and for a token whose `kid` the keys lack, when
    /// they come from an identity provider: one fetch of the provider's
    /// current set (shared with other such tokens, at most one per
    /// [`UNKNOWN_KEY_COOLDOWN`](super::provider::UNKNOWN_KEY_COOLDOWN)),
    /// then a second try. Waits at most for that fetch.
    pub async fn authenticate(&self, token: &str) -> Result<Identity, TokenError> {
        match self.verify(token) {
            Err(TokenError::UnknownKey) => match &self.inner.source {
                KeySource::Provider(provider) if provider.refresh_for_unknown_key().await => {
                    self.verify(token)
                }
                _ => Err(TokenError::UnknownKey),
            },
            verified => verified,
        }
    }

    /// Checks `token` against the keys held now and returns who it belongs
    /// to. Never panics and never blocks; safe to call with anything a
    /// client sends.
    pub fn verify(&self, token: &str) -> Result<Identity, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLong);
        }
        if token.is_empty() {
            return Err(TokenError::Malformed);
        }
        let header = read_header(token)?;
        let keys = self.inner.keys.load();
        let key = keys
            .find(header.kid.as_deref())
            .ok_or(TokenError::UnknownKey)?;
        if header.alg != key.alg.as_name() {
            return Err(TokenError::WrongAlgorithm);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &key.validation)
            .map_err(|e| token_error(e.into_kind()))?;
        let mut identity = identity(data.claims)?;
        if let Some(claim) = &self.inner.rules.info_claim {
            identity.info = info(token, claim)?;
        }
        Ok(identity)
    }

    /// Reloads the key file whenever its contents change, or fetches the
    /// identity provider's key set as its cache time and unknown `kid`s ask,
    /// until `shutdown`. A file or set that no longer parses is logged and
    /// ignored: the current keys stay in force. Spawn it on the server's
    /// task tracker.
    pub fn watch(self, shutdown: CancellationToken) -> impl Future<Output = ()> + Send + 'static {
        self.watch_every(reload::POLL_INTERVAL, shutdown)
    }

    fn watch_every(
        self,
        interval: Duration,
        shutdown: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        let inner = self.inner;
        async move {
            let apply = |contents: &[u8]| {
                let keys = KeyRing::parse(&inner.source, contents, &inner.rules)?;
                let summary = keys.describe();
                inner.keys.store(Arc::new(keys));
                Ok(summary)
            };
            let (path, what) = match &inner.source {
                KeySource::Secret(path) => (path.clone(), "JWT secret"),
                KeySource::PublicKey(path) => (path.clone(), "JWT public key"),
                KeySource::Jwks(path) => (path.clone(), "JWKS"),
                KeySource::Provider(provider) => return provider.run(shutdown, apply).await,
            };
            reload::watch_file(path, what, inner.loaded, interval, shutdown, apply).await;
        }
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("source", &self.inner.source)
            .field("rules", &self.inner.rules)
            .finish_non_exhaustive()
    }
}

trait AlgName {
    fn as_name(&self) -> &'static str;
}

impl AlgName for Algorithm {
    fn as_name(&self) -> &'static str {
        match self {
            Algorithm::HS256 => "HS256",
            Algorithm::RS256 => "RS256",
            Algorithm::ES256 => "ES256",
            // Keys are only ever pinned to the three above.
            _ => "",
        }
    }
}

/// The two header fields looked at before choosing a key.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

/// Reads the header without trusting it, so that an algorithm the key is
/// not pinned to (even one jsonwebtoken has no name for, like `none`) is
/// refused as such.
fn read_header(token: &str) -> Result<RawHeader, TokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let json = base64url_decode(header).ok_or(TokenError::Malformed)?;
    serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)
}

/// Decodes unpadded base64url (RFC 4648 §5), as JWT segments are written.
fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        } as u32)
    }
    if text.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for chunk in text.as_bytes().chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= value(c)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

/// herald's claims, kept loose so that each wrong shape gets its own error
/// after jsonwebtoken has checked the signature and the times.
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<Value>,
    #[serde(default)]
    topics: Option<Value>,
    #[serde(default)]
    publish: Option<Value>,
    #[serde(default)]
    exp: Option<Value>,
}

/// 9999-12-31T23:59:59Z: later `exp` values are treated as this.
const MAX_EXP_SECS: f64 = 253_402_300_799.0;

fn identity(claims: Claims) -> Result<Identity, TokenError> {
    let sub = match claims.sub {
        None | Some(Value::Null) => return Err(TokenError::MissingSubject),
        Some(Value::String(s)) if s.is_empty() => return Err(TokenError::MissingSubject),
        Some(Value::String(s)) => s,
        Some(_) => return Err(TokenError::BadClaims("`sub` must be a string".into())),
    };
    let exp = claims
        .exp
        .as_ref()
        .and_then(Value::as_f64)
        .filter(|e| e.is_finite() && *e >= 0.0)
        .ok_or_else(|| TokenError::BadClaims("`exp` must be a number".into()))?;
    Ok(Identity {
        sub,
        subscribe: patterns("topics", claims.topics)?,
        publish: patterns("publish", claims.publish)?,
        // `as` saturates; the cap keeps the addition in range on every
        // platform.
        expires_at: UNIX_EPOCH + Duration::from_secs(exp.min(MAX_EXP_SECS) as u64),
        info: None,
    })
}

/// The compact JSON of claim `claim` of a token whose signature was
/// checked, read again from its payload (only when presence `info` is
/// configured, so other tokens pay nothing for it).
fn info(token: &str, claim: &str) -> Result<Option<Arc<str>>, TokenError> {
    let payload = token
        .split('.')
        .nth(1)
        .and_then(base64url_decode)
        .ok_or(TokenError::Malformed)?;
    let mut claims: serde_json::Map<String, Value> =
        serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
    let Some(value) = claims.remove(claim).filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let compact = value.to_string();
    if compact.len() > MAX_INFO_BYTES {
        return Err(TokenError::BadClaims(format!(
            "`{claim}` is {} bytes of JSON; presence info may be at most {MAX_INFO_BYTES}",
            compact.len()
        )));
    }
    Ok(Some(compact.into()))
}

fn patterns(claim: &str, value: Option<Value>) -> Result<TopicPatterns, TokenError> {
    let shape = || TokenError::BadClaims(format!("`{claim}` must be an array of strings"));
    let entries = match value {
        None | Some(Value::Null) => return Ok(TopicPatterns::none()),
        Some(Value::Array(entries)) => entries,
        Some(_) => return Err(shape()),
    };
    let names: Vec<&str> = entries
        .iter()
        .map(Value::as_str)
        .collect::<Option<_>>()
        .ok_or_else(shape)?;
    TopicPatterns::parse(&names).map_err(|e| TokenError::BadClaims(format!("`{claim}` {e}")))
}

fn token_error(kind: ErrorKind) -> TokenError {
    match kind {
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => TokenError::WrongAlgorithm,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "iss" => TokenError::WrongIssuer,
            "aud" => TokenError::WrongAudience,
            "sub" => TokenError::MissingSubject,
            // Only claims from our fixed list are ever required.
            _ => TokenError::BadClaims("`exp` is required and must be a number".into()),
        },
        ErrorKind::InvalidClaimFormat(claim) => match claim.as_str() {
            "nbf" => TokenError::BadClaims("`nbf` must be a number".into()),
            _ => TokenError::BadClaims("`exp` is required and must be a number".into()),
        },
        // A key that fails at verify time was checked at load; if one still
        // does, the token cannot be shown to be signed by it.
        ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidRsaKey(_) | ErrorKind::InvalidKeyFormat => {
            TokenError::BadSignature
        }
        _ => TokenError::Malformed,
    }
}

#[cfg(test)]
mod tests {

    use jsonwebtoken::jwk::JwkSet;
    use jsonwebtoken::{EncodingKey, Header, encode, get_current_timestamp};
    use serde_json::json;

    use super::*;

    // Test-only keys; see testdata/README.md.
    const RSA_A_KEY: &str = include_str!("testdata/rsa_a.key.pem");
    const RSA_A_PUB: &str = include_str!("testdata/rsa_a.pub.pem");
    const RSA_B_KEY: &str = include_str!("testdata/rsa_b.key.pem");
    const EC_A_KEY: &str = include_str!("testdata/ec_a.key.pem");
    const EC_A_PUB: &str = include_str!("testdata/ec_a.pub.pem");
    const EC_B_KEY: &str = include_str!("testdata/ec_b.key.pem");
    const SECRET: &str = "test-only-secret-0123456789abcdef0123456789";

    fn now() -> u64 {
        get_current_timestamp()
    }

    fn claims() -> Value {
        json!({ "sub": "42", "exp": now() + 3600, "topics": ["room:*", "news"], "publish": ["chat:*"] })
    }

    fn hs256(claims: &Value) -> String {
        hs256_with(SECRET, claims)
    }

    fn hs256_with(secret: &str, claims: &Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("encode")
    }

    fn rs256(pem: &str, kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = kid.map(str::to_owned);
        encode(
            &header,
            claims,
            &EncodingKey::from_rsa_pem(pem.as_bytes()).expect("rsa key"),
        )
        .expect("encode")
    }

    fn es256(pem: &str, kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = kid.map(str::to_owned);
        encode(
            &header,
            claims,
            &EncodingKey::from_ec_pem(pem.as_bytes()).expect("ec key"),
        )
        .expect("encode")
    }

    fn b64(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let mut acc = 0u32;
            for (i, b) in chunk.iter().enumerate() {
                acc |= u32::from(*b) << (16 - 8 * i);
            }
            for i in 0..=chunk.len() {
                out.push(ALPHABET[(acc >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }

    /// A token with any header and a made-up signature.
    fn unsigned(header: &Value, claims: &Value, signature: &str) -> String {
        format!(
            "{}.{}.{signature}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        )
    }

    struct Setup {
        _dir: tempfile::TempDir,
        path: PathBuf,
    }

    fn file(contents: &str) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key");
        std::fs::write(&path, contents).expect("write");
        Setup { _dir: dir, path }
    }

    fn secret_verifier(settings: JwtSettings) -> (Setup, Verifier) {
        let f = file(&format!("{SECRET}\n"));
        let v = Verifier::load(&JwtSettings {
            secret_file: Some(f.path.clone()),
            ..settings
        })
        .expect("valid secret");
        (f, v)
    }

    fn public_key_verifier(pem: &str) -> (Setup, Verifier) {
        let f = file(pem);
        let v = Verifier::load(&JwtSettings {
            public_key_file: Some(f.path.clone()),
            ..JwtSettings::default()
        })
        .expect("valid public key");
        (f, v)
    }

    fn jwks(keys: &[(&str, Algorithm, &str)]) -> String {
        let keys = keys
            .iter()
            .map(|(kid, alg, pem)| {
                let key = match alg {
                    Algorithm::RS256 => EncodingKey::from_rsa_pem(pem.as_bytes()),
                    _ => EncodingKey::from_ec_pem(pem.as_bytes()),
                }
                .expect("private key");
                let mut jwk = Jwk::from_encoding_key(&key, *alg).expect("jwk");
                jwk.common.key_id = Some((*kid).to_owned());
                jwk
            })
            .collect();
        serde_json::to_string(&JwkSet { keys }).expect("json")
    }

    fn jwks_verifier(document: &str) -> (Setup, Verifier) {
        let f = file(document);
        let v = Verifier::load(&JwtSettings {
            jwks_file: Some(f.path.clone()),
            ..JwtSettings::default()
        })
        .expect("valid JWKS");
        (f, v)
    }

    #[test]
    fn the_presence_info_claim_is_kept_compact_and_one_too_large_refuses_the_token() {
        let settings = JwtSettings {
            info_claim: Some("profile".into()),
            ..JwtSettings::default()
        };
        let (_f, v) = secret_verifier(settings);
        let mut c = claims();
        assert_eq!(v.verify(&hs256(&c)).expect("valid").info, None);
        c["profile"] = json!({ "name": "Ada",  "avatar": 3 });
        let info = v.verify(&hs256(&c)).expect("valid").info;
        assert_eq!(info.as_deref(), Some(r#"{"avatar":3,"name":"Ada"}"#));
        c["profile"] = json!("x".repeat(MAX_INFO_BYTES));
        let err = v.verify(&hs256(&c)).expect_err("too large");
        assert_eq!(err.reason(), "bad_claims");
        let (_f, plain) = secret_verifier(JwtSettings::default());
        assert_eq!(plain.verify(&hs256(&c)).expect("not looked at").info, None);
    }

    #[test]
    fn a_valid_hs256_token_is_accepted_with_its_permissions() {
        let (_f, v) = secret_verifier(JwtSettings::default());
        let id = v.verify(&hs256(&claims())).expect("valid token");
        assert_eq!(id.sub, "42");
        assert!(id.may_subscribe("room:7"));
        assert!(id.may_subscribe("news"));
        assert!(!id.may_subscribe("admin"));
        assert!(id.may_publish("chat:1"));
        assert!(!id.may_publish("room:7"));
        assert!(id.expires_at > SystemTime::now());
    }

    #[test]
    fn a_valid_rs256_token_is_accepted() {
        let (_f, v) = public_key_verifier(RSA_A_PUB);
        let id = v.verify(&rs256(RSA_A_KEY, None, &claims())).expect("valid");
        assert_eq!(id.sub, "42");
    }

    #[test]
    fn a_valid_es256_token_is_accepted() {
        let (_f, v) = public_key_verifier(EC_A_PUB);
        let id = v.verify(&es256(EC_A_KEY, None, &claims())).expect("valid");
        assert_eq!(id.sub, "42");
    }

    #[test]
    fn an_expired_token_is_refused() {
        let (_f, v) = secret_verifier(JwtSettings::default());
        let mut c = claims();
        c["exp"] = json!(now() - 3600);
        assert_eq!(v.verify(&hs256(&c)), Err(TokenError::Expired));
    }

    #[test]
    fn expiry_within_the_leeway_is_tolerated() {
        let (_f, v) = secret_verifier(JwtSettings::default());
        let mut c = claims();
        c["exp"] = json!(now() - 5);
        assert!(v.verify(&hs256(&c)).is_ok());
    }

    #[test]
    fn a_token_without_exp_is_refused() {
        let (_f, v) = secret_verifier(JwtSettings::default());
        let c = json!({ "sub": "42" });
        assert!(matches!(
            v.verify(&hs256(&c)),
            Err(TokenError::BadClaims(_))
        ));
        let c = json!({ "sub": "42", "exp": "tomorrow" });
        assert!(matches!(
            v.verify(&hs256(&c)),
            Err(TokenError::BadClaims(_))
        ));
    }

    #[test]
    fn a_token_that_is_not_valid_yet_is_refused() {
        let (_f, v) = secret_verifier(JwtSettings::default());
        let mut c = claims();
        c["nbf"] = json!(now() + 3600);
        assert_eq!(v.verify(&hs256(&c)), Err(TokenError::NotYetValid));
        c["nbf"] = json!(now() - 10);
        assert!(v.verify(&hs256(&c)).is_ok());
    }

    #[test]
    fn a_token_signed_with_another_key_is_refused_as_forged() {
        let (_f, v) = secret_verifier(JwtSettings::default());
        let forged = hs256_with("another-secret-0123456789abcdef0123", &claims());
        assert_eq!(v.verify(&forged), Err(TokenError::BadSignature));

        let (_f, v) = public_key_verifier(RSA_A_PUB);
        let forged = rs256(RSA_B_KEY, None, &claims());
        assert_eq!(v.verify(&forged), Err(TokenError::BadSignature));

        let (_f, v) = public_key_verifier(EC_A_PUB);
        let forged = es256(EC_B_KEY, None, &claims());
        assert_eq!(v.verify(&forged), Err(TokenError::BadSignature));
    }

    #[test]
    fn a_token_with_changed_claims_is_refused() {
        let (_f, v) = secret_verifier(JwtSettings::default());
        let token = hs256(&claims());
        let signature = token.rsplit('.').next().expect("three parts");
        let mut c = claims();
        c["topics"] = json!(["*"]);
        let tampered = unsigned(&json!({"alg": "HS256", "typ": "JWT"}), &c, signature);
        assert_eq!(v.verify(&tampered), Err(TokenError::BadSignature));
    }

    #[test]
    fn the_audience_is_checked_only_when_configured() {
        let settings = JwtSettings {
            audience: Some("herald".into()),
            ..JwtSettings::default()
        };
        let (_f, v) = secret_verifier(settings);
        let mut c = claims();
        c["aud"] = json!("someone-else");
        assert_eq!(v.verify(&hs256(&c)), Err(TokenError::WrongAudience));
        c["aud"] = json!(["someone-else", "herald"]);
        assert!(v.verify(&hs256(&c)).is_ok());
        c["aud"] = json!("herald");
        assert!(v.verify(&hs256(&c)).is_ok());
        let without = claims();
        assert_eq!(v.verify(&hs256(&without)), Err(TokenError::WrongAudience));

        let (_f, unconfigured) = secret_verifier(JwtSettings::default());
        c["aud"] = json!("anything");
        assert!(unconfigured.verify(&hs256(&c)).is_ok());
    }

    #[test]
    fn the_issuer_is_checked_only_when_configured() {
        let settings = JwtSettings {
            issuer: Some("https://issuer.example".into()),
            ..JwtSettings::default()
        };
        let (_f, v) = secret_verifier(settings);
        let mut c = claims();
        c["iss"] = json!("https://evil.example");
        assert_eq!(v.verify(&hs256(&c)), Err(TokenError::WrongIssuer));
        assert_eq!(v.verify(&hs256(&claims())), Err(TokenError::WrongIssuer));
        c["iss"] = json!("https://issuer.example");
        assert!(v.verify(&hs256(&c)).is_ok());

        let (_f, unconfigured) = secret_verifier(JwtSettings::default());
        c["iss"] = json!("https://evil.example");
        assert!(unconfigured.verify(&hs256(&c)).is_ok());
    }

    #[test]
    fn alg_none_is_refused() {
        for verifier in [
            secret_verifier(JwtSettings::default()),
            public_key_verifier(RSA_A_PUB),
        ] {
            let (_f, v) = verifier;
            for alg in ["none", "None", "NONE"] {
                let token = unsigned(&json!({"alg": alg, "typ": "JWT"}), &claims(), "");
                assert_eq!(v.verify(&token), Err(TokenError::WrongAlgorithm), "{alg}");
            }
        }
    }

    #[test]
    fn hs256_signed_with_the_public_key_is_refused() {
        // The classic confusion: the attacker knows the public key and uses
        // its PEM bytes as an HMAC secret.
        for (pem, _) in [(RSA_A_PUB, "rsa"), (EC_A_PUB, "ec")] {
            let (_f, v) = public_key_verifier(pem);
            let token = hs256_with(pem, &claims());
            assert_eq!(v.verify(&token), Err(TokenError::WrongAlgorithm));
        }
    }

    #[test]
    fn a_token_of_the_other_asymmetric_family_is_refused() {
        let (_f, v) = public_key_verifier(RSA_A_PUB);
        assert_eq!(
            v.verify(&es256(EC_A_KEY, None, &claims())),
            Err(TokenError::WrongAlgorithm)
        );
        let (_f, v) = secret_verifier(JwtSettings::default());
        assert_eq!(
            v.verify(&rs256(RSA_A_KEY, None, &claims())),
            Err(TokenError::WrongAlgorithm)
        );
    }

    #[test]
    fn a_token_without_a_subject_is_refused() {
        let (_f, v) = secret_verifier(JwtSettings::default());
        for sub in [json!(null), json!("")] {
            let mut c = claims();
            c["sub"] = sub;
            assert_eq!(v.verify(&hs256(&c)), Err(TokenError::MissingSubject));
        }
        let mut c = claims();
        c.as_object_mut().expect("object").remove("sub");
        assert_eq!(v.verify(&hs256(&c)), Err(TokenError::MissingSubject));
        c["sub"] = json!(42);
        assert!(matches!(
            v.verify(&hs256(&c)),
            Err(TokenError::BadClaims(_))
        ));
    }

    #[test]
    fn a_bad_topics_or_publish_claim_is_refused() {
        let (_f, v) = secret_verifier(JwtSettings::default());
        for (claim, value) in [
            ("topics", json!("room:*")),
            ("topics", json!([1, 2])),
            ("topics", json!(["ok", "ro*m"])),
            ("topics", json!(["room 1"])),
            ("publish", json!({"room": true})),
            ("publish", json!([""])),
        ] {
            let mut c = claims();
            c[claim] = value.clone();
            let err = v.verify(&hs256(&c)).expect_err("bad claims");
            assert!(matches!(err, TokenError::BadClaims(_)), "{claim}: {value}");
            assert!(err.to_string().contains(claim), "{err}");
        }
    }

    #[test]
    fn absent_permission_claims_allow_only_the_users_own_topic() {
        let (_f, v) = secret_verifier(JwtSettings::default());
        let id = v
            .verify(&hs256(
                &json!({ "sub": "42", "exp": now() + 60, "topics": null }),
            ))
            .expect("valid");
        assert!(id.may_subscribe("user:42"));
        assert!(!id.may_subscribe("user:43"));
        assert!(!id.may_subscribe("user:4"));
        assert!(!id.may_subscribe("user:420"));
        assert!(!id.may_subscribe("room:1"));
        assert!(
            !id.may_publish("user:42"),
            "the own topic is not publishable"
        );
        assert_eq!(
            id.user_topic().map(|t| t.to_string()),
            Some("user:42".into())
        );
    }

    #[test]
    fn the_own_topic_is_publishable_only_when_listed() {
        let (_f, v) = secret_verifier(JwtSettings::default());
        let mut c = claims();
        c["publish"] = json!(["user:42"]);
        let id = v.verify(&hs256(&c)).expect("valid");
        assert!(id.may_publish("user:42"));
    }

    #[test]
    fn a_subject_that_cannot_form_a_topic_has_no_user_topic() {
        let id = Identity {
            sub: "has space".into(),
            subscribe: TopicPatterns::none(),
            publish: TopicPatterns::none(),
            expires_at: SystemTime::now(),
            info: None,
        };
        assert_eq!(id.user_topic(), None);
    }

    #[test]
    fn garbage_is_malformed_and_never_echoed() {
        let (_f, v) = secret_verifier(JwtSettings::default());
        for junk in [
            "",
            "abc",
            "a.b",
            "a.b.c.d",
            "!!!.???.***",
            "e30.e30.",
            "eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.c2ln",
        ] {
            let err = v.verify(junk).expect_err("junk");
            assert!(
                matches!(err, TokenError::Malformed | TokenError::BadSignature),
                "{junk:?}: {err:?}"
            );
        }
        let token = hs256(&claims());
        let err = v.verify(&format!("{token}x")).expect_err("bad signature");
        assert!(!err.to_string().contains(&token[..10]));
    }

    #[test]
    fn a_signed_token_with_20_kib_of_claims_passes_and_one_past_the_cap_is_too_long() {
        let (_f, v) = secret_verifier(JwtSettings::default());
        let mut big = claims();
        let groups: Vec<String> = (0..600)
            .map(|n| format!("group-{n:05}-of-the-directory"))
            .collect();
        big["groups"] = json!(groups);
        let token = hs256(&big);
        assert!(
            (16 * 1024..MAX_TOKEN_BYTES).contains(&token.len()),
            "{}",
            token.len()
        );
        assert_eq!(v.verify(&token).expect("accepted").sub, "42");
        let long = "a".repeat(MAX_TOKEN_BYTES + 1);
        let err = v.verify(&long).expect_err("too long");
        assert_eq!(err, TokenError::TooLong);
        assert!(err.to_string().contains("longer than"), "{err}");
    }

    #[test]
    fn a_jwks_key_is_chosen_by_kid() {
        let (_f, v) = jwks_verifier(&jwks(&[
            ("rsa-1", Algorithm::RS256, RSA_A_KEY),
            ("ec-1", Algorithm::ES256, EC_A_KEY),
        ]));
        assert!(
            v.verify(&rs256(RSA_A_KEY, Some("rsa-1"), &claims()))
                .is_ok()
        );
        assert!(v.verify(&es256(EC_A_KEY, Some("ec-1"), &claims())).is_ok());
        assert_eq!(
            v.verify(&rs256(RSA_A_KEY, Some("ec-1"), &claims())),
            Err(TokenError::WrongAlgorithm),
            "the kid's key decides the algorithm"
        );
        assert_eq!(
            v.verify(&rs256(RSA_B_KEY, Some("rsa-1"), &claims())),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn an_unknown_kid_is_refused() {
        let (_f, v) = jwks_verifier(&jwks(&[
            ("rsa-1", Algorithm::RS256, RSA_A_KEY),
            ("ec-1", Algorithm::ES256, EC_A_KEY),
        ]));
        assert_eq!(
            v.verify(&rs256(RSA_A_KEY, Some("rsa-9"), &claims())),
            Err(TokenError::UnknownKey)
        );
        assert_eq!(
            v.verify(&rs256(RSA_A_KEY, None, &claims())),
            Err(TokenError::UnknownKey),
            "without a kid, a set of several keys is ambiguous"
        );
    }

    #[test]
    fn a_token_without_kid_uses_the_only_key_of_a_one_key_set() {
        let (_f, v) = jwks_verifier(&jwks(&[("only", Algorithm::ES256, EC_A_KEY)]));
        assert!(v.verify(&es256(EC_A_KEY, None, &claims())).is_ok());
    }

    #[test]
    fn unusable_jwks_keys_are_skipped_and_an_all_unusable_set_is_an_error() {
        let mut doc: Value =
            serde_json::from_str(&jwks(&[("rsa-1", Algorithm::RS256, RSA_A_KEY)])).expect("json");
        let keys = doc["keys"].as_array_mut().expect("keys");
        keys.push(json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}));
        keys.push(json!({"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"}));
        keys.push(json!({"kty": "weird"}));
        let (_f, v) = jwks_verifier(&doc.to_string());
        assert!(
            v.verify(&rs256(RSA_A_KEY, Some("rsa-1"), &claims()))
                .is_ok()
        );
        let hmac = {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some("hmac".into());
            encode(&header, &claims(), &EncodingKey::from_secret(b"secret")).expect("encode")
        };
        assert_eq!(v.verify(&hmac), Err(TokenError::UnknownKey));

        let f = file(r#"{"keys":[{"kty":"oct","kid":"hmac","k":"c2VjcmV0"}]}"#);
        let err = Verifier::load(&JwtSettings {
            jwks_file: Some(f.path.clone()),
            ..JwtSettings::default()
        })
        .expect_err("no usable key");
        assert!(err.to_string().contains("no usable key"), "{err}");
    }

    fn hs256_with_kid(kid: &str, secret: &str) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(kid.into());
        encode(
            &header,
            &claims(),
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("encode")
    }

    #[test]
    fn jwks_oct_keys_let_an_hs256_secret_rotate_with_an_overlap() {
        let (old, new) = (SECRET, "another-test-secret-0123456789abcdef012345");
        let doc = json!({"keys": [
            {"kty": "oct", "kid": "2026-11", "alg": "HS256", "k": b64(old.as_bytes())},
            {"kty": "oct", "kid": "2026-12", "k": b64(new.as_bytes())},
            {"kty": "oct", "kid": "short", "k": b64(b"too short")},
        ]});
        let (_f, v) = jwks_verifier(&doc.to_string());
        assert!(v.verify(&hs256_with_kid("2026-11", old)).is_ok());
        assert!(v.verify(&hs256_with_kid("2026-12", new)).is_ok());
        assert_eq!(
            v.verify(&hs256_with_kid("2026-12", old)),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            v.verify(&hs256_with_kid("short", "too short")),
            Err(TokenError::UnknownKey),
            "an oct key shorter than 32 bytes is skipped"
        );
        assert_eq!(
            v.verify(&rs256(RSA_A_KEY, Some("2026-11"), &claims())),
            Err(TokenError::WrongAlgorithm),
            "an oct key verifies HS256 only"
        );
    }

    #[test]
    fn an_oct_key_from_an_identity_provider_is_never_used() {
        let provider =
            Provider::new(Some("https://idp.example.com/keys"), None, None).expect("provider");
        let source = KeySource::Provider(Box::new(provider));
        let rules = Rules {
            issuer: None,
            audience: None,
            leeway_secs: 0,
            info_claim: None,
        };
        let secret = json!({"kty": "oct", "kid": "s", "k": b64(SECRET.as_bytes())});
        let only_secret = json!({"keys": [secret]}).to_string();
        let Err(reason) = KeyRing::parse(&source, only_secret.as_bytes(), &rules) else {
            panic!("a fetched set of only a secret is unusable");
        };
        assert!(reason.contains("no usable key"), "{reason}");
        let mut mixed: Value =
            serde_json::from_str(&jwks(&[("rsa-1", Algorithm::RS256, RSA_A_KEY)])).expect("json");
        mixed["keys"].as_array_mut().expect("keys").push(secret);
        let keys = KeyRing::parse(&source, mixed.to_string().as_bytes(), &rules).expect("RSA key");
        assert!(keys.find(Some("rsa-1")).is_some());
        assert!(keys.find(Some("s")).is_none());
    }

    #[test]
    fn exactly_one_key_source_is_required() {
        assert!(matches!(
            Verifier::load(&JwtSettings::default()),
            Err(AuthError::NoKeySource)
        ));
        let err = Verifier::load(&JwtSettings {
            secret_file: Some("/a".into()),
            jwks_file: Some("/b".into()),
            ..JwtSettings::default()
        })
        .expect_err("two sources");
        assert!(
            err.to_string()
                .contains("--jwt-secret-file and --jwks-file"),
            "{err}"
        );
    }

    #[test]
    fn unreadable_and_invalid_key_files_are_errors_naming_the_file() {
        let missing = Verifier::load(&JwtSettings {
            public_key_file: Some("/nonexistent/herald.pem".into()),
            ..JwtSettings::default()
        })
        .expect_err("missing file");
        assert!(missing.to_string().contains("/nonexistent/herald.pem"));

        for (contents, expected) in [
            ("not a pem", "not a PEM"),
            (RSA_A_KEY, "private key"),
            (
                "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
                "not an RSA",
            ),
        ] {
            let f = file(contents);
            let err = Verifier::load(&JwtSettings {
                public_key_file: Some(f.path.clone()),
                ..JwtSettings::default()
            })
            .expect_err("invalid key")
            .to_string();
            assert!(err.contains(&f.path.display().to_string()), "{err}");
            assert!(err.contains(expected), "{err}");
        }

        for (contents, expected) in [("\n", "empty"), ("", "empty")] {
            let f = file(contents);
            let err = Verifier::load(&JwtSettings {
                secret_file: Some(f.path.clone()),
                ..JwtSettings::default()
            })
            .expect_err("empty secret")
            .to_string();
            assert!(err.contains(expected), "{err}");
        }

        let f = file("{\"keys\": 3}");
        assert!(
            Verifier::load(&JwtSettings {
                jwks_file: Some(f.path.clone()),
                ..JwtSettings::default()
            })
            .is_err()
        );
    }

    #[test]
    fn the_secret_file_loses_only_its_trailing_newline() {
        let f = file(&format!("{SECRET}\r\n"));
        let v = Verifier::load(&JwtSettings {
            secret_file: Some(f.path.clone()),
            ..JwtSettings::default()
        })
        .expect("valid");
        assert!(v.verify(&hs256(&claims())).is_ok());
        let f = file(&format!(" {SECRET}\n"));
        let v = Verifier::load(&JwtSettings {
            secret_file: Some(f.path.clone()),
            ..JwtSettings::default()
        })
        .expect("valid");
        assert_eq!(
            v.verify(&hs256(&claims())),
            Err(TokenError::BadSignature),
            "other whitespace is part of the secret"
        );
    }

    #[tokio::test]
    async fn a_rotated_public_key_is_picked_up_and_a_broken_one_ignored() {
        let f = file(RSA_A_PUB);
        let v = Verifier::load(&JwtSettings {
            public_key_file: Some(f.path.clone()),
            ..JwtSettings::default()
        })
        .expect("valid");
        let shutdown = CancellationToken::new();
        let watcher = tokio::spawn(
            v.clone()
                .watch_every(Duration::from_millis(10), shutdown.clone()),
        );
        let old = rs256(RSA_A_KEY, None, &claims());
        let new = es256(EC_A_KEY, None, &claims());
        assert!(v.verify(&old).is_ok());

        std::fs::write(&f.path, EC_A_PUB).expect("rotate");
        reload::wait_until(|| v.verify(&new).is_ok()).await;
        assert_eq!(v.verify(&old), Err(TokenError::WrongAlgorithm));

        std::fs::write(&f.path, "-----BEGIN PUBLIC KEY-----\nbroken").expect("break");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            v.verify(&new).is_ok(),
            "a broken file keeps the current key"
        );

        shutdown.cancel();
        watcher.await.expect("the watcher stops on shutdown");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_kubernetes_style_symlink_swap_of_a_jwks_is_picked_up() {
        // A Secret volume: key -> ..data/key, ..data -> ..2024_1; an update
        // writes ..2024_2 and renames a new ..data link over the old one.
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let write_version = |name: &str, doc: &str| {
            std::fs::create_dir(root.join(name)).expect("version dir");
            std::fs::write(root.join(name).join("jwks.json"), doc).expect("write");
        };
        write_version("..2024_1", &jwks(&[("k1", Algorithm::RS256, RSA_A_KEY)]));
        symlink("..2024_1", root.join("..data")).expect("data link");
        symlink("..data/jwks.json", root.join("jwks.json")).expect("file link");
        let v = Verifier::load(&JwtSettings {
            jwks_file: Some(root.join("jwks.json")),
            ..JwtSettings::default()
        })
        .expect("valid");
        let shutdown = CancellationToken::new();
        let watcher = tokio::spawn(
            v.clone()
                .watch_every(Duration::from_millis(10), shutdown.clone()),
        );
        let k2 = es256(EC_A_KEY, Some("k2"), &claims());
        assert_eq!(v.verify(&k2), Err(TokenError::UnknownKey));

        write_version(
            "..2024_2",
            &jwks(&[
                ("k1", Algorithm::RS256, RSA_A_KEY),
                ("k2", Algorithm::ES256, EC_A_KEY),
            ]),
        );
        symlink("..2024_2", root.join("..data_tmp")).expect("new link");
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).expect("swap");
        reload::wait_until(|| v.verify(&k2).is_ok()).await;
        assert!(v.verify(&rs256(RSA_A_KEY, Some("k1"), &claims())).is_ok());

        shutdown.cancel();
        watcher.await.expect("the watcher stops on shutdown");
    }

    #[test]
    fn base64url_decoding_matches_the_rfc_vectors() {
        for (encoded, decoded) in [
            ("", ""),
            ("Zg", "f"),
            ("Zm8", "fo"),
            ("Zm9v", "foo"),
            ("Zm9vYg", "foob"),
            ("Zm9vYmE", "fooba"),
            ("Zm9vYmFy", "foobar"),
        ] {
            assert_eq!(
                base64url_decode(encoded).as_deref(),
                Some(decoded.as_bytes())
            );
            assert_eq!(b64(decoded.as_bytes()), encoded);
        }
        assert_eq!(base64url_decode("Zm9vY"), None);
        assert_eq!(base64url_decode("Zm9v="), None);
        assert_eq!(base64url_decode("Zm+v"), None);
    }
}

//! Configuration errors of the auth module: what [`Verifier::load`] and
//! [`ApiTokens::load`] report at startup. They name the flag or file at fault
//! and never include key or token material.
//!
//! [`Verifier::load`]: super::Verifier::load
//! [`ApiTokens::load`]: super::ApiTokens::load

use std::io;
use std::path::PathBuf;

/// Why the auth configuration cannot be used. Startup should fail on any of
/// these; a reload that hits one keeps the previous keys instead.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// `--auth jwt` without a key source.
    #[error(
        "JWT auth needs exactly one key source: --jwt-secret-file, --jwt-public-key-file, --jwks-file, --jwks-url or --oidc-issuer; none is set"
    )]
    NoKeySource,
    /// `--jwks-url`, `--oidc-issuer` or a discovered `jwks_uri` is not a
    /// URL herald fetches keys from.
    #[error("{0}")]
    Url(String),
    /// No `--jwks-ca-file` and the system has no usable CA certificates.
    #[error(
        "no CA certificates found to check the identity provider's TLS certificate: install the system's CA bundle, set SSL_CERT_FILE, or give --jwks-ca-file"
    )]
    NoTrustRoots,
    /// More than one of the key-source flags is set.
    #[error("JWT auth takes exactly one key source, but {0} are set; keep one")]
    SeveralKeySources(String),
    /// A key or token file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A key or token file was read but its contents are unusable.
    #[error("{}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it, without quoting secrets.
        reason: String,
    },
}

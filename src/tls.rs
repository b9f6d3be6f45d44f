//! Reading TLS material for the gRPC API and the peer port into tonic's
//! and rustls's configurations. Certificates are read once, at start.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::cluster::wire;
use crate::config::{ClientTlsArgs, TlsArgs};

/// TLS material that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading TLS file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file holds no usable PEM certificate or key.
    #[error("TLS file {path} holds no usable PEM {what}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was looked for.
        what: &'static str,
        /// Why none was found.
        reason: String,
    },
    /// rustls refused the material (a key that does not match the
    /// certificate, a CA that is not a CA, a bad server name).
    #[error("peer TLS: {0}")]
    Config(String),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn identity(cert: &Path, key: &Path) -> Result<Identity, TlsError> {
    Ok(Identity::from_pem(read(cert)?, read(key)?))
}

/// The gRPC API's server TLS, when `--grpc-tls-cert-file` is set; with a
/// client CA, callers must present a certificate it signed.
pub fn grpc_server(args: &TlsArgs) -> Result<Option<ServerTlsConfig>, TlsError> {
    let (Some(cert), Some(key)) = (&args.grpc_tls_cert_file, &args.grpc_tls_key_file) else {
        return Ok(None);
    };
    let mut config = ServerTlsConfig::new().identity(identity(cert, key)?);
    if let Some(ca) = &args.grpc_tls_client_ca_file {
        config = config.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    Ok(Some(config))
}

/// Mutual TLS between pods, when `--peer-tls-cert-file` is set: every pod
/// presents the same certificate as server and as client, and accepts only
/// peers whose certificate the CA signed.
#[derive(Clone)]
pub struct PeerTls {
    /// Accepts peer connections.
    pub acceptor: TlsAcceptor,
    /// Dials the peer wire.
    pub connector: TlsConnector,
    /// The name peers' certificates must carry.
    pub server_name: ServerName<'static>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// The peer port's mutual TLS, when `--peer-tls-cert-file` is set.
pub fn peer(args: &TlsArgs) -> Result<Option<PeerTls>, TlsError> {
    let (Some(cert), Some(key), Some(ca)) = (
        &args.peer_tls_cert_file,
        &args.peer_tls_key_file,
        &args.peer_tls_ca_file,
    ) else {
        return Ok(None);
    };
    let (cert_pem, key_pem, ca_pem) = (read(cert)?, read(key)?, read(ca)?);
    let chain = certificates(&cert_pem, cert)?;
    let roots = roots(&ca_pem, ca)?;
    let private_key = || {
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
            path: key.clone(),
            what: "private key",
            reason: e.to_string(),
        })
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config_error = |e: rustls::Error| TlsError::Config(e.to_string());
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), private_key()?)
        .map_err(config_error)?;
    server.alpn_protocols = vec![wire::ALPN.to_vec()];
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, private_key()?)
        .map_err(config_error)?;
    client.alpn_protocols = vec![wire::ALPN.to_vec()];
    let server_name = ServerName::try_from(args.peer_tls_server_name.clone())
        .map_err(|e| TlsError::Config(format!("--peer-tls-server-name: {e}")))?;
    Ok(Some(PeerTls {
        acceptor: TlsAcceptor::from(Arc::new(server)),
        connector: TlsConnector::from(Arc::new(client)),
        server_name,
    }))
}

/// Every certificate in a PEM file, in order; at least one.
fn certificates(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let found: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem).collect();
    match found {
        Ok(chain) if !chain.is_empty() => Ok(chain),
        Ok(_) => Err(TlsError::Pem {
            path: path.to_owned(),
            what: "certificate",
            reason: "none found".into(),
        }),
        Err(e) => Err(TlsError::Pem {
            path: path.to_owned(),
            what: "certificate",
            reason: e.to_string(),
        }),
    }
}

/// The CA certificates of a PEM file as trust roots.
pub(crate) fn roots(pem: &[u8], path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in certificates(pem, path)? {
        roots
            .add(ca)
            .map_err(|e| TlsError::Config(format!("CA {}: {e}", path.display())))?;
    }
    Ok(Arc::new(roots))
}

/// The client TLS `herald publish` and `herald peers` use, when a CA or a
/// client certificate is given.
pub fn client(args: &ClientTlsArgs) -> Result<Option<ClientTlsConfig>, TlsError> {
    if args.ca_file.is_none() && args.cert_file.is_none() {
        return Ok(None);
    }
    let mut config = ClientTlsConfig::new();
    if let Some(ca) = &args.ca_file {
        config = config.ca_certificate(Certificate::from_pem(read(ca)?));
    }
    if let (Some(cert), Some(key)) = (&args.cert_file, &args.key_file) {
        config = config.identity(identity(cert, key)?);
    }
    Ok(Some(config))
}

//! Reading TLS material for the gRPC API and the peer port into tonic's
//! configurations. Certificates are read once, at start.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::config::{ClientTlsArgs, TlsArgs};

/// A TLS file that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("reading TLS file {path}: {source}")]
pub struct TlsError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub source: std::io::Error,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError {
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

/// Mutual TLS between pods: the server side and the client side, both from
/// the same certificate and CA, when `--peer-tls-cert-file` is set.
pub fn peer(args: &TlsArgs) -> Result<Option<(ServerTlsConfig, ClientTlsConfig)>, TlsError> {
    let (Some(cert), Some(key), Some(ca)) = (
        &args.peer_tls_cert_file,
        &args.peer_tls_key_file,
        &args.peer_tls_ca_file,
    ) else {
        return Ok(None);
    };
    let identity = identity(cert, key)?;
    let ca = Certificate::from_pem(read(ca)?);
    let server = ServerTlsConfig::new()
        .identity(identity.clone())
        .client_ca_root(ca.clone());
    let client = ClientTlsConfig::new()
        .identity(identity)
        .ca_certificate(ca)
        .domain_name(args.peer_tls_server_name.clone());
    Ok(Some((server, client)))
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

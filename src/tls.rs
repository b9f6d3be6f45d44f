//! TLS for the gRPC API ([`GrpcTls`]) and mutual TLS on the peer port
//! ([`PeerTls`]), built with rustls from PEM files, and the client TLS of
//! `herald publish` and `herald peers` ([`client`]).
//!
//! The server sides follow their files without a restart. Each keeps its
//! current rustls configuration behind an [`ArcSwap`]; every new
//! connection (a gRPC caller accepted, a peer accepted or dialled) takes the
//! configuration current at that moment, and connections already open carry
//! on with the one they started with. The certificate, key and CA files are
//! watched as one whole (in a Kubernetes Secret they change together) with
//! [`reload::watch_files`]: when any of them changes, all are read again,
//! and only a set that parses, whose key matches its certificate and whose
//! CA bundle is usable replaces the old one. A broken or half-written set
//! keeps the old one in force and is logged once.
//!
//! ```text
//! cert, key, CA files ──watch──► parse + check ──ok──► ArcSwap<config>
//!                                      │ broken              │ load per connection
//!                                  one warning        accept / dial ─► TLS stream
//! ```

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::{Stream, StreamExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::auth::reload::{self, Fingerprint};
use crate::cluster::wire;
use crate::config::{ClientTlsArgs, TlsArgs};

/// gRPC speaks HTTP/2 only, which TLS negotiates as `h2`.
const ALPN_H2: &[u8] = b"h2";

/// Longest a gRPC caller's TLS handshake may take: two round trips and a
/// few signatures, so a caller that needs longer is stalling.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// One PEM file's contents, and its path for the errors.
#[derive(Clone, Copy)]
struct Pem<'a> {
    path: &'a Path,
    bytes: &'a [u8],
}

impl Pem<'_> {
    /// Every certificate in the file, in order; at least one.
    fn certificates(self) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let error = |reason: String| TlsError::Pem {
            path: self.path.to_owned(),
            what: "certificate",
            reason,
        };
        let found: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(self.bytes).collect();
        match found {
            Ok(chain) if !chain.is_empty() => Ok(chain),
            Ok(_) => Err(error("none found".into())),
            Err(e) => Err(error(e.to_string())),
        }
    }

    /// The file's private key.
    fn private_key(self) -> Result<PrivateKeyDer<'static>, TlsError> {
        PrivateKeyDer::from_pem_slice(self.bytes).map_err(|e| TlsError::Pem {
            path: self.path.to_owned(),
            what: "private key",
            reason: e.to_string(),
        })
    }

    /// The file's CA certificates as trust roots.
    fn roots(self) -> Result<Arc<RootCertStore>, TlsError> {
        let mut roots = RootCertStore::empty();
        for ca in self.certificates()? {
            roots
                .add(ca)
                .map_err(|e| TlsError::Config(format!("CA {}: {e}", self.path.display())))?;
        }
        Ok(Arc::new(roots))
    }
}

/// The CA certificates of the PEM bundle `pem`, read from `path`, as
/// trust roots (for clients of other services, such as an identity
/// provider).
pub(crate) fn roots(pem: &[u8], path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    Pem { path, bytes: pem }.roots()
}

fn config_error(e: rustls::Error) -> TlsError {
    TlsError::Config(e.to_string())
}

/// A set of TLS files read together, and what they held.
#[derive(Clone)]
struct Files {
    paths: Vec<PathBuf>,
    loaded: Fingerprint,
}

impl Files {
    /// Reads every one of `paths` and builds from them with `build`.
    fn load<T>(
        paths: Vec<PathBuf>,
        build: impl FnOnce(&[Pem<'_>]) -> Result<T, TlsError>,
    ) -> Result<(Self, T), TlsError> {
        let contents = paths
            .iter()
            .map(|path| read(path))
            .collect::<Result<Vec<_>, _>>()?;
        let contents: Vec<&[u8]> = contents.iter().map(Vec::as_slice).collect();
        let built = build(&pems(&paths, &contents))?;
        let loaded = Fingerprint::of_all(&contents);
        Ok((Self { paths, loaded }, built))
    }

    /// Re-reads the files whenever they change, until `shutdown`, storing
    /// what `build` makes of a whole set into `current`.
    fn watch<T: Send + Sync + 'static>(
        self,
        what: &'static str,
        current: Arc<ArcSwap<T>>,
        build: impl Fn(&[Pem<'_>]) -> Result<T, TlsError> + Send + 'static,
        shutdown: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        let paths = self.paths.clone();
        reload::watch_files(
            self.paths,
            what,
            self.loaded,
            reload::POLL_INTERVAL,
            shutdown,
            move |contents| {
                let built = build(&pems(&paths, contents)).map_err(|e| e.to_string())?;
                current.store(Arc::new(built));
                Ok("new connections use it".into())
            },
        )
    }
}

fn pems<'a>(paths: &'a [PathBuf], contents: &[&'a [u8]]) -> Vec<Pem<'a>> {
    paths
        .iter()
        .zip(contents)
        .map(|(path, bytes)| Pem { path, bytes })
        .collect()
}

/// The gRPC API's server TLS, when `--grpc-tls-cert-file` is set; with a
/// client CA, callers must present a certificate it signed. Cheap to
/// clone; every clone sees a reload.
#[derive(Clone)]
pub struct GrpcTls {
    current: Arc<ArcSwap<ServerConfig>>,
    files: Arc<Files>,
}

impl GrpcTls {
    /// Reads the certificate, key and client CA that `args` name; `None`
    /// when gRPC TLS is off.
    pub fn load(args: &TlsArgs) -> Result<Option<Self>, TlsError> {
        let (Some(cert), Some(key)) = (&args.grpc_tls_cert_file, &args.grpc_tls_key_file) else {
            return Ok(None);
        };
        let paths = [Some(cert), Some(key), args.grpc_tls_client_ca_file.as_ref()]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        let (files, config) = Files::load(paths, grpc_config)?;
        Ok(Some(Self {
            current: Arc::new(ArcSwap::from_pointee(config)),
            files: Arc::new(files),
        }))
    }

    /// Completes a TLS handshake on each connection of `tcp`, with the
    /// configuration current when it arrived, and yields the ones that
    /// succeed in the order they do. Handshakes run side by side, each for
    /// at most [`HANDSHAKE_TIMEOUT`]; one that fails is logged and dropped.
    pub fn accept<S>(self, tcp: S) -> impl Stream<Item = io::Result<TlsStream<TcpStream>>> + Send
    where
        S: Stream<Item = io::Result<TcpStream>> + Send + Unpin + 'static,
    {
        let handshakes = JoinSet::new();
        futures_util::stream::unfold(
            (tcp, handshakes, self),
            |(mut tcp, mut handshakes, tls)| async move {
                loop {
                    tokio::select! {
                        next = tcp.next() => match next {
                            Some(Ok(stream)) => {
                                let acceptor = TlsAcceptor::from(tls.current.load_full());
                                handshakes.spawn(tokio::time::timeout(
                                    HANDSHAKE_TIMEOUT,
                                    acceptor.accept(stream),
                                ));
                            }
                            Some(Err(e)) => return Some((Err(e), (tcp, handshakes, tls))),
                            None => return None,
                        },
                        Some(done) = handshakes.join_next() => match done {
                            Ok(Ok(Ok(stream))) => return Some((Ok(stream), (tcp, handshakes, tls))),
                            Ok(Ok(Err(e))) => {
                                tracing::debug!(error = %e, "TLS handshake on the gRPC port failed");
                            }
                            Ok(Err(_)) => {
                                tracing::debug!(timeout = ?HANDSHAKE_TIMEOUT, "TLS handshake on the gRPC port too slow");
                            }
                            Err(e) => tracing::debug!(error = %e, "TLS handshake task ended"),
                        },
                    }
                }
            },
        )
    }

    /// Re-reads the files whenever they change, until `shutdown`. Spawn it
    /// on the server's task tracker.
    pub fn watch(self, shutdown: CancellationToken) -> impl Future<Output = ()> + Send + 'static {
        Files::clone(&self.files).watch("gRPC TLS", self.current, grpc_config, shutdown)
    }
}

/// The gRPC server configuration of a certificate chain, its key and, if
/// given, the CA that signs callers' certificates.
fn grpc_config(files: &[Pem<'_>]) -> Result<ServerConfig, TlsError> {
    let (cert, key, client_ca) = match files {
        [cert, key] => (cert, key, None),
        [cert, key, ca] => (cert, key, Some(ca)),
        _ => {
            return Err(TlsError::Config(
                "a certificate and a key are needed".into(),
            ));
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(config_error)?;
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(ca.roots()?, provider)
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?,
        ),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(cert.certificates()?, key.private_key()?)
        .map_err(config_error)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// Mutual TLS between pods, when `--peer-tls-cert-file` is set: every pod
/// presents the same certificate as server and as client, and accepts only
/// peers whose certificate the CA signed. Cheap to clone; every clone sees
/// a reload.
#[derive(Clone)]
pub struct PeerTls {
    current: Arc<ArcSwap<PeerConfigs>>,
    files: Arc<Files>,
    /// The name peers' certificates must carry.
    pub server_name: ServerName<'static>,
}

/// Both sides of the peer port's TLS, built from the same files.
struct PeerConfigs {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl PeerTls {
    /// Reads the certificate, key and CA that `args` name; `None` when
    /// peer TLS is off.
    pub fn load(args: &TlsArgs) -> Result<Option<Self>, TlsError> {
        let (Some(cert), Some(key), Some(ca)) = (
            &args.peer_tls_cert_file,
            &args.peer_tls_key_file,
            &args.peer_tls_ca_file,
        ) else {
            return Ok(None);
        };
        let server_name = ServerName::try_from(args.peer_tls_server_name.clone())
            .map_err(|e| TlsError::Config(format!("--peer-tls-server-name: {e}")))?;
        let (files, configs) =
            Files::load(vec![cert.clone(), key.clone(), ca.clone()], peer_configs)?;
        Ok(Some(Self {
            current: Arc::new(ArcSwap::from_pointee(configs)),
            files: Arc::new(files),
            server_name,
        }))
    }

    /// Accepts a peer connection with the configuration current now.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load().server.clone())
    }

    /// Dials a peer with the configuration current now.
    pub fn connector(&self) -> TlsConnector {
        TlsConnector::from(self.current.load().client.clone())
    }

    /// Re-reads the files whenever they change, until `shutdown`. Spawn it
    /// on the server's task tracker.
    pub fn watch(self, shutdown: CancellationToken) -> impl Future<Output = ()> + Send + 'static {
        Files::clone(&self.files).watch("peer TLS", self.current, peer_configs, shutdown)
    }
}

/// The peer port's server and client configurations of a certificate
/// chain, its key and the cluster CA bundle.
fn peer_configs(files: &[Pem<'_>]) -> Result<PeerConfigs, TlsError> {
    let [cert, key, ca] = files else {
        return Err(TlsError::Config(
            "a certificate, a key and a CA are needed".into(),
        ));
    };
    let chain = cert.certificates()?;
    let roots = ca.roots()?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.private_key()?)
        .map_err(config_error)?;
    server.alpn_protocols = vec![wire::ALPN.to_vec()];
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key.private_key()?)
        .map_err(config_error)?;
    client.alpn_protocols = vec![wire::ALPN.to_vec()];
    Ok(PeerConfigs {
        server: Arc::new(server),
        client: Arc::new(client),
    })
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
        config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(Some(config))
}

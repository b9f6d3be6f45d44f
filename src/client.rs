//! The operator commands: `herald publish` and `herald peers` talk to a
//! running pod over its public gRPC API; `herald token` mints a user token.

use std::io::Read;

use crate::config::{ClientTlsArgs, PeersArgs, PublishArgs, TokenArgs};
use crate::proto::v1::publisher_client::PublisherClient;
use crate::proto::v1::{ListPeersRequest, PublishRequest};

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The pod could not be reached.
    #[error("cannot reach {addr}: {source}")]
    Connect {
        /// The address tried.
        addr: String,
        /// Why.
        source: tonic::transport::Error,
    },
    /// The pod refused the call.
    #[error("{}: {}", .0.code(), .0.message())]
    Refused(#[from] tonic::Status),
    /// Standard input could not be read.
    #[error("reading data from standard input: {0}")]
    Stdin(#[from] std::io::Error),
    /// The secret file could not be read.
    #[error("reading {path}: {source}")]
    Secret {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The token could not be signed.
    #[error("signing the token: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
    /// A TLS file could not be read.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The token cannot be sent as gRPC metadata.
    #[error("the API token holds characters that cannot be sent in a header")]
    BadToken,
}

type Client = PublisherClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>,
>;

/// Adds `authorization: Bearer <token>` to every call, when a token is set.
#[derive(Clone)]
struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

async fn connect(
    addr: &str,
    token: Option<&str>,
    tls: &ClientTlsArgs,
) -> Result<Client, ClientError> {
    let bearer = token
        .map(|t| format!("Bearer {t}").parse())
        .transpose()
        .map_err(|_| ClientError::BadToken)?;
    let failed = |source| ClientError::Connect {
        addr: addr.to_owned(),
        source,
    };
    let mut endpoint = tonic::transport::Endpoint::from_shared(addr.to_owned()).map_err(failed)?;
    if let Some(config) = crate::tls::client(tls)? {
        endpoint = endpoint.tls_config(config).map_err(failed)?;
    }
    let channel = endpoint.connect().await.map_err(failed)?;
    Ok(PublisherClient::with_interceptor(channel, Bearer(bearer)))
}

/// Publishes one message; returns its id. Data comes from `--data`, else
/// from standard input.
pub async fn publish(args: PublishArgs) -> Result<String, ClientError> {
    let data = match args.data {
        Some(data) => data.into_bytes(),
        None => {
            let mut data = Vec::new();
            std::io::stdin().read_to_end(&mut data)?;
            data
        }
    };
    let mut client = connect(&args.addr, args.token.as_deref(), &args.tls).await?;
    let reply = client
        .publish(PublishRequest {
            topic: args.topic,
            data,
            idempotency_key: args.idempotency_key.unwrap_or_default(),
        })
        .await?;
    Ok(reply.into_inner().id)
}

/// Lists the peers a pod knows, one line each.
pub async fn peers(args: PeersArgs) -> Result<String, ClientError> {
    let mut client = connect(&args.addr, args.token.as_deref(), &args.tls).await?;
    let reply = client.list_peers(ListPeersRequest {}).await?.into_inner();
    let mut out = format!(
        "pod {} in cluster {:?}: {} peer(s)\n",
        reply.self_address,
        reply.cluster,
        reply.peers.len()
    );
    out.push_str("ADDRESS\tCONNECTED\tCONNECTS\tDROPPED\tLAST ERROR\tTRANSPORT\n");
    for peer in reply.peers {
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\t{}\n",
            peer.address,
            peer.connected,
            peer.connects,
            peer.dropped,
            peer.last_error,
            peer.transport
        ));
    }
    Ok(out)
}

/// Mints an HS256 user token with the claims herald reads.
pub fn token(args: TokenArgs) -> Result<String, ClientError> {
    let secret = std::fs::read(&args.jwt_secret_file).map_err(|source| ClientError::Secret {
        path: args.jwt_secret_file.display().to_string(),
        source,
    })?;
    // The server ignores one trailing newline of the file; so does this.
    let secret = secret
        .strip_suffix(b"\r\n")
        .or_else(|| secret.strip_suffix(b"\n"))
        .unwrap_or(&secret);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut claims = serde_json::json!({
        "sub": args.sub,
        "topics": args.topics,
        "publish": args.publish,
        "iat": now,
        "exp": now + args.ttl.as_secs(),
    });
    if let Some(issuer) = args.issuer {
        claims["iss"] = issuer.into();
    }
    if let Some(audience) = args.audience {
        claims["aud"] = audience.into();
    }
    let key = jsonwebtoken::EncodingKey::from_secret(secret);
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &key,
    )?)
}

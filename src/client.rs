//! The operator commands that talk to a running pod over its public gRPC
//! API: `herald publish` and `herald peers`.

use std::io::Read;

use crate::config::{PeersArgs, PublishArgs};
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

async fn connect(addr: &str, token: Option<&str>) -> Result<Client, ClientError> {
    let bearer = token
        .map(|t| format!("Bearer {t}").parse())
        .transpose()
        .map_err(|_| ClientError::BadToken)?;
    let failed = |source| ClientError::Connect {
        addr: addr.to_owned(),
        source,
    };
    let channel = tonic::transport::Endpoint::from_shared(addr.to_owned())
        .map_err(failed)?
        .connect()
        .await
        .map_err(failed)?;
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
    let mut client = connect(&args.addr, args.token.as_deref()).await?;
    let reply = client
        .publish(PublishRequest {
            topic: args.topic,
            data,
        })
        .await?;
    Ok(reply.into_inner().id)
}

/// Lists the peers a pod knows, one line each.
pub async fn peers(args: PeersArgs) -> Result<String, ClientError> {
    let mut client = connect(&args.addr, args.token.as_deref()).await?;
    let reply = client.list_peers(ListPeersRequest {}).await?.into_inner();
    let mut out = format!(
        "pod {} in cluster {:?}: {} peer(s)\n",
        reply.self_address,
        reply.cluster,
        reply.peers.len()
    );
    out.push_str("ADDRESS\tCONNECTED\tCONNECTS\tDROPPED\tLAST ERROR\n");
    for peer in reply.peers {
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\n",
            peer.address, peer.connected, peer.connects, peer.dropped, peer.last_error
        ));
    }
    Ok(out)
}

//! The cluster: peer discovery and the peer mesh, the default broadcast
//! backend (it implements [`crate::broadcast::Broadcast`]).
//!
//! [`discovery`] turns an outside source (Kubernetes, DNS, a fixed list)
//! into a peer set. The [`Mesh`] follows that set: it keeps one outgoing
//! stream per peer ([`link`]), each with its own bounded queue, and relays
//! every locally published message once to each. Streams travel on the
//! [`wire`] (length-prefixed frames on TCP or TLS), or over gRPC to pods of
//! an earlier release. The [`inbound`] side takes the other pods' streams
//! and delivers what arrives into the local hub, never forwarding it, so
//! each message crosses the network once per pod. The cluster never touches a user socket.
//! [`presence`] carries each pod's presence entries to the others on the
//! same streams.

pub mod backoff;
pub mod discovery;
pub mod handshake;
pub mod inbound;
pub mod interest;
pub mod link;
pub mod mesh;
pub mod presence;
pub mod secret;
pub mod wire;

pub use discovery::PeerSet;
pub use mesh::{Mesh, MeshSettings};

//! herald: a Kubernetes-native real-time message publishing service.
//!
//! Backend services call the gRPC `Publisher` API on any pod. The pod checks
//! the message once and has it numbered by its topic's sequencer (itself,
//! or the pod it forwards the draft to), which keeps it in the topic's
//! history, delivers it to its own WebSocket users and sends it once to
//! every other pod; each of those keeps and delivers it in the same order.
//! No broker sits in between: the pods are the broker, and every pod's
//! history lets a user resume on any pod. With `--broadcast redis`, Redis
//! numbers each topic and carries messages instead of the mesh; everything
//! above the broadcast port stays the same.
//!
//! ```text
//!   backend ──gRPC──▶ grpc ──┐                                ┌──▶ ws session ──▶ user
//!                            ▼                                │
//!                        publish ──▶ local (history + hub, one order) ──▶ ws session ──▶ user
//!                            │ forward        ▲ numbered
//!                            ▼                │
//!                   cluster::Mesh ◀──peer streams──▶ other pods' Mesh ──▶ their local
//!                            ▲
//!             cluster::discovery (kubernetes | dns | static | none)
//! ```
//!
//! # Layout
//! - [`config`]: the command line, every flag also a `HERALD_*` variable.
//! - [`app`]: wiring; builds the parts, serves, drains.
//! - [`topic`], [`message`]: the domain values every part shares.
//! - [`publish`]: the one publish path both front doors use.
//! - [`hub`]: the local topic registry; knows no transport and no peers.
//! - [`history`]: each topic's head, sequencer and kept messages (pure).
//! - [`local`]: history and hub changed together, in each topic's order.
//! - [`presence`]: who is in a topic, cluster-wide, fed by the hub's change
//!   feed and the peers' deltas.
//! - [`ws`]: the WebSocket gateway (`GET /ws`) and protocol v1.
//! - [`auth`]: JWTs for WebSocket users, topic permissions, gRPC API tokens.
//! - [`grpc`]: tonic adapters for the public API.
//! - [`broadcast`]: the port every broadcast backend implements, the checks
//!   of what arrives from other pods, and the Redis backend
//!   (`--broadcast redis`: Redis numbers each topic and carries it).
//! - [`cluster`]: peer discovery and the pod-to-pod mesh, the default
//!   backend.
//! - [`http`]: the HTTP routers: `/ws`; `/healthz`, `/readyz`, `/metrics`.
//! - [`assets`]: the browser files: `/herald.js` and the demo chat.
//! - [`stats`], [`metrics`], [`telemetry`]: counters, their export, logs and
//!   traces.
//! - [`client`]: the operator commands `herald publish` and `herald peers`.

pub mod app;
pub mod assets;
pub mod auth;
pub mod broadcast;
pub mod client;
pub mod cluster;
pub mod config;
pub mod error;
pub mod grpc;
pub mod health;
pub mod history;
pub mod http;
pub mod hub;
pub mod limit;
pub mod local;
pub mod message;
pub mod metrics;
pub mod presence;
pub mod proto;
pub mod publish;
pub mod shutdown;
pub mod stats;
pub mod telemetry;
pub mod tls;
pub mod topic;
pub mod ws;

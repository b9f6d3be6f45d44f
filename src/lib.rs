//! herald: a Kubernetes-native real-time message publishing service.
//!
//! Backend services call the gRPC `Publisher` API on any pod. The pod checks
//! the message once, delivers it to its own WebSocket users and hands it to
//! the cluster, which sends it once to every other pod; each of those delivers
//! it to its own users. No broker sits in between: the pods are the broker.
//!
//! ```text
//!   backend ──gRPC──▶ grpc ──┐                       ┌──▶ ws session ──▶ user
//!                            ▼                       │
//!                        publish ──▶ hub (topic → mailboxes) ──▶ ws session ──▶ user
//!                            │           ▲
//!                            ▼           │
//!                   cluster::Mesh ──peer stream──▶ other pods' Mesh ──▶ their hub
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
//! - [`ws`]: the WebSocket gateway (`GET /ws`) and protocol v1.
//! - [`auth`]: JWTs for WebSocket users, topic permissions, gRPC API tokens.
//! - [`grpc`]: tonic adapters for the public API.
//! - [`cluster`]: peer discovery and the pod-to-pod broadcast group.
//! - [`http`]: the HTTP routers: `/ws`; `/healthz`, `/readyz`, `/metrics`.
//! - [`stats`], [`metrics`], [`telemetry`]: counters, their export, logs and
//!   traces.
//! - [`client`]: the operator commands `herald publish` and `herald peers`.

pub mod app;
pub mod auth;
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
pub mod proto;
pub mod publish;
pub mod shutdown;
pub mod stats;
pub mod telemetry;
pub mod tls;
pub mod topic;
pub mod ws;

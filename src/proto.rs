//! Code generated from `proto/herald/v1` by `build.rs`; the module tree
//! mirrors the proto package.

/// The `herald` proto packages.
pub mod herald {
    /// Package `herald.v1`: the public `Publisher` API and the frames of the
    /// peer wire.
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("herald.v1");
    }
}

pub use herald::v1;

/// The encoded file descriptor set, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("herald_descriptor");

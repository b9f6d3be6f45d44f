//! Generates the gRPC code for `proto/herald/v1` into OUT_DIR, with a
//! descriptor set for server reflection. protoc comes from the
//! `protoc-bin-vendored` crate so no system install is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [
        "proto/herald/v1/publisher.proto",
        "proto/herald/v1/peer.proto",
    ];
    for proto in &protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Peer envelopes carry the message payload as `bytes::Bytes`, so relaying
    // a message to several peers shares one buffer instead of copying it.
    config.bytes([".herald.v1.Envelope.data"]);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("herald_descriptor.bin"))
        .compile_with_config(config, &protos, &["proto"])?;
    Ok(())
}

//! Compiles `proto/` into the generated types, server traits and clients, with the pure-Rust
//! `protox` (no `protoc` needed), and writes the encoded descriptor set that server reflection
//! serves.

use std::path::PathBuf;

use prost::Message;

/// The public API: what reflection on the public port describes.
const PUBLIC_PROTO: &str = "proto/sandbox/v1/sandbox.proto";
/// The internal node API of fleet mode (`sandbox.node.v1`): generated, never described by the
/// public port's reflection, which must not advertise a service it does not serve.
const NODE_PROTO: &str = "proto/sandbox/node/v1/node.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `compile_fds` writes no descriptor set of its own; reflection needs one, of the public
    // files only (with their imports).
    let public_descriptors = protox::compile([PUBLIC_PROTO], ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("sandbox_v1_descriptor.bin"),
        public_descriptors.encode_to_vec(),
    )?;

    let file_descriptors = protox::compile([PUBLIC_PROTO, NODE_PROTO], ["proto"])?;
    tonic_prost_build::configure().compile_fds(file_descriptors)?;

    println!("cargo:rerun-if-changed=proto");
    Ok(())
}

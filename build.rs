//! Compiles `proto/` into the generated types, server trait and client, with the pure-Rust `protox`
//! (no `protoc` needed), and writes the encoded descriptor set that server reflection serves.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/sandbox/v1/sandbox.proto"];
    let file_descriptors = protox::compile(protos, ["proto"])?;

    // `compile_fds` writes no descriptor set of its own; reflection needs one.
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("sandbox_v1_descriptor.bin"),
        file_descriptors.encode_to_vec(),
    )?;

    tonic_prost_build::configure().compile_fds(file_descriptors)?;

    println!("cargo:rerun-if-changed=proto");
    Ok(())
}

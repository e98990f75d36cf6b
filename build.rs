//! Compiles proto/driftd/v1/driftd.proto with a vendored protoc, so building
//! driftd needs no system protobuf compiler.

use std::{env, path::PathBuf};

// prost-build finds protoc through the PROTOC variable; setting it here only
// affects this single-threaded build-script process.
#[allow(clippy::disallowed_methods)]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    env::set_var("PROTOC", protoc);
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("driftd_descriptor.bin"))
        .compile_protos(
            &[
                "proto/driftd/v1/driftd.proto",
                "proto/inference/open_inference.proto",
            ],
            &["proto"],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}

//! Generates the gRPC code from `proto/lurk/tls13/v1/crypto_service.proto`.
//! protox parses the .proto in pure Rust, so no system `protoc` is needed.
//! The encoded file descriptor set is kept too (`lurk_descriptor.bin`): the CS serves it
//! over gRPC server reflection.
use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/lurk/tls13/v1/crypto_service.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("lurk_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}

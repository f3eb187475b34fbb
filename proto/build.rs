//! Compiles `chat.proto` with protox (pure Rust), so no system `protoc` is
//! needed, and keeps the descriptor set for gRPC server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=chat.proto");
    let fds = protox::compile(["chat.proto"], ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("chat_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Malformed request bodies are INVALID_ARGUMENT, not INTERNAL.
        .codec_path("crate::codec::ChatCodec")
        .compile_fds(fds)?;
    Ok(())
}

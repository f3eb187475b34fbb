//! `grpc-client`: the chat's command-line client over gRPC.

use std::process::ExitCode;

use chat_cli::ClientArgs;
use chat_grpc::{GrpcClient, GrpcConfig};
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "grpc-client",
    version,
    about = "chatbench chat client over gRPC"
)]
struct Args {
    /// URL of the chat server.
    #[arg(long, env = "CHAT_SERVER", default_value = chat_grpc::DEFAULT_SERVER_URL, global = true)]
    server: String,
    #[command(flatten)]
    keepalive: chat_grpc::KeepaliveArgs,
    #[command(flatten)]
    client: ClientArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    chat_cli::telemetry::init("warn");
    chat_cli::run::<GrpcClient>(
        GrpcConfig::new(args.server.clone()).with_keepalive(args.keepalive.keepalive()),
        args.server.clone(),
        args.server,
        args.client,
    )
    .await
}

//! `grpc-server`: the central chat server over gRPC.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use chat_cli::ServerArgs;
use chat_core::ChatServer;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(
    name = "grpc-server",
    version,
    about = "chatbench chat server over gRPC"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "CHAT_LISTEN", default_value = chat_grpc::DEFAULT_LISTEN)]
    listen: SocketAddr,
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    keepalive: chat_grpc::KeepaliveArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Check that a running server answers its gRPC health check (exit 0 if
    /// it is serving, 1 otherwise); for container healthchecks.
    Health {
        /// URL of the server to check.
        #[arg(
            long,
            env = "CHAT_HEALTH_URL",
            default_value = "http://127.0.0.1:50051"
        )]
        url: String,
        /// Seconds to wait for an answer.
        #[arg(long, env = "CHAT_HEALTH_TIMEOUT", default_value_t = 3)]
        timeout: u64,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Command::Health { url, timeout }) = args.command {
        let result = chat_grpc::health::check(&url, Duration::from_secs(timeout)).await;
        return chat_cli::exit::health(result.map(|()| format!("ok: {url} is serving")));
    }
    chat_cli::telemetry::init("info");
    chat_cli::exit::server("grpc-server", serve(args).await)
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let config = args.server.config();
    let server = ChatServer::open(config.clone()).with_context(|| {
        format!(
            "cannot open the data directory {}",
            config.data_dir.display()
        )
    })?;
    let listener = TcpListener::bind(args.listen).await.with_context(|| {
        format!(
            "cannot listen on {}: is another server running there? choose another with --listen",
            args.listen
        )
    })?;
    // Before "listening on": whoever waits for that line finds both.
    if let Some(addr) = args.server.metrics_listen {
        chat_core::metrics::start(addr, &server).await?;
    }
    let addr = listener.local_addr()?;
    tracing::info!("listening on {addr}");
    let keepalive = args.keepalive.keepalive();
    tracing::info!(
        "keepalive: a silent client is dropped after {}s + {}s",
        keepalive.interval.as_secs(),
        keepalive.timeout.as_secs()
    );
    chat_grpc::run_with(
        listener,
        server,
        keepalive,
        chat_cli::signal::shutdown_signal(),
    )
    .await?;
    tracing::info!("stopped");
    Ok(())
}

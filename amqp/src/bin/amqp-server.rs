//! `amqp-server`: the central chat server over RabbitMQ.

use std::process::ExitCode;

use anyhow::Context;
use chat_amqp::{AmqpArgs, AmqpConfig};
use chat_cli::ServerArgs;
use chat_core::ChatServer;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "amqp-server",
    version,
    about = "chatbench chat server over RabbitMQ"
)]
struct Args {
    #[command(flatten)]
    broker: AmqpArgs,
    #[command(flatten)]
    server: ServerArgs,
    /// The RabbitMQ management API, with an `administrator` account in the
    /// URL (http://guest:guest@127.0.0.1:15672); needed with
    /// `--broker-auth per-client`, where the server creates the clients'
    /// broker users. The password is never logged.
    #[arg(long, env = "CHAT_AMQP_MANAGEMENT_URL", global = true)]
    management_url: Option<String>,
    /// Adaptive batching: when several messages wait for one recipient,
    /// deliver them as one ChatMessageBatch (a message that waits alone
    /// goes out at once, as a ChatMessage). `off`: one delivery per message.
    #[arg(long, env = "CHAT_BATCHING", default_value = "on", value_parser = ["on", "off"])]
    batching: String,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Check that the broker answers and a server consumes the request
    /// queue (exit 0 if so, 1 otherwise); for container healthchecks.
    Health,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let mut config = args.broker.config();
    config.management_url = args.management_url;
    config.batching = args.batching == "on";
    if let Some(Command::Health) = args.command {
        return chat_cli::exit::health(chat_amqp::health(&config).await.map_err(|e| e.to_string()));
    }
    chat_cli::telemetry::init("info");
    chat_cli::exit::server("amqp-server", serve(config, args.server).await)
}

async fn serve(config: AmqpConfig, args: ServerArgs) -> anyhow::Result<()> {
    let chat = args.config();
    let server = ChatServer::open(chat.clone())
        .with_context(|| format!("cannot open the data directory {}", chat.data_dir.display()))?;
    if let Some(addr) = args.metrics_listen {
        chat_core::metrics::start(addr, &server).await?;
    }
    chat_amqp::run(config, server, chat_cli::signal::shutdown_signal()).await?;
    Ok(())
}

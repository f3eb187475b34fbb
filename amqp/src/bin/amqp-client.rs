//! `amqp-client`: the chat's command-line client over RabbitMQ.

use std::process::ExitCode;

use chat_amqp::{AmqpClient, AmqpConfig};
use chat_core::cli::{self, ClientArgs};
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "amqp-client",
    version,
    about = "chatbench chat client over RabbitMQ"
)]
struct Args {
    /// Broker URL (vhost URL-encoded: %2f is "/").
    #[arg(long, env = "AMQP_URL", default_value = chat_amqp::DEFAULT_AMQP_URL, global = true)]
    amqp_url: String,
    /// Prefix of every exchange and queue name (must match the server's).
    #[arg(long, env = "CHAT_AMQP_NAMESPACE", default_value = chat_amqp::DEFAULT_NAMESPACE, global = true)]
    namespace: String,
    #[command(flatten)]
    client: ClientArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // lapin logs every lost connection at ERROR; the CLI already shows
    // "reconnecting" itself, so its lines would only garble the prompt.
    chat_core::telemetry::init("warn,lapin=off");
    let endpoint = chat_amqp::server::redact(&args.amqp_url);
    let config = AmqpConfig::new(args.amqp_url, args.namespace);
    cli::run::<AmqpClient>(config, endpoint, args.client).await
}

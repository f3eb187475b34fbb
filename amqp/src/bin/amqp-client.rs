//! `amqp-client`: the chat's command-line client over RabbitMQ.

use std::process::ExitCode;

use chat_amqp::{AmqpArgs, AmqpClient};
use chat_cli::ClientArgs;
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "amqp-client",
    version,
    about = "chatbench chat client over RabbitMQ"
)]
struct Args {
    #[command(flatten)]
    broker: AmqpArgs,
    #[command(flatten)]
    client: ClientArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // lapin logs every lost connection at ERROR; the CLI already shows
    // "reconnecting" itself, so its lines would only garble the prompt. So
    // would a refused login (per-client broker users: the first connection
    // of an ID without a user yet), which the client handles itself. Off
    // unless RUST_LOG names lapin.
    chat_cli::telemetry::init_quiet("warn", &["lapin"]);
    let endpoint = chat_amqp::redact(&args.broker.amqp_url);
    let config = args.broker.config();
    // One state file per broker and namespace: two chats on one broker are
    // two different servers.
    let state_key = format!("{endpoint}#{}", config.namespace);
    chat_cli::run::<AmqpClient>(config, endpoint, state_key, args.client).await
}

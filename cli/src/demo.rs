//! `--demo PEER`: once PEER is registered, a short scripted conversation,
//! paced so that a person watching `docker compose up` can follow it.

use std::time::{Duration, Instant};

use chat_core::{ChatClient, ClientError, ClientId};
use tokio::task::JoinHandle;

use crate::output::Output;

/// Pause between the lines of the `--demo` conversation.
const DEMO_PAUSE: Duration = Duration::from_millis(700);
/// How long `--demo` waits for its peer to register before giving up.
const DEMO_PEER_WAIT: Duration = Duration::from_secs(120);

pub(crate) fn spawn<C: ChatClient>(client: C, out: Output, peer: String) -> JoinHandle<()> {
    tokio::spawn(async move { run(&client, &out, &peer).await })
}

async fn run<C: ChatClient>(client: &C, out: &Output, peer: &str) {
    let peer = match ClientId::parse(peer) {
        Ok(p) => p,
        Err(e) => return out.error(&ClientError::from(e)),
    };
    if wait_for_peer(client, out, &peer).await {
        send_script(client, out, &peer).await;
    }
}

/// Polls the client list until `peer` is in it; says why not if it never is.
async fn wait_for_peer<C: ChatClient>(client: &C, out: &Output, peer: &ClientId) -> bool {
    let give_up = Instant::now() + DEMO_PEER_WAIT;
    loop {
        match client.list_clients().await {
            Ok(list) if list.iter().any(|c| &c.id == peer) => return true,
            Ok(_) | Err(_) if Instant::now() < give_up => {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Ok(_) => {
                out.error_text(&format!("demo: {peer} never registered; no demo sent"));
                return false;
            }
            Err(e) => {
                out.error(&e);
                return false;
            }
        }
    }
}

async fn send_script<C: ChatClient>(client: &C, out: &Output, peer: &ClientId) {
    let me = client.id();
    let script = [
        format!("Hi {peer}, this is {me}. Can you read me?"),
        "This message went through the central server, which wrote it to log.txt.".to_owned(),
        "Demo over: attach to this container to keep chatting (/help).".to_owned(),
    ];
    for line in script {
        match client.send(peer, &line).await {
            Ok(a) => out.accepted(peer, &a),
            Err(e) => out.error(&e),
        }
        tokio::time::sleep(DEMO_PAUSE).await;
    }
}

//! Several broker URLs and quorum queues, on the one shared test broker.
//!
//! A real cluster needs three brokers (`scripts/cluster-test.sh` brings one
//! up with Docker); here the "nodes" of a URL list are TCP proxies in front
//! of the same broker, or a port where nothing listens. That is enough to
//! prove what the client and server do: skip a node that does not answer,
//! move to the next node when theirs goes away, and resume there with
//! nothing lost and nothing shown twice. Quorum queues work on a single
//! node too, so their declarations are checked against the real broker.

mod common;

use std::time::Duration;

use chat_amqp::{AmqpClient, AmqpConfig, QueueType};
use chat_core::{ChatClient, ClientError, ConnectionState, IncomingEvent};
use common::*;

/// Nothing listens on port 1: a node that is down.
fn dead_node() -> String {
    let url = amqp_url();
    let (scheme, rest) = url.split_once("://").unwrap();
    let (userinfo, rest) = rest.rsplit_once('@').map_or(("", rest), |(u, r)| (u, r));
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    let at = if userinfo.is_empty() { "" } else { "@" };
    format!("{scheme}://{userinfo}{at}127.0.0.1:1{path}")
}

fn quorum(config: AmqpConfig) -> AmqpConfig {
    config.with_queue_type(QueueType::Quorum)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_does_not_answer_is_skipped() {
    let ns = Namespace::new();
    let list = format!("{},{}", dead_node(), ns.url);
    let config = ns.config_via(&list);
    let server = InProcessServer::start(config.clone()).await;
    wait_healthy(&config).await;
    let alice = ns.registered_with("alice", &config).await;
    let bob = ns.client_with("bob", &config).await;
    let mut b_in = bob.join().await.unwrap();
    alice
        .send(&id("bob"), "through the second node")
        .await
        .unwrap();
    assert_eq!(
        recv_n(&mut b_in, 1).await[0].text,
        "through the second node"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_node_answering_the_error_names_each() {
    let ns = Namespace::new();
    let list = format!("{},{}", dead_node(), dead_node().replace("%2f", "other"));
    let e = AmqpClient::connect(
        &ns.config_via(&list),
        id("alice"),
        chat_testkit::secret_of("alice"),
    )
    .await
    .unwrap_err();
    let ClientError::Unavailable { endpoint, reason } = &e else {
        panic!("expected Unavailable, got {e:?}");
    };
    assert!(endpoint.contains(",amqp://"), "{endpoint}");
    assert!(
        reason.contains("no broker of the list answered"),
        "{reason}"
    );
    assert!(reason.contains("127.0.0.1:1/other:"), "{reason}");
}

/// Server and clients know two "nodes" (proxies to the one broker). The
/// first goes down and stays down: everyone must move to the second by
/// themselves, and whatever was sent before, during and after arrives once,
/// in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_a_node_moves_everyone_to_the_next_and_loses_nothing() {
    let ns = Namespace::new();
    let first = Proxy::start().await;
    let second = Proxy::start().await;
    let config = ns.config_via(&format!("{},{}", first.url(), second.url()));
    let server = InProcessServer::start(config.clone()).await;
    wait_healthy(&config).await;
    let alice = ns.registered_with("alice", &config).await;
    let bob = ns.client_with("bob", &config).await;
    let mut b_in = bob.join().await.unwrap();
    let mut accepted = Vec::new();
    for i in 0..5 {
        accepted.push(alice.send(&id("bob"), &format!("m{i}")).await.unwrap().id);
    }
    let before = recv_n(&mut b_in, 5).await;

    // The first node dies for good.
    first.refuse(true);
    first.cut();
    match tokio::time::timeout(WAIT, b_in.recv()).await.unwrap() {
        Some(IncomingEvent::State(ConnectionState::Reconnecting { .. })) => {}
        other => panic!("expected Reconnecting, got {other:?}"),
    }
    for i in 5..10 {
        accepted.push(alice.send(&id("bob"), &format!("m{i}")).await.unwrap().id);
    }
    let mut after = Vec::new();
    while after.len() < 5 {
        match tokio::time::timeout(WAIT, b_in.recv())
            .await
            .unwrap()
            .unwrap()
        {
            IncomingEvent::Message(d) => {
                after.push(d.message.clone());
                d.ack();
            }
            IncomingEvent::State(s) => {
                assert!(!matches!(s, ConnectionState::Closed { .. }), "{s:?}");
            }
        }
    }
    let shown: Vec<_> = before.iter().chain(&after).map(|m| m.id).collect();
    assert_eq!(shown, accepted, "every accepted message once, in order");
    let seqs: Vec<u64> = before.iter().chain(&after).map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
    assert_quiet(&mut b_in, Duration::from_millis(500)).await;
    // The server moved too: it still answers, and sees bob online.
    let list = alice.list_clients().await.unwrap();
    assert!(
        list.iter().any(|c| c.id.as_str() == "bob" && c.online),
        "{list:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_runs_on_quorum_queues() {
    let ns = Namespace::new();
    let config = quorum(ns.config());
    let server = InProcessServer::start(config.clone()).await;
    wait_healthy(&config).await;
    let alice = ns.registered_with("alice", &config).await;
    // Offline first: the message waits in bob's (quorum) queue.
    ns.registered_with("bob", &config).await;
    alice.send(&id("bob"), "waiting").await.unwrap();
    let bob = ns.client_with("bob", &config).await;
    let mut b_in = bob.join().await.unwrap();
    alice.send(&id("bob"), "live").await.unwrap();
    let got: Vec<_> = recv_n(&mut b_in, 2)
        .await
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(got, ["waiting", "live"]);
    // The inbox's consumer is still exclusive on a quorum queue.
    let twin = ns.client_with("bob", &config).await;
    let e = twin.join().await.unwrap_err();
    assert!(e.to_string().contains("online"), "{e}");
    assert_quiet(&mut b_in, Duration::from_millis(300)).await;
    server.stop().await;

    // The queues really are quorum queues: a classic client is refused.
    let e = AmqpClient::connect(&ns.config(), id("carol"), chat_testkit::secret_of("carol"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains(&format!("queue {}", ns.queue("server"))), "{e}");
    assert!(e.contains("same --queue-type"), "{e}");
    assert!(e.contains("quorum"), "the broker's reason is kept: {e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_of_another_queue_type_says_what_to_align() {
    let ns = Namespace::new();
    // Classic queues exist (a classic client declared the request queue).
    let _alice = ns.client("alice").await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_amqp-server"))
        .args(["--amqp-url", &ns.url, "--namespace", &ns.name])
        .args(["--queue-type", "quorum", "--data-dir"])
        .arg(tempfile::tempdir().unwrap().path())
        .env("RUST_LOG", "warn")
        .env(chat_amqp::deadline::OP_TIMEOUT_ENV, "2000")
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // It keeps retrying (the queues may be deleted meanwhile); its log says why.
    let mut child = out;
    let mut stderr = child.stderr.take().unwrap();
    let mut text = String::new();
    let found = tokio::time::timeout(WAIT, async {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 4096];
        loop {
            let n = stderr.read(&mut buf).await.unwrap();
            if n == 0 {
                return false;
            }
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
            if text.contains("same --queue-type") {
                return true;
            }
        }
    })
    .await
    .unwrap_or(false);
    child.kill().await.unwrap();
    assert!(found, "{text}");
    assert!(text.contains("CHAT_AMQP_QUEUE_TYPE"), "{text}");
}

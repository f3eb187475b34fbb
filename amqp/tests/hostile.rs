//! Hostile but well-formed use of the AMQP server: control characters in
//! IDs, thousands of registrations on one connection, and a slow consumer
//! (a client that joins and never reads). The server must refuse what is
//! invalid, stay bounded, and keep serving everyone else. (Hostile texts
//! are a shared scenario: `hostile_texts_are_refused_or_kept_exactly`.)

mod common;
mod raw;

use std::time::Duration;

use chat_amqp::topology::{CLIENT_PREFETCH, Names};
use chat_core::{ChatClient, ErrorCode};
use chat_proto::v1 as pb;
use chat_testkit::{InProcess, hostile};
use common::*;
use raw::{RawPeer, error_of, request, send};

/// An AMQP server in this process, with a handle on its chat state.
struct Server(InProcess<chat_amqp::AmqpError>);

impl Server {
    async fn start(ns: &Namespace, max_pending: usize) -> Self {
        // One message per delivery, so that the client's prefetch (256
        // deliveries) is 256 messages and the slow-consumer bound below is
        // exact; with batching a delivery may hold up to 64 (docs/limits.md).
        let mut config = ns.config();
        config.batching = false;
        let server = InProcess::start(max_pending, |chat, shutdown| {
            chat_amqp::run(config, chat, shutdown)
        });
        wait_healthy(&ns.config()).await;
        Self(server)
    }

    fn held_for(&self, id: &str) -> usize {
        self.0.held_for(id)
    }

    async fn stop(self) {
        self.0.stop().await;
    }
}

/// Bob online and Alice sending to him: the whole service still works.
async fn assert_still_serving(ns: &Namespace, text: &str) {
    let (alice, bob) = (ns.client("alice").await, ns.client("bob").await);
    hostile::assert_still_serving(&alice, &bob, text).await;
}

/// Control characters in an ID are refused wherever an ID is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_in_ids_are_refused() {
    let ns = Namespace::new();
    let server = Server::start(&ns, chat_core::limits::DEFAULT_MAX_PENDING).await;
    ns.registered("bob").await;
    let mut raw = RawPeer::connect(&ns).await;
    let mut expected = Vec::new();
    for (i, bad) in hostile::IDS_WITH_CONTROLS.iter().enumerate() {
        let bodies = [
            pb::request::Body::Register(pb::RegisterRequest {
                client_id: (*bad).into(),
            }),
            pb::request::Body::History(pb::HistoryRequest {
                client_id: (*bad).into(),
                ..Default::default()
            }),
            send(bad, "bob", "hi"),
            send("bob", bad, "hi"),
        ];
        for (j, body) in bodies.into_iter().enumerate() {
            let correlation = format!("{i}-{j}");
            raw.publish(&request(body), raw.props(&correlation)).await;
            expected.push(correlation);
        }
    }
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    let replies = raw.replies(&expected).await;
    for correlation in expected {
        let (code, message) = error_of(&replies[correlation]);
        assert_eq!(code, ErrorCode::InvalidArgument, "{correlation}: {message}");
        assert!(message.contains("invalid client ID"), "{message}");
    }
    let names = Names::new(&ns.name).unwrap();
    assert_eq!(
        raw.depth(&names.dead_queue()).await,
        0,
        "well-formed requests are answered, not dead-lettered"
    );
    raw.close().await;
    assert_still_serving(&ns, "ids with controls changed nothing").await;
    let listed = ns.client("carol").await.list_clients().await.unwrap();
    assert_eq!(listed.len(), 2, "only bob and alice: {listed:?}");
    server.stop().await;
}

/// 3000 registrations published on one connection: all are created (each
/// with its queue on the broker), `list` shows them all, and normal
/// clients are still served. Their queues are deleted with the namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_registrations_on_one_connection() {
    let ns = Namespace::new();
    let server = Server::start(&ns, chat_core::limits::DEFAULT_MAX_PENDING).await;
    let mut raw = RawPeer::connect(&ns).await;
    let ids: Vec<String> = (0..hostile::THOUSANDS).map(hostile::user_id).collect();
    for user in &ids {
        ns.track(user);
        let body = pb::request::Body::Register(pb::RegisterRequest {
            client_id: user.clone(),
        });
        raw.publish(&request(body), raw.props(user)).await;
    }
    let expected: Vec<&str> = ids.iter().map(String::as_str).collect();
    let replies = raw.replies(&expected).await;
    for user in &ids {
        match &replies[user].body {
            Some(pb::reply::Body::Register(r)) => assert!(r.created && &r.client_id == user),
            other => panic!("{user}: {other:?}"),
        }
    }
    raw.close().await;

    assert_still_serving(&ns, "one among thousands").await;
    hostile::assert_lists_the_thousands(&ns.client("carol").await).await;
    server.stop().await;
}

/// A client that joins and never reads while Alice sends it far more than
/// `--max-pending`. On AMQP the next hop is the recipient's durable queue:
/// the server hands every message to the broker (it holds none once
/// confirmed), the broker keeps them in the queue, and the client takes at
/// most its prefetch (256) unacknowledged. What waits in the queue still
/// counts towards `--max-pending`, so sends are refused once the queue
/// holds that many; only the prefetched deliveries, which the broker does
/// not count as ready, may come on top. Other clients go on chatting; once
/// the slow one reads it gets every accepted message, in order, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_bounded_and_stalls_nobody() {
    const MAX_PENDING: usize = 100;
    const N: usize = 600;
    let ns = Namespace::new();
    let server = Server::start(&ns, MAX_PENDING).await;
    let slow = ns.client("slow").await;
    let mut slow_in = slow.join().await.unwrap();
    let alice = ns.registered("alice").await;

    let mut accepted = Vec::new();
    for i in 0..N {
        match alice.send(&id("slow"), &format!("s{i}")).await {
            Ok(a) => accepted.push(a.id),
            Err(e) => {
                assert_eq!(e.code(), Some(ErrorCode::ResourceExhausted), "{e}");
                assert!(e.to_string().contains("\"slow\" has"), "{e}");
            }
        }
    }
    assert!(
        accepted.len() >= MAX_PENDING / 2,
        "far too few accepted: {}",
        accepted.len()
    );
    assert!(
        accepted.len() <= MAX_PENDING + usize::from(CLIENT_PREFETCH),
        "the queue grew past --max-pending plus the prefetch: {} accepted",
        accepted.len()
    );
    eventually_held_nothing(&server, "slow").await;
    let queue = Names::new(&ns.name).unwrap().client_queue(&id("slow"));
    let raw = RawPeer::connect(&ns).await;
    let ready = raw.depth(&queue).await as usize;
    assert!(
        ready + usize::from(CLIENT_PREFETCH) >= accepted.len(),
        "the client took more than its prefetch: {ready} of {} still in {queue}",
        accepted.len()
    );
    raw.close().await;

    // Nobody else is stalled.
    let (carol, dave) = (ns.client("carol").await, ns.client("dave").await);
    let (carol_in, dave_in) = hostile::others_still_chat(&carol, &dave).await;
    // Offline before the namespace is deleted: a consumer cancelled by
    // the deletion would reconnect and declare its queue again (a leak).
    dave_in.close().await;
    carol_in.close().await;

    // The slow one reads at last.
    hostile::slow_one_gets_all_once(&mut slow_in, &accepted).await;
    slow_in.close().await;
    server.stop().await;
}

async fn eventually_held_nothing(server: &Server, id: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.held_for(id) > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server still holds {} for {id}",
            server.held_for(id)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

//! Malformed requests published straight to `<ns>.server`, as any broker
//! user could: garbage, a truncated request, oversized bodies, a wrong
//! `type`, no `reply_to`, an empty body. The server answers what it can
//! answer, dead-letters what it cannot decode (docs/amqp.md, "Poison never
//! loops"), and keeps serving everyone else.

mod common;
mod raw;

use std::time::Duration;

use chat_amqp::topology::{self, Names};
use chat_core::{ChatClient, ErrorCode};
use chat_proto::v1 as pb;
use common::*;
use lapin::BasicProperties;
use raw::{RawPeer, error_of, request, send};

const ONE_MIB: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_answered_or_dead_lettered_and_everyone_else_is_served() {
    let ns = Namespace::new();
    let server = InProcessServer::start(ns.config()).await;
    let alice = ns.registered("alice").await;
    let bob = ns.client("bob").await;
    let mut bob_in = bob.join().await.unwrap();
    let mut raw = RawPeer::connect(&ns).await;
    let dead = Names::new(&ns.name).unwrap().dead_queue();
    let dead_before = raw.depth(&dead).await;

    // Undecodable, each with a reply_to: an INVALID_ARGUMENT reply, then
    // dead-lettered.
    let truncated = {
        let whole = request(send("alice", "bob", "a text long enough to cut"));
        whole[..whole.len() - 3].to_vec()
    };
    let list = request(pb::request::Body::ListClients(pb::ListClientsRequest {}));
    // A send whose text is not UTF-8 (protobuf strings must be).
    let invalid_utf8 = {
        let mut inner = vec![0x12, 5];
        inner.extend(b"alice");
        inner.extend([0x1a, 3]);
        inner.extend(b"bob");
        inner.extend([0x22, 3, b'a', 0xc3, 0x28]);
        let mut body = vec![0x12, inner.len() as u8];
        body.extend(inner);
        body
    };
    let poison: [(&str, Vec<u8>, BasicProperties, &str); 6] = [
        (
            "invalid-utf8",
            invalid_utf8,
            raw.props("invalid-utf8"),
            "invalid string value: data is not UTF-8 encoded",
        ),
        (
            "garbage",
            vec![0xff; 64],
            raw.props("garbage"),
            "not a chat.v1.Request",
        ),
        (
            "truncated",
            truncated,
            raw.props("truncated"),
            "not a chat.v1.Request",
        ),
        (
            "oversized-garbage",
            vec![0xff; ONE_MIB],
            raw.props("oversized-garbage"),
            "not a chat.v1.Request",
        ),
        (
            "wrong-type",
            list.clone(),
            raw.props("wrong-type").with_type("text/plain".into()),
            "unexpected message type \"text/plain\"",
        ),
        (
            "empty",
            Vec::new(),
            raw.props("empty"),
            "request has no body",
        ),
    ];
    for (_, body, props, _) in &poison {
        raw.publish(body, props.clone()).await;
    }
    // Decodable but refused: answered and acknowledged, not dead-lettered.
    let oversized_text = "x".repeat(ONE_MIB);
    raw.publish(
        &request(send("alice", "bob", &oversized_text)),
        raw.props("oversized-text"),
    )
    .await;
    // `content_type` is informative: a valid request with another one is served.
    raw.publish(
        &list,
        raw.props("other-content-type")
            .with_content_type("application/json".into()),
    )
    .await;

    let mut expected: Vec<&str> = poison.iter().map(|p| p.0).collect();
    expected.extend(["oversized-text", "other-content-type"]);
    let replies = raw.replies(&expected).await;
    for (name, _, _, why) in &poison {
        let (code, message) = error_of(&replies[*name]);
        assert_eq!(code, ErrorCode::InvalidArgument, "{name}: {message}");
        assert!(message.contains(why), "{name}: {message}");
    }
    let (code, message) = error_of(&replies["oversized-text"]);
    assert_eq!(code, ErrorCode::InvalidArgument, "{message}");
    assert!(
        message.contains(&format!("{ONE_MIB} bytes, over the limit of 4096")),
        "{message}"
    );
    assert!(
        matches!(
            &replies["other-content-type"].body,
            Some(pb::reply::Body::ListClients(l)) if l.clients.len() == 2
        ),
        "{:?}",
        replies["other-content-type"]
    );

    // Without reply_to: garbage is dead-lettered with nobody to tell; a
    // valid send is still carried out (nobody hears "accepted").
    raw.publish(&[0x0a, 0xff, 0x01], BasicProperties::default())
        .await;
    raw.publish(
        &[0xff; 16],
        BasicProperties::default().with_delivery_mode(topology::PERSISTENT),
    )
    .await;
    raw.publish(
        &request(send("alice", "bob", "sent without reply_to")),
        BasicProperties::default(),
    )
    .await;
    let got = recv_n(&mut bob_in, 1).await;
    assert_eq!(got[0].text, "sent without reply_to");

    // Every undecodable request, and nothing else, reached <ns>.dead.
    let want = dead_before + poison.len() as u32 + 2;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let depth = raw.depth(&dead).await;
        if depth == want {
            break;
        }
        assert!(depth < want, "{depth} dead-lettered, expected {want}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {depth} of {want} dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(raw.depth(&raw.server_queue).await, 0, "nothing left behind");

    // The server still serves everyone: a normal send, a new client.
    alice.send(&id("bob"), "still serving").await.unwrap();
    assert_eq!(recv_n(&mut bob_in, 1).await[0].text, "still serving");
    let carol = ns.registered("carol").await;
    carol.send(&id("bob"), "hello from carol").await.unwrap();
    assert_eq!(recv_n(&mut bob_in, 1).await[0].text, "hello from carol");
    assert_quiet(&mut bob_in, Duration::from_millis(500)).await;
    assert_eq!(
        alice.history().await.unwrap().len(),
        2,
        "only the two valid sends were accepted"
    );

    raw.close().await;
    server.stop().await;
}

//! How the client acknowledges its inbox deliveries: core hands it seqs, and
//! it acknowledges each delivery tag once, on the channel that received
//! it, when the consumer has acknowledged the delivery's last message shown.
//! A wrong tag is no small thing: acknowledging one twice, or one of an
//! older channel, makes the broker close the channel (PRECONDITION_FAILED),
//! which the client sees as a lost connection.
//!
//! The deliveries are published straight into bob's queue, as the server
//! would publish them, so the tests choose the batches and the seqs.

mod common;

use std::time::Duration;

use chat_amqp::topology::TYPE_MESSAGE;
use chat_core::{ChatClient, ConnectionState, Delivery, Incoming, IncomingEvent};
use chat_proto::v1 as pb;
use common::inbox::Queue;
use common::*;
use prost::Message as _;

/// The next event, failing the test if none comes.
async fn next(incoming: &mut Incoming) -> IncomingEvent {
    tokio::time::timeout(WAIT, incoming.recv())
        .await
        .expect("an event in time")
        .expect("the incoming stream goes on")
}

/// The next `n` messages, unacknowledged; a connection change fails the test.
async fn held(incoming: &mut Incoming, n: usize) -> Vec<Delivery> {
    let mut got = Vec::new();
    while got.len() < n {
        match next(incoming).await {
            IncomingEvent::Message(d) => got.push(d),
            IncomingEvent::State(s) => panic!("unexpected {s:?} after {got:?}"),
        }
    }
    got
}

fn seqs(deliveries: &[Delivery]) -> Vec<u64> {
    deliveries.iter().map(|d| d.message.seq).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_given_after_a_reconnection_keep_the_channel_open_and_nothing_shows_twice() {
    let ns = Namespace::new();
    let server = InProcessServer::start(ns.config()).await;
    let proxy = Proxy::start().await;
    let bob = ns
        .registered_with("bob", &ns.config_via(&proxy.url()))
        .await;
    let queue = Queue::open(ns.queue("client.bob")).await;
    queue.batch(1..=3).await;
    queue.one(4).await;

    let mut b_in = bob.join().await.unwrap();
    let before = held(&mut b_in, 4).await;
    assert_eq!(seqs(&before), [1, 2, 3, 4]);

    // The connection is lost with both deliveries unacknowledged: the
    // broker gives them again on the new channel, under its own tags,
    // where the client drops them as repeats and acknowledges them.
    proxy.cut();
    match next(&mut b_in).await {
        IncomingEvent::State(ConnectionState::Reconnecting { .. }) => {}
        other => panic!("expected Reconnecting, got {other:?}"),
    }
    match next(&mut b_in).await {
        IncomingEvent::State(ConnectionState::Connected) => {}
        other => panic!("expected Connected (nothing shown twice), got {other:?}"),
    }
    // Once seq 5 is shown, both repeats were handled before it.
    queue.one(5).await;
    let fresh = held(&mut b_in, 1).await;
    assert_eq!(seqs(&fresh), [5]);

    // Acknowledged late: the old channel's deliveries are gone; acking
    // their tags on the new channel would ack tags acked already.
    for d in before.into_iter().chain(fresh) {
        d.ack();
    }
    queue.one(6).await;
    let after = held(&mut b_in, 1).await;
    assert_eq!(seqs(&after), [6], "the channel is still open");
    after.into_iter().for_each(Delivery::ack);
    assert_quiet(&mut b_in, Duration::from_millis(500)).await;

    b_in.close().await;
    drop(bob);
    assert_eq!(queue.ready().await, 0, "every delivery was acknowledged");
    queue.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_does_not_acknowledge_the_first_copy_before_the_consumer_does() {
    let ns = Namespace::new();
    let server = InProcessServer::start(ns.config()).await;
    let bob = ns.registered("bob").await;
    let queue = Queue::open(ns.queue("client.bob")).await;
    // Seq 1 twice, as from a server that published it again: alone, then
    // in a batch with seq 2.
    queue.one(1).await;
    queue.batch(1..=2).await;

    let mut b_in = bob.join().await.unwrap();
    let mut shown = held(&mut b_in, 2).await;
    assert_eq!(seqs(&shown), [1, 2], "the repeat is not shown");
    // Only seq 2 is acknowledged: that releases the batch, while the lone
    // seq 1 must wait for its own acknowledgement, which never comes.
    shown.pop().unwrap().ack();
    drop(shown);
    assert_quiet(&mut b_in, Duration::from_millis(500)).await;
    b_in.close().await;
    drop(bob);

    // The broker puts the unacknowledged delivery back once bob is gone.
    let back = tokio::time::timeout(WAIT, async {
        loop {
            match queue.get().await {
                Some(d) => return d,
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await
    .expect("the lone seq 1 was left unacknowledged");
    assert_eq!(
        back.properties.kind().as_ref().unwrap().as_str(),
        TYPE_MESSAGE
    );
    assert_eq!(
        pb::ChatMessage::decode(back.data.as_slice()).unwrap().seq,
        1
    );
    assert_eq!(queue.ready().await, 0, "the batch was acknowledged");
    queue.close().await;
    server.stop().await;
}

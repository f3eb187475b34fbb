//! Adaptive batching of deliveries (`--batching`, docs/amqp.md): messages
//! that wait for one recipient together go into its queue as
//! `ChatMessageBatch` deliveries; with batching off, one `ChatMessage` each.
//! And the client shows every message of a batch, in order, and
//! acknowledges the delivery. Sends come batched too: a `send_batch`
//! request has one outcome per send.

mod common;
mod raw;

use std::time::Duration;

use chat_amqp::topology::{TYPE_MESSAGE, TYPE_MESSAGE_BATCH};
use chat_amqp::{AmqpConfig, MAX_DELIVERY_BATCH};
use chat_core::{ChatClient, ChatServer, Credentials, SendCommand, ServerConfig};
use chat_proto::v1 as pb;
use common::*;
use lapin::options::BasicGetOptions;
use lapin::{Channel, Connection, ConnectionProperties};
use prost::Message as _;

fn creds(id: &str) -> Credentials {
    Credentials::new(id, chat_testkit::secret_of(id).expose())
}

/// A data directory where alice sent bob `n` messages that no transport
/// has forwarded yet: they all wait when a server starts on it.
async fn backlog(n: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let chat = ChatServer::open(ServerConfig::new(dir.path())).unwrap();
    for name in ["alice", "bob"] {
        chat.register(&creds(name), name).await.unwrap();
    }
    let alice = chat.authenticate(&creds("alice")).unwrap();
    for i in 0..n {
        let cmd = SendCommand {
            id: chat_core::MessageId::generate(),
            from: id("alice"),
            to: id("bob"),
            text: format!("m{i}"),
        };
        chat.send(&alice, cmd).await.unwrap();
    }
    dir
}

async fn channel() -> (Connection, Channel) {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    (conn, ch)
}

/// Every delivery in `queue` once `messages` chat messages are there:
/// its `type` and the seqs it holds. The server declares the queue; until
/// it has, `basic.get` closes the channel (404) and a new one is opened.
async fn drain(conn: &Connection, queue: &str, messages: usize) -> Vec<(String, Vec<u64>)> {
    let mut out: Vec<(String, Vec<u64>)> = Vec::new();
    let mut ch = conn.create_channel().await.unwrap();
    tokio::time::timeout(WAIT, async {
        while out.iter().map(|(_, s)| s.len()).sum::<usize>() < messages {
            let got = ch
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await;
            let d = match got {
                Ok(Some(d)) => d,
                Ok(None) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    ch = conn.create_channel().await.unwrap();
                    continue;
                }
            };
            let kind = d.properties.kind().as_ref().unwrap().to_string();
            let seqs = if kind == TYPE_MESSAGE_BATCH {
                let batch = pb::ChatMessageBatch::decode(d.data.as_slice()).unwrap();
                batch.messages.iter().map(|m| m.seq).collect()
            } else {
                vec![pb::ChatMessage::decode(d.data.as_slice()).unwrap().seq]
            };
            out.push((kind, seqs));
        }
    })
    .await
    .expect("every message reached the queue");
    out
}

/// Starts a server on `dir` and returns what reaches bob's queue.
async fn forwarded(
    config: AmqpConfig,
    dir: &tempfile::TempDir,
    n: usize,
) -> Vec<(String, Vec<u64>)> {
    let config_ns = config.namespace.clone();
    let chat = ChatServer::open(ServerConfig::new(dir.path())).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(chat_amqp::run(config, chat, async {
        let _ = stopped.await;
    }));
    let (conn, _) = channel().await;
    let queue = format!("{}.client.bob", config_ns);
    let got = drain(&conn, &queue, n).await;
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    let _ = conn.close(200, "done".into()).await;
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_goes_out_in_batches_and_off_means_one_per_message() {
    let n = MAX_DELIVERY_BATCH + 36;
    let want: Vec<u64> = (1..=n as u64).collect();

    let ns = Namespace::new();
    ns.track("alice");
    ns.track("bob");
    let dir = backlog(n).await;
    let got = forwarded(ns.config(), &dir, n).await;
    let kinds: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, [TYPE_MESSAGE_BATCH, TYPE_MESSAGE_BATCH], "{got:?}");
    assert_eq!(got[0].1.len(), MAX_DELIVERY_BATCH);
    let seqs: Vec<u64> = got.iter().flat_map(|(_, s)| s.clone()).collect();
    assert_eq!(seqs, want, "every message once, in seq order");

    let ns = Namespace::new();
    ns.track("alice");
    ns.track("bob");
    let dir = backlog(n).await;
    let mut config = ns.config();
    config.batching = false;
    let got = forwarded(config, &dir, n).await;
    assert!(
        got.iter().all(|(k, s)| k == TYPE_MESSAGE && s.len() == 1),
        "{got:?}"
    );
    let seqs: Vec<u64> = got.iter().flat_map(|(_, s)| s.clone()).collect();
    assert_eq!(seqs, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_shows_each_message_of_a_batch_in_order_and_acks_it() {
    let ns = Namespace::new();
    let server = InProcessServer::start(ns.config()).await;
    let bob = ns.registered("bob").await;
    // A batch of three, then a lone message, as the server publishes them.
    let queue = inbox::Queue::open(ns.queue("client.bob")).await;
    queue.batch(1..=3).await;
    queue.one(4).await;

    let mut incoming = bob.join().await.unwrap();
    let got = recv_n(&mut incoming, 4).await;
    let shown: Vec<(u64, &str)> = got.iter().map(|m| (m.seq, m.text.as_str())).collect();
    assert_eq!(shown, [(1, "t1"), (2, "t2"), (3, "t3"), (4, "t4")]);
    incoming.close().await;
    drop(bob);

    // Both deliveries were acknowledged: nothing is left in the queue.
    assert_eq!(queue.ready().await, 0);
    queue.close().await;
    server.stop().await;
}

fn send_body(from: &str, to: &str, text: &str) -> pb::SendRequest {
    pb::SendRequest {
        id: String::new(),
        from: from.into(),
        to: to.into(),
        text: text.into(),
    }
}

/// The error code of each outcome of a `send_batch` reply (`None`:
/// accepted).
fn outcome_codes(reply: pb::Reply) -> Vec<Option<i32>> {
    let Some(pb::reply::Body::SendBatch(r)) = reply.body else {
        panic!("not a send_batch reply: {reply:?}");
    };
    r.outcomes
        .into_iter()
        .map(|o| match o.result.expect("an outcome has a result") {
            pb::send_outcome::Result::Accepted(_) => None,
            pb::send_outcome::Result::Error(e) => Some(e.code),
        })
        .collect()
}

/// A `send_batch` request (docs/amqp.md): each send is handled as a
/// `send` of its own, in order, a bad one refused without touching the
/// others; a send acting as someone else is refused; more than 1024 sends
/// are refused whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_batch_request_has_one_outcome_per_send_in_order() {
    use pb::ErrorCode as C;
    let ns = Namespace::new();
    let _server = InProcessServer::start(ns.config()).await;
    let _alice = ns.registered("alice").await;
    let bob = ns.registered("bob").await;
    let mut raw = raw::RawPeer::connect(&ns).await;

    let batch = pb::request::Body::SendBatch(pb::SendBatchRequest {
        sends: vec![
            send_body("alice", "bob", "one"),
            send_body("alice", "nobody", "lost?"),
            send_body("alice", "bob", "two"),
            send_body("alice", "bob", "   "),
            send_body("bob", "alice", "forged"),
        ],
    });
    let reply = raw.ask(&raw::request(batch), None).await;
    assert_eq!(
        outcome_codes(reply),
        [
            None,
            Some(C::NotFound as i32),
            None,
            Some(C::InvalidArgument as i32),
            Some(C::PermissionDenied as i32),
        ]
    );
    let mut incoming = bob.join().await.unwrap();
    let got = recv_n(&mut incoming, 2).await;
    let got: Vec<(u64, &str)> = got.iter().map(|m| (m.seq, m.text.as_str())).collect();
    assert_eq!(got, [(1, "one"), (2, "two")]);

    let too_many = pb::request::Body::SendBatch(pb::SendBatchRequest {
        sends: vec![send_body("alice", "bob", "x"); 1025],
    });
    let reply = raw.ask(&raw::request(too_many), None).await;
    let (code, message) = raw::error_of(&reply);
    assert_eq!(code, chat_core::ErrorCode::InvalidArgument, "{message}");
    assert!(message.contains("at most 1024 sends"), "{message}");
    chat_testkit::env::assert_no_more(&mut incoming, Duration::from_secs(1)).await;
    raw.close().await;
}

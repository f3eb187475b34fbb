//! Presence on AMQP: chat-core's registry says who is online, and follows
//! the broker's exclusive consumers: a `join` after each consume, the
//! broker's `consumer.deleted` events, and a survey of the client queues
//! whenever a server (re)connects. Real broker, real server.

mod common;
mod raw;

use chat_core::metrics::Scrape;
use chat_core::{ChatClient, ConnectionState, ErrorCode, IncomingEvent};
use chat_proto::v1 as pb;
use common::*;
use raw::RawPeer;

/// Whether `who` is listed online, as `asker` sees it.
async fn listed_online(asker: &impl ChatClient, who: &str) -> bool {
    let list = asker.list_clients().await.unwrap();
    let entry = list.iter().find(|c| c.id.as_str() == who);
    entry
        .unwrap_or_else(|| panic!("{who} is not listed: {list:?}"))
        .online
}

/// Waits until `who` is listed with `online` (the broker's news of a
/// consumer's end travels on its own queue, so it comes eventually).
async fn eventually_listed(asker: &impl ChatClient, who: &str, online: bool) {
    tokio::time::timeout(WAIT, async {
        while listed_online(asker, who).await != online {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{who} never listed with online = {online}"));
}

/// The server's `chat_clients_online` gauge.
fn online_gauge(server: &InProcessServer) -> f64 {
    let text = server.chat().metrics().encode();
    let scrape = Scrape::parse(&text).unwrap();
    scrape.value("chat_clients_online").expect("the gauge")
}

/// Waits for the stream's next `Connected` (after a reconnection).
async fn reconnected(incoming: &mut chat_core::Incoming) {
    tokio::time::timeout(WAIT, async {
        loop {
            match incoming.recv().await.expect("stream open") {
                IncomingEvent::State(ConnectionState::Connected) => return,
                IncomingEvent::State(ConnectionState::Closed { reason }) => {
                    panic!("closed: {reason}")
                }
                _ => {}
            }
        }
    })
    .await
    .expect("never reconnected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cut_off_goes_offline_and_comes_back_online_with_the_gauge() {
    let ns = Namespace::new();
    let proxy = Proxy::start().await;
    let server = InProcessServer::start(ns.config()).await;
    let alice = ns.registered("alice").await;
    let bob = ns.client_with("bob", &ns.config_via(&proxy.url())).await;
    assert_eq!(online_gauge(&server), 0.0);
    let mut b_in = bob.join().await.unwrap();
    // The join returned: listed online at once, and counted.
    assert!(listed_online(&alice, "bob").await);
    assert_eq!(online_gauge(&server), 1.0);

    // Bob's connection dies and cannot come back for now.
    proxy.refuse(true);
    proxy.cut();
    eventually_listed(&alice, "bob", false).await;
    assert_eq!(online_gauge(&server), 0.0);

    // Once back, bob joins again before his stream says Connected.
    proxy.refuse(false);
    reconnected(&mut b_in).await;
    assert!(listed_online(&alice, "bob").await);
    assert_eq!(online_gauge(&server), 1.0);
    alice.send(&id("bob"), "still here").await.unwrap();
    assert_eq!(recv_n(&mut b_in, 1).await[0].text, "still here");

    // Closing the stream takes bob offline too.
    drop(b_in);
    eventually_listed(&alice, "bob", false).await;
    assert_eq!(online_gauge(&server), 0.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_lists_who_consumes_and_who_left_meanwhile() {
    let ns = Namespace::new();
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::spawn(&ns.url, &ns.name, data.path());
    wait_healthy(&ns.config()).await;
    let alice = ns.registered("alice").await;
    let bob = ns.client("bob").await;
    let carol = ns.client("carol").await;
    let _b_in = bob.join().await.unwrap();
    let c_in = carol.join().await.unwrap();
    assert!(listed_online(&alice, "bob").await);
    assert!(listed_online(&alice, "carol").await);

    // The new server saw neither join, nor carol leave while it was down.
    server.kill9().await;
    drop(c_in);
    drop(carol);
    let restarted = ServerProcess::spawn(&ns.url, &ns.name, data.path());
    wait_healthy(&ns.config()).await;
    assert!(listed_online(&alice, "bob").await, "bob still consumes");
    eventually_listed(&alice, "carol", false).await;
    // Bob's ID is still his: nobody else gets it.
    let usurper = ns.client("bob").await;
    let e = usurper.join().await.expect_err("bob is online");
    assert_eq!(e.code(), Some(ErrorCode::AlreadyExists), "{e}");
    drop(restarted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_without_consuming_the_inbox_is_refused() {
    let ns = Namespace::new();
    let server = InProcessServer::start(ns.config()).await;
    let alice = ns.registered("alice").await;
    let mut peer = RawPeer::connect(&ns).await;
    let join = pb::request::Body::Join(pb::JoinRequest {
        client_id: "alice".into(),
    });
    let reply = peer.ask(&raw::request(join), None).await;
    let (code, message) = raw::error_of(&reply);
    assert_eq!(code, ErrorCode::InvalidArgument, "{message}");
    assert!(
        message.contains("nothing consumes its inbox")
            && message.contains(&ns.queue("client.alice")),
        "{message}"
    );
    assert!(!listed_online(&alice, "alice").await);
    assert_eq!(online_gauge(&server), 0.0);
    peer.close().await;
    server.stop().await;
}

/// The plugin's exchange lives in one vhost (`/` by default): a server on
/// another vhost meets a broker without consumer events, as one without the
/// plugin, and must refuse to start saying how to enable it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_consumer_events_refuses_to_start_and_says_why() {
    require_management().await;
    let api = chat_amqp::broker_users::Management::new(&management_url()).unwrap();
    let vhost = format!(
        "test-no-events-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    api.put_vhost(&vhost).await.unwrap();
    let broker = amqp_url();
    let uri: lapin::uri::AMQPUri = broker.parse().unwrap();
    let all = chat_amqp::broker_users::Permissions {
        configure: ".*".into(),
        write: ".*".into(),
        read: ".*".into(),
    };
    let user = &uri.authority.userinfo.username;
    api.set_permissions(&vhost, user, &all).await.unwrap();
    let (base, _) = broker.rsplit_once('/').unwrap();
    let query = broker
        .split_once('?')
        .map_or(String::new(), |(_, q)| format!("?{q}"));
    let url = format!("{base}/{vhost}{query}");
    let data = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_amqp-server"))
        .args(["--amqp-url", &url, "--namespace", "no-events"])
        .arg("--data-dir")
        .arg(data.path())
        .output();
    let out = tokio::time::timeout(WAIT, out).await;
    api.delete_vhost(&vhost).await.unwrap();
    let out = out.expect("the server gave up").unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("amq.rabbitmq.event")
            && stderr.contains("rabbitmq-plugins enable rabbitmq_event_exchange"),
        "{stderr}"
    );
}

/// A server dropped while it runs (its task aborted, as dropping an
/// in-process test server does) stops following the broker's events too:
/// one that went on would see a client queue's consumer go and declare the
/// queue again to check on it, bringing back a queue deleted since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_server_declares_nothing_more() {
    let ns = Namespace::new();
    let server = InProcessServer::start(ns.config()).await;
    let alice = ns.registered("alice").await;
    let inbox = ns.queue("client.alice");
    // Alice online through a raw consumer, which (unlike a client) does
    // nothing when its consumer goes.
    let mut peer = RawPeer::connect(&ns).await;
    let _consumer = peer.join_on(&inbox, "alice").await;
    assert!(listed_online(&alice, "alice").await);
    drop(alice);

    drop(server);
    let names = ns.config().names().unwrap();
    let alice = ["alice".to_owned()];
    chat_amqp::topology::delete(&ns.url, &names, &alice, false)
        .await
        .unwrap();
    // Room for a server that would declare the queue again.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert!(
        !queue_exists(&ns.url, &inbox).await,
        "{inbox} is back after the server was dropped"
    );
    peer.close().await;
}

//! Faults of the AMQP stack: poison messages on the server's queue, `kill
//! -9` of the real server binary while requests wait in the broker,
//! connections cut under both server and clients, a server that starts
//! before its broker is reachable, requests that wait in the broker for a
//! server, and an unreachable broker. (Chat behaviour is in the shared
//! scenarios, run by `e2e.rs`.)

mod common;
mod raw;

use std::collections::BTreeSet;
use std::time::Duration;

use chat_core::{ChatClient, ConnectionState, IncomingEvent};
use chat_proto::v1 as pb;
use common::*;
use lapin::BasicProperties;
use prost::Message as _;
use raw::RawPeer;

fn error_code(reply: &pb::Reply) -> pb::ErrorCode {
    match &reply.body {
        Some(pb::reply::Body::Error(e)) => pb::ErrorCode::try_from(e.code).unwrap(),
        other => panic!("expected an error reply, got {other:?}"),
    }
}

/// A request acting as alice, with her test secret.
fn request(body: pb::request::Body) -> Vec<u8> {
    pb::Request {
        body: Some(body),
        auth: Some(pb::Auth {
            client_id: "alice".into(),
            secret: chat_testkit::secret_of("alice").expose().into(),
        }),
    }
    .encode_to_vec()
}

/// A request with `auth` as given (`None`: no credentials at all).
fn request_with(body: pb::request::Body, auth: Option<(&str, &str)>) -> Vec<u8> {
    pb::Request {
        body: Some(body),
        auth: auth.map(|(id, secret)| pb::Auth {
            client_id: id.into(),
            secret: secret.into(),
        }),
    }
    .encode_to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_need_credentials_and_act_only_as_their_own_id() {
    let ns = Namespace::new();
    let server = InProcessServer::start(ns.config()).await;
    let alice = ns.registered("alice").await;
    let _bob = ns.registered("bob").await;
    let mut peer = RawPeer::connect(&ns).await;
    let bob_secret = chat_testkit::secret_of("bob");
    let as_bob = Some(("bob", bob_secret.expose()));
    let send = || {
        pb::request::Body::Send(pb::SendRequest {
            id: String::new(),
            from: "alice".into(),
            to: "bob".into(),
            text: "forged".into(),
        })
    };
    let history = || {
        pb::request::Body::History(pb::HistoryRequest {
            client_id: "alice".into(),
            ..Default::default()
        })
    };
    let register = || {
        pb::request::Body::Register(pb::RegisterRequest {
            client_id: "alice".into(),
        })
    };
    let cases = [
        (
            "send, no auth",
            request_with(send(), None),
            pb::ErrorCode::Unauthenticated,
        ),
        (
            "history, no auth",
            request_with(history(), None),
            pb::ErrorCode::Unauthenticated,
        ),
        (
            "register, no auth",
            request_with(register(), None),
            pb::ErrorCode::Unauthenticated,
        ),
        (
            "history, wrong secret",
            request_with(history(), Some(("alice", "guessed"))),
            pb::ErrorCode::Unauthenticated,
        ),
        (
            "register, wrong secret",
            request_with(register(), Some(("alice", "guessed"))),
            pb::ErrorCode::Unauthenticated,
        ),
        (
            "send as alice by bob",
            request_with(send(), as_bob),
            pb::ErrorCode::PermissionDenied,
        ),
        (
            "history of alice by bob",
            request_with(history(), as_bob),
            pb::ErrorCode::PermissionDenied,
        ),
        (
            "register alice by bob",
            request_with(register(), as_bob),
            pb::ErrorCode::PermissionDenied,
        ),
    ];
    for (what, body, code) in cases {
        let r = peer.ask(&body, None).await;
        assert_eq!(error_code(&r), code, "{what}: {r:?}");
    }
    // Listing acts as nobody; alice with her own secret is served.
    let r = peer
        .ask(
            &request_with(
                pb::request::Body::ListClients(pb::ListClientsRequest {}),
                None,
            ),
            None,
        )
        .await;
    assert!(
        matches!(r.body, Some(pb::reply::Body::ListClients(_))),
        "{r:?}"
    );
    assert!(alice.history().await.unwrap().is_empty(), "nothing forged");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_requests_are_answered_dead_lettered_and_never_loop() {
    let ns = Namespace::new();
    ns.track("alice");
    ns.track("bob");
    let server = InProcessServer::start(ns.config()).await;
    // The raw peer does not declare the request queue: wait for the server's.
    wait_healthy(&ns.config()).await;
    let mut peer = RawPeer::connect(&ns).await;

    // Garbage bytes, a wrong message type, a request without a body.
    let garbage = [0xff, 0xfe, 0x00, 0x13, 0x37, 0xde, 0xad];
    let r = peer.ask(&garbage, None).await;
    assert_eq!(error_code(&r), pb::ErrorCode::InvalidArgument);
    let r = peer
        .ask(
            &request(pb::request::Body::ListClients(pb::ListClientsRequest {})),
            Some("text/plain"),
        )
        .await;
    assert_eq!(error_code(&r), pb::ErrorCode::InvalidArgument);
    let r = peer
        .ask(&pb::Request::default().encode_to_vec(), None)
        .await;
    assert_eq!(error_code(&r), pb::ErrorCode::InvalidArgument);
    // Missing and invalid fields: a clear refusal, not a dead letter.
    let r = peer
        .ask(
            &request(pb::request::Body::Register(pb::RegisterRequest {
                client_id: "alice".into(),
            })),
            None,
        )
        .await;
    assert!(
        matches!(r.body, Some(pb::reply::Body::Register(_))),
        "{r:?}"
    );
    let send = |from: &str, to: &str, id: &str| {
        request(pb::request::Body::Send(pb::SendRequest {
            id: id.into(),
            from: from.into(),
            to: to.into(),
            text: "hi".into(),
        }))
    };
    let r = peer.ask(&send("", "bob", ""), None).await;
    assert_eq!(error_code(&r), pb::ErrorCode::InvalidArgument);
    let r = peer.ask(&send("not valid!", "bob", ""), None).await;
    assert_eq!(error_code(&r), pb::ErrorCode::InvalidArgument);
    let r = peer.ask(&send("alice", "bob", "not-a-uuid"), None).await;
    assert_eq!(error_code(&r), pb::ErrorCode::InvalidArgument);
    let r = peer.ask(&send("alice", "nobody", ""), None).await;
    assert_eq!(error_code(&r), pb::ErrorCode::NotFound);
    let r = peer
        .ask(
            &request(pb::request::Body::Register(pb::RegisterRequest {
                client_id: "a b".into(),
            })),
            None,
        )
        .await;
    assert_eq!(error_code(&r), pb::ErrorCode::InvalidArgument);
    // Garbage with nowhere to answer: only logged and dead-lettered.
    peer.publish(b"\x08\x96\x01 no reply_to", BasicProperties::default())
        .await;

    // The server is still serving everyone else.
    let alice = ns.registered("alice").await;
    let bob = ns.client("bob").await;
    let mut b_in = bob.join().await.unwrap();
    alice.send(&id("bob"), "after the storm").await.unwrap();
    assert_eq!(recv_n(&mut b_in, 1).await[0].text, "after the storm");

    // Nothing is left to loop on the request queue; the four undecodable
    // requests are in the dead-letter queue.
    tokio::time::timeout(WAIT, async {
        while peer.depth(&ns.queue("dead")).await < 4 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("poison requests were not dead-lettered");
    assert_eq!(peer.depth(&ns.queue("dead")).await, 4);
    assert_eq!(peer.depth(&ns.queue("server")).await, 0);
    peer.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_kill_9_and_restart_loses_nothing_and_shows_nothing_twice() {
    let ns = Namespace::new();
    let data = tempfile::tempdir().unwrap();
    let config = ns.config();
    let server = ServerProcess::spawn(&ns.url, &ns.name, data.path());
    wait_healthy(&config).await;

    let alice = ns.registered("alice").await;
    let bob = ns.client("bob").await;
    let mut b_in = bob.join().await.unwrap();
    alice.send(&id("bob"), "before").await.unwrap();
    recv_n(&mut b_in, 1).await;

    // A stream of sends while the server is killed: some are accepted
    // before the kill (logged, maybe not yet forwarded), the rest wait in
    // the broker for the next server.
    let n = 100;
    let (tx, mut accepted_rx) = tokio::sync::mpsc::unbounded_channel();
    let a = alice.clone();
    let sender = tokio::spawn(async move {
        for i in 0..n {
            let accepted = a.send(&id("bob"), &format!("m{i}")).await.unwrap();
            tx.send(accepted.id).unwrap();
        }
    });
    let mut accepted = BTreeSet::new();
    while accepted.len() < 10 {
        accepted.insert(accepted_rx.recv().await.unwrap());
    }
    server.kill9().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let restarted = ServerProcess::spawn(&ns.url, &ns.name, data.path());
    sender.await.unwrap();
    while let Some(id) = accepted_rx.recv().await {
        accepted.insert(id);
    }
    assert_eq!(accepted.len(), n);
    let got = recv_n(&mut b_in, n).await;
    let got_ids: BTreeSet<_> = got.iter().map(|m| m.id).collect();
    assert_eq!(got_ids, accepted, "every accepted message arrives");
    let seqs: Vec<_> = got.iter().map(|m| m.seq).collect();
    assert_eq!(
        seqs,
        (2..=n as u64 + 1).collect::<Vec<_>>(),
        "once each, in order"
    );
    assert_quiet(&mut b_in, Duration::from_secs(1)).await;

    // log.txt: exactly one line per accepted message.
    let log = std::fs::read_to_string(data.path().join("log.txt")).unwrap();
    assert_eq!(log.lines().count(), n + 1, "{log}");
    for id in &accepted {
        assert_eq!(log.matches(&id.to_string()).count(), 1);
    }
    drop(restarted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everyone_reconnects_after_losing_the_broker() {
    let ns = Namespace::new();
    let server_proxy = Proxy::start().await;
    let client_proxy = Proxy::start().await;
    let via = ns.config_via(&client_proxy.url());
    let server = InProcessServer::start(ns.config_via(&server_proxy.url())).await;
    let alice = ns.registered_with("alice", &via).await;
    let bob = ns.client_with("bob", &via).await;
    let mut b_in = bob.join().await.unwrap();
    alice.send(&id("bob"), "one").await.unwrap();
    assert_eq!(recv_n(&mut b_in, 1).await[0].text, "one");

    // Both sides lose their connections and cannot come back for a while.
    server_proxy.refuse(true);
    client_proxy.refuse(true);
    server_proxy.cut();
    client_proxy.cut();
    match tokio::time::timeout(WAIT, b_in.recv()).await.unwrap() {
        Some(IncomingEvent::State(ConnectionState::Reconnecting { .. })) => {}
        other => panic!("expected Reconnecting, got {other:?}"),
    }
    let a = alice.clone();
    let during = tokio::spawn(async move { a.send(&id("bob"), "two").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    server_proxy.refuse(false);
    client_proxy.refuse(false);

    during.await.unwrap().unwrap();
    alice.send(&id("bob"), "three").await.unwrap();
    let mut texts = Vec::new();
    while texts.len() < 2 {
        match tokio::time::timeout(WAIT, b_in.recv())
            .await
            .unwrap()
            .unwrap()
        {
            IncomingEvent::Message(d) => {
                texts.push(d.message.text.clone());
                d.ack();
            }
            IncomingEvent::State(s) => {
                assert!(!matches!(s, ConnectionState::Closed { .. }), "{s:?}");
            }
        }
    }
    assert_eq!(texts, ["two", "three"]);
    let list = alice.list_clients().await.unwrap();
    assert!(
        list.iter().any(|c| c.id.as_str() == "bob" && c.online),
        "{list:?}"
    );
    assert_quiet(&mut b_in, Duration::from_millis(500)).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_messages_come_back_after_a_cut_but_show_once() {
    let ns = Namespace::new();
    let proxy = Proxy::start().await;
    let server = InProcessServer::start(ns.config()).await;
    let alice = ns.registered("alice").await;
    let bob = ns.client_with("bob", &ns.config_via(&proxy.url())).await;
    let mut b_in = bob.join().await.unwrap();
    for i in 0..5 {
        alice.send(&id("bob"), &format!("m{i}")).await.unwrap();
    }
    // Take them all, acknowledge none, and lose the connection: the broker
    // redelivers all five on the next connection.
    let mut held = Vec::new();
    while held.len() < 5 {
        if let Some(IncomingEvent::Message(d)) =
            tokio::time::timeout(WAIT, b_in.recv()).await.unwrap()
        {
            held.push(d);
        }
    }
    proxy.cut();
    // Acked only now: seqs the new channel holds no delivery for, so
    // they release nothing; the redeliveries are dropped (and acked) by seq.
    for d in held {
        d.ack();
    }
    alice.send(&id("bob"), "fresh").await.unwrap();
    let got = recv_n(&mut b_in, 1).await;
    assert_eq!(got[0].text, "fresh");
    assert_eq!(got[0].seq, 6);
    assert_quiet(&mut b_in, Duration::from_millis(500)).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_waits_for_the_broker_at_start() {
    let ns = Namespace::new();
    let proxy = Proxy::start().await;
    proxy.refuse(true);
    let server = InProcessServer::start(ns.config_via(&proxy.url())).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(chat_amqp::health(&ns.config()).await.is_err());
    proxy.refuse(false);
    wait_healthy(&ns.config()).await;
    let bob = ns.client("bob").await;
    let _b_in = bob.join().await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_subcommand_reports_the_server() {
    let ns = Namespace::new();
    let health = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_amqp-server"))
            .args(["--amqp-url", &ns.url, "--namespace", &ns.name, "health"])
            .output()
            .unwrap()
    };
    let out = health();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unhealthy"));
    let server = InProcessServer::start(ns.config()).await;
    wait_healthy(&ns.config()).await;
    let out = health();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("ok:"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_id_was_taken_while_away_is_closed() {
    let ns = Namespace::new();
    let proxy = Proxy::start().await;
    let server = InProcessServer::start(ns.config()).await;
    let away = ns.client_with("bob", &ns.config_via(&proxy.url())).await;
    let mut away_in = away.join().await.unwrap();
    proxy.refuse(true);
    proxy.cut();
    // While the first bob is disconnected, another takes the ID.
    let usurper = ns.client("bob").await;
    let _u_in = tokio::time::timeout(WAIT, async {
        loop {
            match usurper.join().await {
                Ok(incoming) => break incoming,
                Err(e) => {
                    assert_eq!(e.code(), Some(chat_core::ErrorCode::AlreadyExists), "{e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
    .await
    .unwrap();
    proxy.refuse(false);
    let mut closed = false;
    while let Some(event) = tokio::time::timeout(WAIT, away_in.recv()).await.unwrap() {
        match event {
            IncomingEvent::State(ConnectionState::Closed { reason }) => {
                assert!(reason.contains("online elsewhere"), "{reason}");
                closed = true;
            }
            IncomingEvent::State(_) => {}
            IncomingEvent::Message(d) => panic!("unexpected {:?}", d.message),
        }
    }
    assert!(closed, "the stream ended without saying why");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_send_is_accepted_once() {
    let ns = Namespace::new();
    ns.track("alice");
    let server = InProcessServer::start(ns.config()).await;
    wait_healthy(&ns.config()).await;
    let bob = ns.client("bob").await;
    let mut b_in = bob.join().await.unwrap();
    let mut peer = RawPeer::connect(&ns).await;
    let register = request(pb::request::Body::Register(pb::RegisterRequest {
        client_id: "alice".into(),
    }));
    peer.ask(&register, None).await;
    let body = request(pb::request::Body::Send(pb::SendRequest {
        id: uuid::Uuid::now_v7().to_string(),
        from: "alice".into(),
        to: "bob".into(),
        text: "once".into(),
    }));
    let first = peer.ask(&body, None).await;
    let again = peer.ask(&body, None).await;
    assert!(
        matches!(first.body, Some(pb::reply::Body::Send(_))),
        "{first:?}"
    );
    assert_eq!(first, again, "same id, same answer");
    assert_eq!(recv_n(&mut b_in, 1).await[0].text, "once");
    assert_quiet(&mut b_in, Duration::from_millis(500)).await;
    peer.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_a_client_queue_is_dropped_and_the_stream_goes_on() {
    let ns = Namespace::new();
    let server = InProcessServer::start(ns.config()).await;
    let alice = ns.registered("alice").await;
    let bob = ns.client("bob").await;
    let mut b_in = bob.join().await.unwrap();
    let peer = RawPeer::connect(&ns).await;
    peer.publish_to(
        &ns.queue("client.bob"),
        b"\xff\x00 not a ChatMessage",
        BasicProperties::default(),
    )
    .await;
    alice.send(&id("bob"), "real").await.unwrap();
    assert_eq!(recv_n(&mut b_in, 1).await[0].text, "real");
    peer.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_namespace_is_refused() {
    let ns = Namespace::new();
    let (first_dir, second_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = ServerProcess::spawn(&ns.url, &ns.name, first_dir.path());
    wait_healthy(&ns.config()).await;
    let second = tokio::process::Command::new(env!("CARGO_BIN_EXE_amqp-server"))
        .args(["--amqp-url", &ns.url, "--namespace", &ns.name, "--data-dir"])
        .arg(second_dir.path())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(WAIT, second)
        .await
        .expect("the second server exits")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let expected = format!("another amqp-server already serves namespace {}", ns.name);
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(stderr.contains("use another --namespace"), "{stderr}");

    // The first one still serves, alone.
    let alice = ns.registered("alice").await;
    let bob = ns.client("bob").await;
    let mut b_in = bob.join().await.unwrap();
    alice.send(&id("bob"), "still here").await.unwrap();
    assert_eq!(recv_n(&mut b_in, 1).await[0].text, "still here");
    drop(first);
}

/// A "broker" that accepts TCP and never says a word: the server must not
/// hang at start, but time out, say what it was doing, and retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_broker_times_out_with_a_clear_message_and_is_retried() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("amqp://guest:guest@{}/%2f", listener.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket); // accepted, kept open, never answered
        }
    });
    let data = tempfile::tempdir().unwrap();
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_amqp-server"))
        .args([
            "--amqp-url",
            &url,
            "--namespace",
            &Namespace::new().name,
            "--data-dir",
        ])
        .arg(data.path())
        .env(chat_amqp::deadline::OP_TIMEOUT_ENV, "500")
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stderr.take().unwrap()).lines();
    let mut timeouts = Vec::new();
    let seen = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("timed out after 500ms") {
                timeouts.push(line);
                if timeouts.len() == 2 {
                    return;
                }
            }
        }
    })
    .await;
    assert!(seen.is_ok(), "no timeout logged twice: {timeouts:?}");
    let first = &timeouts[0];
    assert!(first.contains("WARN"), "{first}");
    assert!(
        first.contains("connecting (AMQP handshake) on the broker at amqp://guest:***@"),
        "{first}"
    );
    assert!(
        first.contains("does not answer; check `rabbitmqctl status`"),
        "{first}"
    );
    assert!(first.contains("retrying in"), "{first}");
    assert!(server.try_wait().unwrap().is_none(), "it keeps retrying");
    held.abort();
}

/// A server that served, lost the broker and finds another server in its
/// place when it comes back does not exit: it retries until the queue is
/// free, then serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_server_waits_for_the_namespace_to_be_free() {
    let ns = Namespace::new();
    let proxy = Proxy::start().await;
    let first = InProcessServer::start(ns.config_via(&proxy.url())).await;
    wait_healthy(&ns.config()).await;
    proxy.refuse(true);
    proxy.cut();
    let other_dir = tempfile::tempdir().unwrap();
    let other = ServerProcess::spawn(&ns.url, &ns.name, other_dir.path());
    wait_healthy(&ns.config()).await;
    proxy.refuse(false);
    // the first server comes back, meets the other one's exclusive consumer
    tokio::time::sleep(Duration::from_secs(3)).await;
    other.kill9().await;
    wait_healthy(&ns.config()).await; // only the first one is left to consume
    let alice = ns.registered("alice").await;
    let bob = ns.client("bob").await;
    let mut b_in = bob.join().await.unwrap();
    alice.send(&id("bob"), "back").await.unwrap();
    assert_eq!(recv_n(&mut b_in, 1).await[0].text, "back");
    first.stop().await;
}

/// A client dropped while it reconnects does nothing more on the broker,
/// even if that connection attempt succeeds afterwards: re-opening its
/// inbox would declare its queue again, bringing back a queue deleted
/// meanwhile (as a test's clean-up deletes its namespace).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_dropped_while_reconnecting_declares_nothing() {
    let ns = Namespace::new();
    let proxy = Proxy::start().await;
    let server = InProcessServer::start(ns.config()).await;
    let alice = ns.client_with("alice", &ns.config_via(&proxy.url())).await;
    let mut a_in = alice.join().await.unwrap();
    let inbox = ns.queue("client.alice");

    // Alice loses her connection; her next attempt hangs in the proxy.
    proxy.set_frozen(true);
    proxy.cut();
    match tokio::time::timeout(WAIT, a_in.recv()).await.unwrap() {
        Some(IncomingEvent::State(ConnectionState::Reconnecting { .. })) => {}
        other => panic!("expected Reconnecting, got {other:?}"),
    }
    // Past the first backoff (at most 200 ms): the attempt is under way.
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(a_in);
    drop(alice);
    chat_amqp::topology::delete(
        &ns.url,
        &ns.config().names().unwrap(),
        &["alice".into()],
        false,
    )
    .await
    .unwrap();
    assert!(!queue_exists(&ns.url, &inbox).await);

    // The attempt goes through now, for a client that is gone.
    proxy.set_frozen(false);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !queue_exists(&ns.url, &inbox).await,
        "the dropped client declared its inbox again"
    );
    server.stop().await;
}

/// A client that cannot reach the broker says so, naming where it tried
/// without the password of the URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_broker_is_reported_as_unavailable() {
    let ns = Namespace::new();
    // A port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let config = ns.config_via(&format!("amqp://guest:guest@127.0.0.1:{port}/%2f"));
    match chat_amqp::AmqpClient::connect(&config, id("alice"), chat_core::Secret::generate()).await
    {
        Err(chat_core::ClientError::Unavailable { endpoint, .. }) => {
            assert!(endpoint.contains(&port.to_string()));
            assert!(
                !endpoint.contains("guest:guest"),
                "password leaked: {endpoint}"
            );
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

/// With no server running, requests wait in the broker's `<ns>.server`
/// queue and are answered once a server starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_wait_in_the_broker_until_a_server_runs() {
    let ns = Namespace::new();
    let alice = ns.client("alice").await;
    let bob = ns.client("bob").await;
    // No server yet: the request waits in <ns>.server.
    let a = alice.clone();
    let pending_list = tokio::spawn(async move { a.list_clients().await });
    let b = bob.clone();
    let pending_join = tokio::spawn(async move { b.join().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pending_list.is_finished() && !pending_join.is_finished());

    let server = InProcessServer::start(ns.config()).await;
    let mut b_in = pending_join.await.unwrap().unwrap();
    pending_list.await.unwrap().unwrap();
    alice.register().await.unwrap();
    alice.send(&id("bob"), "late but there").await.unwrap();
    assert_eq!(recv_n(&mut b_in, 1).await[0].text, "late but there");
    server.stop().await;
}

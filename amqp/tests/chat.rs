//! The chat over a real broker, through the `ChatClient` trait: register,
//! send both ways, offline delivery, list, history, duplicate IDs and bad
//! input. Each test has its own namespace and server.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use chat_core::{ChatClient, ClientError, ErrorCode};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_chat_both_ways_concurrently() {
    let ns = Namespace::new();
    let server = InProcessServer::start(ns.config()).await;
    let alice = ns.registered("alice").await;
    let bob = ns.client("bob").await;
    let mut a_in = alice.join().await.unwrap();
    let mut b_in = bob.join().await.unwrap();

    let n = 50;
    let (a, b) = (alice.clone(), bob.clone());
    let to_bob = tokio::spawn(async move {
        for i in 0..n {
            a.send(&id("bob"), &format!("a{i}")).await.unwrap();
        }
    });
    let to_alice = tokio::spawn(async move {
        for i in 0..n {
            b.send(&id("alice"), &format!("b{i}")).await.unwrap();
        }
    });
    let at_bob = recv_n(&mut b_in, n).await;
    let at_alice = recv_n(&mut a_in, n).await;
    to_bob.await.unwrap();
    to_alice.await.unwrap();

    // Sequential sends from one sender arrive in order, gap-free by seq.
    let texts: Vec<_> = at_bob.iter().map(|m| m.text.clone()).collect();
    assert_eq!(texts, (0..n).map(|i| format!("a{i}")).collect::<Vec<_>>());
    assert!(at_bob.iter().all(|m| m.from.as_str() == "alice"));
    let seqs: Vec<_> = at_alice.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=n as u64).collect::<Vec<_>>());
    assert_quiet(&mut b_in, Duration::from_millis(500)).await;

    let history = alice.history().await.unwrap();
    assert_eq!(history.len(), n);
    assert_eq!(history[0].text, "a0");
    assert_eq!(history[n - 1].to.as_str(), "bob");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_sends_in_flight_arrive_once_each() {
    let ns = Namespace::new();
    let server = InProcessServer::start(ns.config()).await;
    let alice = ns.registered("alice").await;
    let bob = ns.client("bob").await;
    let mut b_in = bob.join().await.unwrap();

    let n = 300;
    let sends = (0..n).map(|i| {
        let a = alice.clone();
        async move { a.send(&id("bob"), &format!("m{i}")).await }
    });
    let accepted = futures::future::join_all(sends).await;
    let ids: BTreeSet<_> = accepted.into_iter().map(|r| r.unwrap().id).collect();
    assert_eq!(ids.len(), n);

    let got = recv_n(&mut b_in, n).await;
    let seqs: Vec<_> = got.iter().map(|m| m.seq).collect();
    assert_eq!(
        seqs,
        (1..=n as u64).collect::<Vec<_>>(),
        "in seq order, no gaps"
    );
    let got_ids: BTreeSet<_> = got.iter().map(|m| m.id).collect();
    assert_eq!(got_ids, ids);
    assert_quiet(&mut b_in, Duration::from_millis(500)).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_wait_for_an_offline_recipient() {
    let ns = Namespace::new();
    let server = InProcessServer::start(ns.config()).await;
    let alice = ns.registered("alice").await;
    {
        let bob = ns.client("bob").await;
        let mut b_in = bob.join().await.unwrap();
        alice.send(&id("bob"), "while online").await.unwrap();
        recv_n(&mut b_in, 1).await;
        b_in.close().await;
    }
    // bob is gone (its connection closed): list says so.
    let list = alice.list_clients().await.unwrap();
    let bob_info = list.iter().find(|c| c.id.as_str() == "bob").unwrap();
    assert!(!bob_info.online, "{list:?}");

    for i in 0..3 {
        alice
            .send(&id("bob"), &format!("offline {i}"))
            .await
            .unwrap();
    }
    let bob = ns.client("bob").await;
    let mut b_in = bob.join().await.unwrap();
    let got = recv_n(&mut b_in, 3).await;
    let texts: Vec<_> = got.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["offline 0", "offline 1", "offline 2"]);
    assert_eq!(got[0].seq, 2, "the message shown before is not shown again");
    assert_quiet(&mut b_in, Duration::from_millis(500)).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_shows_everyone_with_online_status() {
    let ns = Namespace::new();
    let server = InProcessServer::start(ns.config()).await;
    let alice = ns.registered("alice").await;
    let _a_in = alice.join().await.unwrap();
    let carol = ns.client("carol").await;
    let c_in = carol.join().await.unwrap();
    c_in.close().await;
    drop(carol);
    let list = alice.list_clients().await.unwrap();
    let seen: Vec<_> = list
        .iter()
        .map(|c| (c.id.as_str().to_owned(), c.online))
        .collect();
    assert_eq!(
        seen,
        [("alice".to_owned(), true), ("carol".to_owned(), false)]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_online_already_is_refused_and_free_once_it_leaves() {
    let ns = Namespace::new();
    let server = InProcessServer::start(ns.config()).await;
    let first = ns.client("dup").await;
    let first_in = first.join().await.unwrap();
    let second = ns.client("dup").await;
    match second.join().await {
        Err(ClientError::Rejected { code, message }) => {
            assert_eq!(code, ErrorCode::AlreadyExists);
            assert!(message.contains("online already"), "{message}");
        }
        other => panic!("expected ALREADY_EXISTS, got {other:?}"),
    }
    // The refused client can still do one-shot work.
    assert!(second.list_clients().await.is_ok());
    first_in.close().await;
    drop(first);
    let third = ns.client("dup").await;
    tokio::time::timeout(WAIT, async {
        // The broker notices the first connection closing asynchronously.
        loop {
            match third.join().await {
                Ok(_) => break,
                Err(ClientError::Rejected {
                    code: ErrorCode::AlreadyExists,
                    ..
                }) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_the_server_carries_on() {
    let ns = Namespace::new();
    let server = InProcessServer::start(ns.config()).await;
    let alice = ns.registered("alice").await;
    let bob = ns.client("bob").await;
    let mut b_in = bob.join().await.unwrap();

    let code = |r: Result<_, ClientError>| match r {
        Err(ClientError::Rejected { code, message }) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    };
    let (c, m) = code(alice.send(&id("bob"), "").await);
    assert_eq!(c, ErrorCode::InvalidArgument);
    assert!(m.contains("empty"), "{m}");
    let (c, m) = code(alice.send(&id("bob"), &"x".repeat(4097)).await);
    assert_eq!(c, ErrorCode::InvalidArgument);
    assert!(m.contains("4096"), "{m}");
    let (c, m) = code(alice.send(&id("nobody"), "hi").await);
    assert_eq!(c, ErrorCode::NotFound);
    assert!(m.contains("nobody"), "{m}");

    // Exactly at the limit is fine, and so is everything after the errors.
    alice.send(&id("bob"), &"y".repeat(4096)).await.unwrap();
    alice.send(&id("bob"), "still here").await.unwrap();
    let got = recv_n(&mut b_in, 2).await;
    assert_eq!(got[1].text, "still here");
    server.stop().await;
}

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
        Err(ClientError::Unavailable { endpoint, .. }) => {
            assert!(endpoint.contains(&port.to_string()));
            assert!(
                !endpoint.contains("guest:guest"),
                "password leaked: {endpoint}"
            );
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

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

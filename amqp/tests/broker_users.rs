//! Per-client broker users (`--broker-auth per-client`): what the *broker*
//! refuses a client's own login, on the real broker and its management API.
//!
//! Alice's broker login can do the chat and nothing else: it cannot consume,
//! purge or delete Bob's inbox, cannot publish to the default exchange or to
//! `<ns>.deliver`; the bootstrap user cannot read any inbox. The server
//! refuses a `reply_to` that is not a server-named reply queue (in both
//! modes). The namespace's users are deleted afterwards.

mod common;

use std::time::Duration;

use chat_amqp::broker_users::{self, Management};
use chat_amqp::topology::{self, Names};
use chat_amqp::{AmqpClient, BrokerAuth};
use chat_core::ChatClient;
use chat_proto::v1 as pb;
use common::{
    InProcessServer, Namespace, Proxy, WAIT, id, recv_n, require_management, wait_healthy,
};
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::FieldTable;
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Connection, ConnectionProperties, ErrorKind};
use prost::Message as _;

/// A raw connection to the test broker as `user`/`password`.
async fn login(user: &str, password: &str) -> Result<Connection, lapin::Error> {
    let mut uri: AMQPUri = common::amqp_url().parse().unwrap();
    uri.authority.userinfo.username = user.to_owned();
    uri.authority.userinfo.password = password.to_owned();
    Connection::connect_uri(uri, ConnectionProperties::default()).await
}

fn refused<T: std::fmt::Debug>(what: &str, r: Result<T, lapin::Error>) {
    match r {
        Err(e) => assert!(
            matches!(e.kind(), ErrorKind::ProtocolError(amqp)
                if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED))),
            "{what}: expected ACCESS_REFUSED, got {e}"
        ),
        Ok(v) => panic!("{what}: the broker allowed it ({v:?})"),
    }
}

/// Publishes on a fresh confirm channel of `conn`; the outcome of the
/// publish *and* its confirm (a refused publish closes the channel).
async fn publish(
    conn: &Connection,
    exchange: &str,
    key: &str,
    props: BasicProperties,
) -> Result<lapin::Confirmation, lapin::Error> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let body = b"not from the server";
    ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        body,
        props,
    )
    .await?
    .await
}

async fn consume(conn: &Connection, queue: &str) -> Result<lapin::Consumer, lapin::Error> {
    let ch = conn.create_channel().await?;
    ch.basic_consume(
        queue.into(),
        "".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await
}

fn secret(id: &str) -> String {
    chat_testkit::secret_of(id).expose().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_login_reaches_only_its_own_queue() {
    require_management().await;
    let ns = Namespace::per_client();
    let names = Names::new(&ns.name).unwrap();
    let server = InProcessServer::start(ns.config()).await;
    wait_healthy(&ns.config()).await;

    // The chat works: register (through the bootstrap user), send, receive.
    let proxy = Proxy::start().await;
    let alice = ns.client_with("alice", &ns.config_via(&proxy.url())).await;
    let mut alice_in = alice.join().await.expect("alice joins");
    let bob = ns.client("bob").await;
    let mut bob_in = bob.join().await.expect("bob joins");
    alice.send(&id("bob"), "hi bob").await.unwrap();
    assert_eq!(recv_n(&mut bob_in, 1).await[0].text, "hi bob");
    bob.send(&id("alice"), "hi alice").await.unwrap();
    assert_eq!(recv_n(&mut alice_in, 1).await[0].text, "hi alice");
    let history = alice.history().await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].text, "hi bob");

    // Reconnection after a lost connection logs in as alice again.
    proxy.cut();
    bob.send(&id("alice"), "after the cut").await.unwrap();
    assert_eq!(recv_n(&mut alice_in, 1).await[0].text, "after the cut");

    // Alice's own broker login, as any program holding her secret.
    let bob_queue = names.client_queue(&id("bob"));
    let raw = login(&names.client_user(&id("alice")), &secret("alice"))
        .await
        .expect("alice's broker user exists");
    refused("consuming bob's inbox", consume(&raw, &bob_queue).await);
    let ch = raw.create_channel().await.unwrap();
    refused(
        "basic.get on bob's inbox",
        ch.basic_get(bob_queue.as_str().into(), BasicGetOptions::default())
            .await,
    );
    let ch = raw.create_channel().await.unwrap();
    refused(
        "purging bob's inbox",
        ch.queue_purge(bob_queue.as_str().into(), QueuePurgeOptions::default())
            .await,
    );
    let ch = raw.create_channel().await.unwrap();
    refused(
        "deleting bob's inbox",
        ch.queue_delete(bob_queue.as_str().into(), QueueDeleteOptions::default())
            .await,
    );
    let ch = raw.create_channel().await.unwrap();
    refused(
        "declaring a durable queue",
        ch.queue_declare(
            format!("{}.mine", ns.name).as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await,
    );
    refused(
        "publishing to bob's inbox through the default exchange",
        publish(&raw, "", &bob_queue, BasicProperties::default()).await,
    );
    refused(
        "publishing to <ns>.deliver",
        publish(
            &raw,
            &names.deliver_exchange(),
            "bob",
            BasicProperties::default(),
        )
        .await,
    );
    // What the chat needs is allowed: its own inbox, the request exchange.
    drop(alice_in);
    drop(alice);
    let own = names.client_queue(&id("alice"));
    let mut tries = 0;
    while let Err(e) = consume(&raw, &own).await {
        // Alice's client may still hold its exclusive consumer a moment.
        tries += 1;
        assert!(tries < 100, "alice cannot consume her own inbox: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ok = publish(
        &raw,
        &names.requests_exchange(),
        &names.server_queue(),
        BasicProperties::default(),
    )
    .await;
    assert!(ok.is_ok(), "publishing a request: {ok:?}");
    let _ = raw.close(200, "done".into()).await;

    // The bootstrap user reads no inbox at all.
    let boot = login(
        &names.register_user(),
        broker_users::DEFAULT_REGISTER_PASSWORD,
    )
    .await
    .expect("the bootstrap user exists");
    refused(
        "bootstrap consuming bob's inbox",
        consume(&boot, &bob_queue).await,
    );
    refused(
        "bootstrap consuming alice's inbox",
        consume(&boot, &own).await,
    );
    refused(
        "bootstrap publishing to the default exchange",
        publish(&boot, "", &bob_queue, BasicProperties::default()).await,
    );
    let _ = boot.close(200, "done".into()).await;

    // A wrong secret is no broker login either.
    refused(
        "logging in as alice with another secret",
        login(&names.client_user(&id("alice")), "not-her-secret").await,
    );

    drop(bob_in);
    drop(bob);
    server.stop().await;

    // The namespace's users go with it.
    let api = Management::new(&common::management_url()).unwrap();
    broker_users::delete_namespace_users(&common::management_url(), &names)
        .await
        .unwrap();
    let left: Vec<String> = api
        .users()
        .await
        .unwrap()
        .into_iter()
        .filter(|u| u.starts_with(&format!("{}.", ns.name)))
        .collect();
    assert!(left.is_empty(), "users left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_broker_user_is_deleted_gets_it_back() {
    require_management().await;
    let ns = Namespace::per_client();
    let names = Names::new(&ns.name).unwrap();
    let server = InProcessServer::start(ns.config()).await;
    wait_healthy(&ns.config()).await;
    let alice = ns.client("alice").await;
    let mut alice_in = alice.join().await.expect("alice joins");
    let bob = ns.registered("bob").await;
    bob.send(&id("alice"), "before").await.unwrap();
    assert_eq!(recv_n(&mut alice_in, 1).await[0].text, "before");

    // Deleting a user closes its connections: alice's client comes back
    // as the bootstrap user, registers again and logs in as herself.
    let api = Management::new(&common::management_url()).unwrap();
    api.delete_user(&names.client_user(&id("alice")))
        .await
        .unwrap();
    bob.send(&id("alice"), "after").await.unwrap();
    let got = recv_n(&mut alice_in, 1).await;
    assert_eq!((got[0].text.as_str(), got[0].seq), ("after", 2));
    assert!(
        api.users()
            .await
            .unwrap()
            .contains(&names.client_user(&id("alice"))),
        "alice's user is back"
    );
    common::assert_quiet(&mut alice_in, Duration::from_secs(1)).await;
    drop(alice_in);
    server.stop().await;
}

/// Publishes a `send` from alice to bob with `reply_to` = bob's inbox, as
/// `conn` (through `<ns>.requests`), and checks that the server neither
/// answers into bob's inbox nor carries the request out.
async fn reply_to_an_inbox_is_refused(ns: &Namespace, conn: &Connection) {
    let names = Names::new(&ns.name).unwrap();
    let bob = ns.client("bob").await;
    let mut bob_in = bob.join().await.expect("bob joins");
    let alice = ns.registered("alice").await;
    let request = pb::Request {
        body: Some(pb::request::Body::Send(pb::SendRequest {
            id: uuid::Uuid::now_v7().to_string(),
            from: "alice".into(),
            to: "bob".into(),
            text: "answered into bob's inbox?".into(),
        })),
        auth: Some(pb::Auth {
            client_id: "alice".into(),
            secret: secret("alice"),
        }),
    };
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch.basic_publish(
        names.requests_exchange().as_str().into(),
        names.server_queue().as_str().into(),
        BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        },
        &request.encode_to_vec(),
        topology::request_properties(&names.client_queue(&id("bob")), "c1"),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    // It ends up in <ns>.dead, unanswered and not carried out.
    let dead = names.dead_queue();
    let mut waited = Duration::ZERO;
    loop {
        let q = ch
            .queue_declare(
                dead.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        if q.message_count() == 1 {
            break;
        }
        assert!(waited < WAIT, "the request never reached {dead}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += Duration::from_millis(100);
    }
    // A real message afterwards is the first (and only) one bob gets.
    alice.send(&id("bob"), "the real one").await.unwrap();
    let got = recv_n(&mut bob_in, 1).await;
    assert_eq!(got[0].text, "the real one");
    assert_eq!(got[0].seq, 1, "the refused send was not carried out");
    common::assert_quiet(&mut bob_in, Duration::from_secs(1)).await;
    assert!(alice.history().await.unwrap().len() == 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_to_naming_an_inbox_is_refused_with_per_client_users() {
    require_management().await;
    let ns = Namespace::per_client();
    let server = InProcessServer::start(ns.config()).await;
    wait_healthy(&ns.config()).await;
    let names = Names::new(&ns.name).unwrap();
    // Alice must exist as a broker user first.
    ns.registered("alice").await;
    let raw = login(&names.client_user(&id("alice")), &secret("alice"))
        .await
        .unwrap();
    reply_to_an_inbox_is_refused(&ns, &raw).await;
    let _ = raw.close(200, "done".into()).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_to_naming_an_inbox_is_refused_with_a_shared_account() {
    let ns = Namespace::new();
    let server = InProcessServer::start(ns.config()).await;
    wait_healthy(&ns.config()).await;
    let raw = Connection::connect(&ns.url, ConnectionProperties::default())
        .await
        .unwrap();
    reply_to_an_inbox_is_refused(&ns, &raw).await;
    let _ = raw.close(200, "done".into()).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_client_client_without_a_per_client_server_says_what_to_do() {
    // A namespace whose server runs with the shared account: no broker users.
    let ns = Namespace::new();
    let server = InProcessServer::start(ns.config()).await;
    wait_healthy(&ns.config()).await;
    let config = ns.config().with_broker_auth(BrokerAuth::PerClient);
    ns.track("alice");
    let e = AmqpClient::connect(&config, id("alice"), chat_testkit::secret_of("alice"))
        .await
        .expect_err("no broker user, no bootstrap user")
        .to_string();
    assert!(e.contains("--broker-auth per-client"), "{e}");
    assert!(e.contains(&format!("{}.register", ns.name)), "{e}");
    server.stop().await;
}

/// The `amqp-server` binary in per-client mode, and what it says when it
/// cannot manage users.
async fn server_start_error(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_amqp-server"))
        .args([
            "--namespace",
            &format!("test-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
        ])
        .args([
            "--amqp-url",
            &common::amqp_url(),
            "--broker-auth",
            "per-client",
        ])
        .args(args)
        .arg("--data-dir")
        .arg(dir.path())
        .env_remove("CHAT_AMQP_MANAGEMENT_URL")
        .env("CHAT_AMQP_OP_TIMEOUT_MS", "1000")
        .output();
    let out = tokio::time::timeout(WAIT, out).await.unwrap().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn a_per_client_server_without_the_management_api_refuses_to_start() {
    let e = server_start_error(&[]).await;
    assert!(e.contains("needs --management-url"), "{e}");
    let e = server_start_error(&["--management-url", "http://guest:pw@127.0.0.1:1"]).await;
    assert!(
        e.contains("rabbitmq-plugins enable rabbitmq_management"),
        "{e}"
    );
    assert!(!e.contains("pw@"), "password leaked: {e}");
    let e = server_start_error(&["--management-url", "http://nobody:wrong@127.0.0.1:15672"]).await;
    assert!(e.contains("administrator"), "{e}");
}

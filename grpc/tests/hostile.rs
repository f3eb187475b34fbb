//! Hostile but well-formed use of a gRPC server: control characters in
//! IDs, thousands of registrations on one connection, and a slow consumer
//! (a client that joins and never reads). The server must refuse what is
//! invalid, stay bounded, and keep serving everyone else. (Hostile texts
//! are a shared scenario: `hostile_texts_are_refused_or_kept_exactly`.)

use chat_core::{ChatClient, ClientId, ErrorCode};
use chat_grpc::{GrpcClient, GrpcConfig};
use chat_proto::v1 as pb;
use chat_testkit::env::{eventually, recv_n};
use chat_testkit::{InProcess, hostile};
use futures::StreamExt;
use tokio::net::TcpListener;

/// A gRPC server in this process, so the test can look at its state.
struct Server {
    url: String,
    inner: InProcess<chat_grpc::service::ServeError>,
}

impl Server {
    async fn start(max_pending: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let inner = InProcess::start(max_pending, |chat, shutdown| {
            chat_grpc::run(listener, chat, shutdown)
        });
        Self { url, inner }
    }

    async fn client(&self, raw: &str) -> GrpcClient {
        let id = ClientId::parse(raw).unwrap();
        GrpcClient::connect(
            &GrpcConfig::new(self.url.clone()),
            id,
            chat_testkit::secret_of(raw),
        )
        .await
        .unwrap()
    }

    async fn raw(&self) -> pb::chat_client::ChatClient<tonic::transport::Channel> {
        pb::chat_client::ChatClient::connect(self.url.clone())
            .await
            .unwrap()
    }

    fn held_for(&self, id: &str) -> usize {
        self.inner.held_for(id)
    }

    async fn stop(self) {
        self.inner.stop().await;
    }
}

fn id(s: &str) -> ClientId {
    ClientId::parse(s).unwrap()
}

/// `message` as a request that authenticates as `id` with its test secret.
fn as_client<T>(id: &str, message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert("x-chat-id", id.parse().unwrap());
    let secret = chat_testkit::secret_of(id);
    r.metadata_mut()
        .insert("x-chat-secret", secret.expose().parse().unwrap());
    r
}

/// Bob online and Alice sending to him: the whole service still works.
async fn assert_still_serving(server: &Server, text: &str) {
    let (alice, bob) = (server.client("alice").await, server.client("bob").await);
    hostile::assert_still_serving(&alice, &bob, text).await;
}

/// Control characters in an ID are refused wherever an ID is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_in_ids_are_refused() {
    let server = Server::start(chat_core::limits::DEFAULT_MAX_PENDING).await;
    let mut rpc = server.raw().await;
    rpc.register(as_client(
        "bob",
        pb::RegisterRequest {
            client_id: "bob".into(),
        },
    ))
    .await
    .unwrap();
    for bad in hostile::IDS_WITH_CONTROLS {
        let check = |s: tonic::Status| {
            assert_eq!(s.code(), tonic::Code::InvalidArgument, "{bad:?}: {s:?}");
            assert!(s.message().contains("invalid client ID"), "{s:?}");
        };
        check(
            rpc.register(as_client(
                "bob",
                pb::RegisterRequest {
                    client_id: bad.into(),
                },
            ))
            .await
            .expect_err(bad),
        );
        check(
            rpc.subscribe(as_client(
                "bob",
                pb::SubscribeRequest {
                    client_id: bad.into(),
                    after_seq: 0,
                },
            ))
            .await
            .expect_err(bad),
        );
        check(
            rpc.history(as_client(
                "bob",
                pb::HistoryRequest {
                    client_id: bad.into(),
                    ..Default::default()
                },
            ))
            .await
            .expect_err(bad),
        );
        for (from, to) in [(bad, "bob"), ("bob", bad)] {
            let send = pb::SendRequest {
                id: String::new(),
                from: from.into(),
                to: to.into(),
                text: "hi".into(),
            };
            check(rpc.send(as_client("bob", send)).await.expect_err(bad));
        }
    }
    let listed = rpc
        .list_clients(pb::ListClientsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.clients.len(), 1, "only bob: {listed:?}");
    assert_still_serving(&server, "ids with controls changed nothing").await;
    server.stop().await;
}

/// 3000 registrations over one connection, 64 at a time: all are created,
/// `list` shows them all, and normal clients are still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_registrations_on_one_connection() {
    let server = Server::start(chat_core::limits::DEFAULT_MAX_PENDING).await;
    let rpc = server.raw().await;
    let created: Vec<bool> = futures::stream::iter(0..hostile::THOUSANDS)
        .map(|i| {
            let mut rpc = rpc.clone();
            async move {
                let user = hostile::user_id(i);
                rpc.register(as_client(
                    &user,
                    pb::RegisterRequest {
                        client_id: user.clone(),
                    },
                ))
                .await
                .unwrap()
                .into_inner()
                .created
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    assert_eq!(created.len(), hostile::THOUSANDS);
    assert!(created.iter().all(|&c| c), "every ID was new");

    assert_still_serving(&server, "one among thousands").await;
    hostile::assert_lists_the_thousands(&server.client("alice").await).await;
    server.stop().await;
}

/// A client that joins and never reads while Alice sends it far more than
/// `--max-pending`: the server keeps at most `max_pending` messages for it
/// (the rest are refused with RESOURCE_EXHAUSTED), other clients go on
/// chatting, and once the slow one reads it gets every accepted message,
/// in order, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_bounded_and_stalls_nobody() {
    const MAX_PENDING: usize = 100;
    const N: usize = 250;
    let server = Server::start(MAX_PENDING).await;
    let slow = server.client("slow").await;
    let mut slow_in = slow.join().await.unwrap();
    let alice = server.client("alice").await;
    alice.register().await.unwrap();

    let mut accepted = Vec::new();
    let mut refused = 0;
    for i in 0..N {
        match alice.send(&id("slow"), &format!("s{i}")).await {
            Ok(a) => accepted.push(a.id),
            Err(e) => {
                assert_eq!(e.code(), Some(ErrorCode::ResourceExhausted), "{e}");
                assert!(
                    e.to_string()
                        .contains("\"slow\" has 100 messages it has not read yet"),
                    "{e}"
                );
                refused += 1;
            }
        }
    }
    assert_eq!(accepted.len(), MAX_PENDING, "the mailbox bound");
    assert_eq!(refused, N - MAX_PENDING);
    assert_eq!(server.held_for("slow"), MAX_PENDING);

    // Nobody else is stalled: two others chat while slow's mailbox is full.
    let (carol, dave) = (server.client("carol").await, server.client("dave").await);
    let (_carol_in, mut dave_in) = hostile::others_still_chat(&carol, &dave).await;
    alice
        .send(&id("dave"), "alice is not stalled")
        .await
        .unwrap();
    assert_eq!(
        recv_n(&mut dave_in, 1).await[0].text,
        "alice is not stalled"
    );

    let got = hostile::slow_one_gets_all_once(&mut slow_in, &accepted).await;
    assert!(got.windows(2).all(|w| w[0].seq + 1 == w[1].seq), "no gaps");
    eventually("slow's acks free its mailbox", || async {
        server.held_for("slow") == 0
    })
    .await;
    alice.send(&id("slow"), "room again").await.unwrap();
    assert_eq!(recv_n(&mut slow_in, 1).await[0].text, "room again");
    slow_in.close().await;
    server.stop().await;
}

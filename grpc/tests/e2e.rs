//! The shared end-to-end scenarios (chat-testkit) against the gRPC stack,
//! plus what only gRPC has: raw-RPC validation and credentials, a retried
//! raw send, health, reflection, an unreachable server's retries. (Bytes
//! that are not HTTP/2 are in `malformed.rs`.)

use chat_core::ChatClient as _;
use chat_proto::v1 as pb;
use chat_testkit::Env;

mod common;

use common::Grpc;

chat_testkit::chat_scenarios!(Grpc);

async fn raw(env: &Env<Grpc>) -> pb::chat_client::ChatClient<tonic::transport::Channel> {
    pb::chat_client::ChatClient::connect(env.stack.url())
        .await
        .expect("raw gRPC connect")
}

/// `message` as a request that authenticates as `id` with its test secret.
fn as_client<T>(id: &str, message: T) -> tonic::Request<T> {
    with_creds(id, chat_testkit::secret_of(id).expose(), message)
}

fn with_creds<T>(id: &str, secret: &str, message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert("x-chat-id", id.parse().unwrap());
    r.metadata_mut()
        .insert("x-chat-secret", secret.parse().unwrap());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_requests_with_invalid_ids_are_refused() {
    let env = Env::<Grpc>::start().await;
    let mut rpc = raw(&env).await;
    for bad in ["", "has space", "x".repeat(33).as_str(), "ünicode", "a/b"] {
        let s = rpc
            .register(as_client(
                "alice",
                pb::RegisterRequest {
                    client_id: bad.into(),
                },
            ))
            .await
            .expect_err(bad);
        assert_eq!(s.code(), tonic::Code::InvalidArgument, "{bad:?}");
        assert!(s.message().contains("invalid client ID"), "{}", s.message());
    }
    let s = rpc
        .subscribe(as_client(
            "alice",
            pb::SubscribeRequest {
                client_id: "no good".into(),
                after_seq: 0,
            },
        ))
        .await
        .expect_err("subscribe");
    assert_eq!(s.code(), tonic::Code::InvalidArgument);

    for client_id in ["alice", "bob"] {
        rpc.register(as_client(
            client_id,
            pb::RegisterRequest {
                client_id: client_id.into(),
            },
        ))
        .await
        .unwrap();
    }
    let send = |id: &str, from: &str| pb::SendRequest {
        id: id.into(),
        from: from.into(),
        to: "bob".into(),
        text: "hi".into(),
    };
    let s = rpc
        .send(as_client("alice", send("", "bad sender")))
        .await
        .expect_err("sender");
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    let s = rpc
        .send(as_client("alice", send("not-a-uuid", "alice")))
        .await
        .expect_err("message id");
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    assert!(s.message().contains("UUID"), "{}", s.message());
    assert_eq!(env.log_txt(), "", "nothing refused is logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_send_is_accepted_once() {
    let env = Env::<Grpc>::start().await;
    let mut rpc = raw(&env).await;
    for client_id in ["alice", "bob"] {
        rpc.register(as_client(
            client_id,
            pb::RegisterRequest {
                client_id: client_id.into(),
            },
        ))
        .await
        .unwrap();
    }
    let request = pb::SendRequest {
        id: chat_core::MessageId::generate().to_string(),
        from: "alice".into(),
        to: "bob".into(),
        text: "once".into(),
    };
    let first = rpc
        .send(as_client("alice", request.clone()))
        .await
        .unwrap()
        .into_inner();
    let second = rpc
        .send(as_client("alice", request.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, second);
    assert_eq!(first.id, request.id);
    assert_eq!(env.log_txt().lines().count(), 1);
    let (_bob, mut incoming) = env.online("bob").await;
    assert_eq!(
        chat_testkit::env::recv_n(&mut incoming, 1).await[0].text,
        "once"
    );
    chat_testkit::env::assert_no_more(&mut incoming, std::time::Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_rpcs_need_credentials_and_act_only_as_their_own_id() {
    use tonic::Code;
    let env = Env::<Grpc>::start().await;
    let (_alice, _alice_in) = env.online("alice").await;
    let bob = env.client("bob").await;
    bob.register().await.unwrap();
    let mut rpc = raw(&env).await;
    let history = |id: &str| pb::HistoryRequest {
        client_id: id.into(),
        ..Default::default()
    };

    // No metadata, an empty secret, a wrong one: UNAUTHENTICATED.
    let s = rpc.history(history("alice")).await.unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    let s = rpc
        .history(with_creds("alice", "", history("alice")))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    let s = rpc
        .history(with_creds("alice", "guessed", history("alice")))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    assert!(s.message().contains("claimed by another secret"), "{s:?}");
    let s = rpc
        .register(with_creds(
            "alice",
            "guessed",
            pb::RegisterRequest {
                client_id: "alice".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");

    // Bob, properly authenticated, acting as alice: PERMISSION_DENIED.
    let s = rpc
        .send(as_client(
            "bob",
            pb::SendRequest {
                id: String::new(),
                from: "alice".into(),
                to: "bob".into(),
                text: "forged".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    let s = rpc
        .history(as_client("bob", history("alice")))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    let s = rpc
        .ack(as_client(
            "bob",
            pb::AckRequest {
                client_id: "alice".into(),
                up_to_seq: 1,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    let s = rpc
        .subscribe(as_client(
            "bob",
            pb::SubscribeRequest {
                client_id: "alice".into(),
                after_seq: 0,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    let s = rpc
        .register(as_client(
            "bob",
            pb::RegisterRequest {
                client_id: "alice".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    assert_eq!(env.log_txt(), "", "nothing forged was logged");

    // Listing is not acting as anyone: no credentials needed.
    let list = rpc.list_clients(pb::ListClientsRequest {}).await.unwrap();
    assert_eq!(list.into_inner().clients.len(), 2);
    // Bob with his own secret is served.
    let own = rpc.history(as_client("bob", history("bob"))).await.unwrap();
    assert!(own.into_inner().messages.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_subcommand_and_reflection() {
    let env = Env::<Grpc>::start().await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_grpc-server"))
        .args(["health", "--url", &env.stack.url()])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_grpc-server"))
        .args(["health", "--timeout", "2", "--url", &dead_url])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("unhealthy: cannot reach"));

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_request::MessageRequest,
        server_reflection_response::MessageResponse,
    };
    let channel = tonic::transport::Endpoint::from_shared(env.stack.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection reply");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"chat.v1.Chat"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_gets_a_clear_error_after_retrying() {
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let state = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_grpc-client"))
        .env("XDG_STATE_HOME", state.path())
        .args([
            "--server",
            &url,
            "--id",
            "alice",
            "--connect-timeout",
            "2",
            "list",
        ])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("retrying in"), "it retries first: {stderr}");
    let last = stderr.trim().lines().last().unwrap();
    assert!(last.starts_with("error: cannot reach"), "{stderr}");
}

/// `SendBatch` handles each send as a `Send` of its own, in order: one
/// outcome per send, a bad one refused without touching the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_batch_has_one_outcome_per_send_in_order() {
    let env = Env::<Grpc>::start().await;
    let mut rpc = raw(&env).await;
    for client_id in ["alice", "bob"] {
        let register = pb::RegisterRequest {
            client_id: client_id.into(),
        };
        rpc.register(as_client(client_id, register)).await.unwrap();
    }
    let send = |to: &str, text: &str| pb::SendRequest {
        id: String::new(),
        from: "alice".into(),
        to: to.into(),
        text: text.into(),
    };
    let batch = pb::SendBatchRequest {
        sends: vec![
            send("bob", "one"),
            send("nobody", "lost?"),
            send("bob", "two"),
            send("bob", "   "),
        ],
    };
    let reply = rpc
        .send_batch(as_client("alice", batch))
        .await
        .unwrap()
        .into_inner();
    let codes: Vec<Option<i32>> = reply
        .outcomes
        .iter()
        .map(|o| match o.result.as_ref().unwrap() {
            pb::send_outcome::Result::Accepted(_) => None,
            pb::send_outcome::Result::Error(e) => Some(e.code),
        })
        .collect();
    use pb::ErrorCode as C;
    assert_eq!(
        codes,
        [
            None,
            Some(C::NotFound as i32),
            None,
            Some(C::InvalidArgument as i32)
        ]
    );
    let (_bob, mut incoming) = env.online("bob").await;
    let got = chat_testkit::env::recv_n(&mut incoming, 2).await;
    let got: Vec<(u64, &str)> = got.iter().map(|m| (m.seq, m.text.as_str())).collect();
    assert_eq!(got, [(1, "one"), (2, "two")]);

    // A batch can only act as its caller.
    let forged = pb::SendBatchRequest {
        sends: vec![send("bob", "forged")],
    };
    let reply = rpc.send_batch(as_client("bob", forged)).await.unwrap();
    let e = match reply.into_inner().outcomes[0].result.clone().unwrap() {
        pb::send_outcome::Result::Error(e) => e,
        other => panic!("accepted a send as another ID: {other:?}"),
    };
    assert_eq!(e.code, C::PermissionDenied as i32);
}

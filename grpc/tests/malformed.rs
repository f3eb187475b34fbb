//! Malformed input at a real `grpc-server`: bytes that are not HTTP/2 at
//! the port, and well-framed gRPC requests whose protobuf body is broken.
//! Afterwards a normal client still registers, sends and receives.

mod common;

use chat_proto::v1 as pb;
use chat_testkit::Env;
use common::{Grpc, raw_streaming, raw_unary};
use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The HTTP/2 connection preface every client starts with (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Writes `bytes` to a fresh connection, half-closes it and reads what the
/// server answers until it closes its side. Returns the answer.
async fn throw(env: &Env<Grpc>, bytes: &[u8]) -> Vec<u8> {
    let mut s = tokio::net::TcpStream::connect(env.stack.addr())
        .await
        .unwrap();
    let _ = s.write_all(bytes).await;
    let _ = s.shutdown().await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(chat_testkit::PATIENCE, s.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok(),
        "the server kept a connection open after {:?}",
        String::from_utf8_lossy(&bytes[..bytes.len().min(40)])
    );
    answer
}

/// A normal client still gets the whole service.
async fn assert_still_serving(env: &Env<Grpc>, text: &str) {
    let (alice, bob) = (env.client("alice").await, env.client("bob").await);
    chat_testkit::hostile::assert_still_serving(&alice, &bob, text).await;
    let stderr = env.server.as_ref().unwrap().stderr();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_are_not_http2_are_dropped_and_the_server_carries_on() {
    let env = Env::<Grpc>::start().await;
    let mut random = Vec::with_capacity(8192);
    let mut x: u32 = 0x9e37_79b9;
    for _ in 0..8192 {
        // xorshift: the same "random" bytes on every run.
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        random.push(x as u8);
    }
    // A CONTINUATION frame with every flag set, on stream 2^31 - 1, with
    // nothing before it to continue.
    let broken_frame = [PREFACE, b"\x00\x00\x04\x09\xff\xff\xff\xff\xff"].concat();
    let http1 = b"POST /chat.v1.Chat/Register HTTP/1.1\r\nHost: x\r\nContent-Type: application/grpc\r\nContent-Length: 3\r\n\r\n\x0a\x01a";
    for (what, bytes) in [
        ("random bytes", &random[..]),
        ("an HTTP/1.1 request", &http1[..]),
        ("a truncated preface", &PREFACE[..10]),
        ("the preface alone", PREFACE),
        ("the preface and a broken frame", &broken_frame[..]),
        ("an HTTP/1.1 GET", &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..]),
        ("nothing at all", &[][..]),
    ] {
        let answer = throw(&env, bytes).await;
        // Whatever it says (an HTTP/2 GOAWAY, or nothing), it is not a
        // reply to a request.
        assert!(
            !answer.starts_with(b"HTTP/1.1 2"),
            "{what}: {:?}",
            String::from_utf8_lossy(&answer)
        );
    }
    assert_still_serving(&env, "still serving after garbage").await;
}

/// Request bodies that are not valid protobuf, in well-formed gRPC frames:
/// tonic decodes them before the service runs, and the chat's codec
/// (chat_proto::codec) answers INVALID_ARGUMENT rather than INTERNAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_protobuf_bodies_are_invalid_argument() {
    let env = Env::<Grpc>::start().await;
    let send = pb::SendRequest {
        id: chat_core::MessageId::generate().to_string(),
        from: "alice".into(),
        to: "bob".into(),
        text: "a text long enough to cut".into(),
    }
    .encode_to_vec();
    let cases: [(&str, Vec<u8>); 6] = [
        ("Register", vec![0xff; 16]),
        // client_id (field 1) whose bytes are not UTF-8.
        ("Register", vec![0x0a, 0x02, 0xff, 0xfe]),
        // text (field 4) that is not UTF-8: invalid UTF-8 never reaches the chat.
        ("Send", vec![0x22, 0x03, b'a', 0xc3, 0x28]),
        ("Send", send[..send.len() - 3].to_vec()),
        // A length that runs past the end of the body.
        ("History", vec![0x0a, 0x7f, b'a']),
        ("ListClients", vec![0x0b]),
    ];
    for (method, body) in cases {
        let status = raw_unary(&env, method, body.clone())
            .await
            .expect_err(method);
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{method} {body:?}: {status:?}"
        );
        assert!(
            status.message().starts_with("malformed protobuf message"),
            "{status:?}"
        );
    }
    // Over tonic's default 4 MiB per message: refused before decoding.
    let status = raw_unary(&env, "Send", vec![0; 5 << 20])
        .await
        .expect_err("too large");
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    assert!(
        status.message().contains("message length too large"),
        "{status:?}"
    );
    let status = raw_streaming(&env, "Subscribe", vec![0x0a, 0x01, 0xff])
        .await
        .expect_err("subscribe");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

    // Well-formed protobuf is up to the service: an empty body is a
    // request with default fields, refused by the chat's own validation.
    let status = raw_unary(&env, "Register", Vec::new())
        .await
        .expect_err("empty client ID");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("invalid client ID"), "{status:?}");
    // Unknown fields are skipped, as protobuf requires.
    let mut body = pb::RegisterRequest {
        client_id: "carol".into(),
    }
    .encode_to_vec();
    body.extend([0xf8, 0x07, 0x01]); // field 127, varint 1
    let reply = raw_unary(&env, "Register", body).await.expect("register");
    assert_eq!(
        pb::RegisterReply::decode(&reply[..]).unwrap().client_id,
        "carol"
    );

    assert_eq!(env.log_txt(), "", "nothing malformed was logged");
    assert_still_serving(&env, "still serving after bad bodies").await;
}

//! Texts, requests and servers on disk for the in-process benches.
//!
//! Data directories go under the directory the bench names (cargo's
//! `CARGO_TARGET_TMPDIR`, on the same disk as the build) rather than the
//! system temp dir, which may be a tmpfs where `fsync` costs nothing and
//! the `fsync` figures would lie.
//!
//! State is built through the server's own API, many requests at a time,
//! so that the journal's group commit makes even 100 000 registrations or
//! messages a matter of a second or two.

use std::path::Path;

use chat_core::journal::Durability;
use chat_core::{ChatServer, Credentials, Principal, ServerConfig};
use chat_proto::v1 as pb;
use futures::future::try_join_all;

/// Requests in flight at once while building state: the journal writer
/// takes up to 1024 per batch.
const SETUP_CONCURRENCY: usize = 1024;

/// A printable ASCII text of exactly `len` bytes (no escapes in log.txt, so
/// the log line is as long as the text plus a fixed prefix).
pub fn text(len: usize) -> String {
    const ALPHABET: &[u8] = b"the quick brown fox jumps over the lazy dog 0123456789 ";
    (0..len)
        .map(|i| char::from(ALPHABET[i % ALPHABET.len()]))
        .collect()
}

/// A human label for a byte size: `64B`, `1KiB`, `64KiB`.
pub fn size_label(bytes: usize) -> String {
    if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{}KiB", bytes / 1024)
    } else {
        format!("{bytes}B")
    }
}

/// A human label for a count: `10`, `1k`, `100k`.
pub fn count_label(n: usize) -> String {
    if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

/// The `n`-th synthetic client ID (`c0`, `c1`, ...).
pub fn client_name(n: usize) -> String {
    format!("c{n}")
}

/// The credentials of bench client `id` (a fixed secret per ID).
pub fn creds(id: &str) -> Credentials {
    Credentials::new(id, format!("bench-secret-of-{id}"))
}

/// Authenticates `id` as an adapter does for each request.
pub fn principal(server: &ChatServer, id: &str) -> Principal {
    server
        .authenticate(&creds(id))
        .expect("bench client registered")
}

/// A send request with a server-assigned message ID.
pub fn send_request(from: &str, to: &str, text: &str) -> pb::SendRequest {
    pb::SendRequest {
        id: String::new(),
        from: from.to_owned(),
        to: to.to_owned(),
        text: text.to_owned(),
    }
}

/// A send as an adapter hands it to the server (parsed at the edge), with
/// a server-assigned message ID.
pub fn send_command(from: &str, to: &str, text: &str) -> chat_core::SendCommand {
    chat_core::SendCommand {
        id: chat_core::MessageId::generate(),
        from: chat_core::ClientId::parse(from).expect("valid bench ID"),
        to: chat_core::ClientId::parse(to).expect("valid bench ID"),
        text: text.to_owned(),
    }
}

/// A chat message as the server pushes it, with a `len`-byte text.
pub fn chat_message(len: usize) -> pb::ChatMessage {
    pb::ChatMessage {
        id: chat_core::MessageId::generate().to_string(),
        from: "alice".into(),
        to: "bob".into(),
        text: text(len),
        timestamp_ms: 1_795_772_199_123,
        seq: 123_456,
    }
}

/// The AMQP envelope of a send, with a `len`-byte text.
pub fn send_envelope(len: usize) -> pb::Request {
    let mut send = send_request("alice", "bob", &text(len));
    send.id = chat_core::MessageId::generate().to_string();
    let creds = creds("alice");
    pb::Request {
        body: Some(pb::request::Body::Send(send)),
        auth: Some(pb::Auth {
            client_id: creds.client_id,
            secret: creds.secret,
        }),
    }
}

/// Opens a server on `dir` with the given durability. Texts up to 64 KiB
/// and an unbounded mailbox, so that long benches never hit a limit that is
/// not what they measure.
pub fn open_server(dir: &Path, durability: Durability) -> ChatServer {
    let mut config = ServerConfig::new(dir);
    config.durability = durability;
    config.limits.max_text_bytes = 64 * 1024;
    config.limits.max_pending = usize::MAX;
    ChatServer::open(config).expect("cannot open the bench server's data directory")
}

/// Registers `c0..c{n}` (many at a time).
pub async fn register_clients(server: &ChatServer, n: usize) {
    let names: Vec<String> = (0..n).map(client_name).collect();
    for chunk in names.chunks(SETUP_CONCURRENCY) {
        try_join_all(
            chunk
                .iter()
                .map(|id| async move { server.register(&creds(id), id).await }),
        )
        .await
        .expect("setup registration refused");
    }
}

/// Sends `n` messages of `text_len` bytes from `from` to `to` (many at a
/// time); both must be registered.
pub async fn send_messages(server: &ChatServer, from: &str, to: &str, n: usize, text_len: usize) {
    let body = text(text_len);
    let from_p = principal(server, from);
    let mut left = n;
    while left > 0 {
        let now = left.min(SETUP_CONCURRENCY);
        try_join_all((0..now).map(|_| server.send(&from_p, send_command(from, to, &body))))
            .await
            .expect("setup send refused");
        left -= now;
    }
}

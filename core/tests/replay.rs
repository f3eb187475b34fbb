//! Property tests of replay: `journal::replay` and `ChatServer::open` over
//! arbitrary and damaged data directories. Either replay succeeds (the one
//! documented repair: a torn last line is dropped and cut off the file) or
//! it fails with an error that names the file and the line; it never
//! panics, and a directory that opened once opens again to the same state.
//!
//! Each case touches real files, so the case counts are lower than for the
//! pure parsers; `PROPTEST_CASES` raises them.

use std::path::Path;

use chat_core::journal::{self, LOG_FILE, STATE_FILE};
use chat_core::log_line::write_line;
use chat_core::proptest_config;
use chat_core::{ChatServer, ClientId, Message, MessageId, ServerConfig};
use proptest::prelude::*;

fn client_id() -> impl Strategy<Value = ClientId> {
    // Few distinct IDs, so that messages, registrations and acks meet.
    prop::sample::select(vec!["alice", "bob", "carol", "d-1", "E_2"])
        .prop_map(|s| ClientId::parse(s).unwrap())
}

fn message() -> impl Strategy<Value = Message> {
    (
        any::<u128>(),
        client_id(),
        client_id(),
        prop_oneof![any::<String>(), "[a-z \\\\\n\r\t\u{0}]{0,20}"],
        1_700_000_000_000i64..1_900_000_000_000,
    )
        .prop_map(|(id, from, to, text, timestamp_ms)| Message {
            id: MessageId(uuid::Uuid::from_u128(id)),
            from,
            to,
            text,
            timestamp_ms,
            seq: 0,
        })
}

fn log_text(messages: &[Message]) -> String {
    let mut out = String::new();
    for m in messages {
        write_line(&mut out, m);
    }
    out
}

/// Valid `state.journal` lines: registrations and acks.
fn state_line() -> impl Strategy<Value = String> {
    prop_oneof![
        (any::<i64>(), client_id()).prop_map(|(ts, id)| format!("register {ts} {id}\n")),
        (client_id(), any::<u64>()).prop_map(|(id, seq)| format!("ack {id} {seq}\n")),
    ]
}

/// One byte changed, removed or inserted somewhere in `bytes`.
fn damage(mut bytes: Vec<u8>, at: prop::sample::Index, byte: u8, how: u8) -> Vec<u8> {
    let i = at.index(bytes.len() + 1);
    match how {
        0 if i < bytes.len() => bytes[i] = byte,
        1 if i < bytes.len() => {
            bytes.remove(i);
        }
        _ => bytes.insert(i, byte),
    }
    bytes
}

/// The error names one of the two files and a line number.
fn assert_names_file_and_line(e: &chat_core::ChatError) {
    let text = e.to_string();
    assert!(
        (text.contains(LOG_FILE) || text.contains(STATE_FILE)) && text.contains("line "),
        "error does not say where: {text}"
    );
}

/// Everything a client can observe of a server's state.
fn observable(server: &ChatServer) -> Vec<String> {
    let mut seen = Vec::new();
    // Histories need each client's secret (a random journal has hashes
    // nobody knows); what they are built from is the files, compared
    // byte for byte below, plus the registry and the mailboxes.
    for c in server.list() {
        seen.push(format!("{} {}", c.id, c.online));
    }
    for file in [LOG_FILE, STATE_FILE] {
        let bytes = std::fs::read(server.data_dir().join(file)).unwrap_or_default();
        seen.push(format!("{file}: {}", String::from_utf8_lossy(&bytes)));
    }
    let undelivered: Vec<_> = server.undelivered().iter().map(|m| (m.id, m.seq)).collect();
    seen.push(format!("{undelivered:?}"));
    seen
}

/// Opens `dir` twice: the outcome is an error that says where, or the same
/// state both times (the first open's repairs leave nothing to repair).
fn open_twice(dir: &Path) {
    match ChatServer::open(ServerConfig::new(dir)) {
        Err(e) => assert_names_file_and_line(&e),
        Ok(server) => {
            let first = observable(&server);
            drop(server);
            let server = ChatServer::open(ServerConfig::new(dir)).expect("reopens");
            assert_eq!(observable(&server), first);
        }
    }
}

proptest! {
    #![proptest_config(proptest_config(64))]

    #[test]
    fn replay_of_arbitrary_bytes_never_panics(
        log in prop::collection::vec(any::<u8>(), 0..600),
        state in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOG_FILE), &log).unwrap();
        std::fs::write(dir.path().join(STATE_FILE), &state).unwrap();
        match journal::replay(dir.path()) {
            Err(e) => assert_names_file_and_line(&e),
            Ok(_) => {
                // Whatever was torn off the end is gone from the files.
                for file in [LOG_FILE, STATE_FILE] {
                    let bytes = std::fs::read(dir.path().join(file)).unwrap();
                    prop_assert!(bytes.is_empty() || bytes.ends_with(b"\n"));
                }
                prop_assert!(journal::replay(dir.path()).is_ok());
            }
        }
    }

    /// The documented repair: a torn last line (no newline) is dropped and
    /// cut off the file; every complete line is replayed.
    #[test]
    fn a_torn_last_line_is_dropped_and_cut_off(
        messages in prop::collection::vec(message(), 0..20),
        torn in prop::collection::vec(any::<u8>().prop_filter("no newline", |b| *b != b'\n'), 1..80),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let complete = log_text(&messages);
        let mut bytes = complete.clone().into_bytes();
        bytes.extend(&torn);
        std::fs::write(dir.path().join(LOG_FILE), &bytes).unwrap();
        let replay = journal::replay(dir.path()).expect("replays");
        prop_assert_eq!(replay.messages, messages);
        prop_assert_eq!(std::fs::read_to_string(dir.path().join(LOG_FILE)).unwrap(), complete);
    }

    /// A bad complete line is never skipped silently: replay stops there
    /// and names the file and the line number.
    #[test]
    fn a_bad_line_is_named_by_file_and_number(
        messages in prop::collection::vec(message(), 1..20),
        at in any::<prop::sample::Index>(),
        bad in prop_oneof![
            "[^\n]{0,60}".prop_filter("not a log line", |s| !s.contains(" -> ")),
            prop::collection::vec(any::<u8>(), 1..40).prop_map(|mut b| {
                // Not UTF-8 whatever the rest is: a lone continuation byte.
                b.retain(|&x| x != b'\n');
                b.insert(0, 0x80);
                String::from_utf8_lossy(&b).into_owned() + "\u{0}\u{80}"
            }),
        ],
        raw_invalid_utf8 in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let k = at.index(messages.len() + 1);
        let mut bytes = log_text(&messages[..k]).into_bytes();
        if raw_invalid_utf8 {
            bytes.extend(b"\xff\xfe not utf-8");
        } else {
            bytes.extend(bad.as_bytes());
        }
        bytes.push(b'\n');
        bytes.extend(log_text(&messages[k..]).into_bytes());
        std::fs::write(dir.path().join(LOG_FILE), &bytes).unwrap();
        let e = journal::replay(dir.path()).expect_err("a bad line fails replay");
        let text = e.to_string();
        prop_assert!(text.contains(LOG_FILE), "{text}");
        prop_assert!(text.contains(&format!("line {} ", k + 1)), "{text}");
        if raw_invalid_utf8 {
            prop_assert!(text.contains("not valid UTF-8"), "{text}");
        }
    }

    /// A whole data directory, written as a server would and then damaged
    /// by one byte in either file: `open` never panics, and opens to a
    /// stable state or says where the damage is.
    #[test]
    fn open_of_a_damaged_data_dir(
        messages in prop::collection::vec(message(), 0..15),
        states in prop::collection::vec(state_line(), 0..10),
        which in 0..3u8,
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        how in 0..3u8,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut log = log_text(&messages).into_bytes();
        // Every ID registered first, as a server writes it, so that an
        // undamaged directory opens and the damage is what is tested.
        let mut state = ["alice", "bob", "carol", "d-1", "E_2"]
            .map(|id| format!("register 1 {id}\n"))
            .concat()
            .into_bytes();
        state.extend(states.concat().into_bytes());
        match which {
            0 => log = damage(log, at, byte, how),
            1 => state = damage(state, at, byte, how),
            _ => {}
        }
        std::fs::write(dir.path().join(LOG_FILE), &log).unwrap();
        std::fs::write(dir.path().join(STATE_FILE), &state).unwrap();
        open_twice(dir.path());
    }

    #[test]
    fn open_of_arbitrary_files_never_panics(
        log in prop::collection::vec(any::<u8>(), 0..300),
        state in prop::collection::vec(any::<u8>(), 0..100),
    ) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOG_FILE), &log).unwrap();
        std::fs::write(dir.path().join(STATE_FILE), &state).unwrap();
        open_twice(dir.path());
    }
}

/// A file whose lines end in `\r\n` (edited on Windows) replays as if they
/// ended in `\n`.
#[test]
fn crlf_line_ends_are_tolerated() {
    let dir = tempfile::tempdir().unwrap();
    let m = Message {
        id: MessageId::generate(),
        from: ClientId::parse("alice").unwrap(),
        to: ClientId::parse("bob").unwrap(),
        text: "hi\r".into(),
        timestamp_ms: 1_795_772_199_123,
        seq: 0,
    };
    let log = log_text(std::slice::from_ref(&m)).replace('\n', "\r\n");
    std::fs::write(dir.path().join(LOG_FILE), log).unwrap();
    std::fs::write(
        dir.path().join(STATE_FILE),
        "register 1 alice\r\nack bob 0\r\n",
    )
    .unwrap();
    let replay = journal::replay(dir.path()).expect("replays");
    assert_eq!(replay.messages, [m]);
    assert_eq!(replay.registered.len(), 1);
}

/// A data directory as a server leaves it: alice and bob registered, three
/// messages from alice to bob, bob acknowledged the first.
async fn written_dir() -> tempfile::TempDir {
    use chat_core::Credentials;
    use chat_proto::v1 as pb;
    let dir = tempfile::tempdir().unwrap();
    let s = ChatServer::open(ServerConfig::new(dir.path())).unwrap();
    let creds = |id: &str| Credentials::new(id, format!("secret-of-{id}"));
    s.register(&creds("alice"), "alice").await.unwrap();
    let (bob, _) = s.register(&creds("bob"), "bob").await.unwrap();
    let alice = s.authenticate(&creds("alice")).unwrap();
    for text in ["one", "two", "three"] {
        let req = pb::SendRequest {
            id: String::new(),
            from: "alice".into(),
            to: "bob".into(),
            text: text.into(),
        };
        let cmd = chat_core::SendCommand::parse(req, &s.limits()).unwrap();
        s.send(&alice, cmd).await.unwrap();
    }
    s.ack(&bob, "bob", 1).await.unwrap();
    dir
}

fn open_error(dir: &Path) -> String {
    match ChatServer::open(ServerConfig::new(dir)) {
        Ok(_) => panic!("an inconsistent data directory opened"),
        Err(e) => e.to_string(),
    }
}

fn edit(dir: &Path, file: &str, change: impl FnOnce(String) -> String) {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, change(text)).unwrap();
}

/// A line repeated in log.txt would be delivered a second time under a new
/// seq (and shift every later seq): refused, naming both lines.
#[tokio::test]
async fn a_repeated_log_line_is_refused_naming_both_lines() {
    let dir = written_dir().await;
    edit(dir.path(), LOG_FILE, |log| {
        let second = log.lines().nth(1).unwrap().to_owned();
        format!("{log}{second}\n")
    });
    let e = open_error(dir.path());
    assert!(e.contains(LOG_FILE) && e.contains("line 4 "), "{e}");
    assert!(e.contains("repeats line 2 exactly"), "{e}");
}

/// An ack beyond the messages log.txt has for that client (log.txt restored
/// from an older copy) would silently hide messages: refused, naming the
/// journal line and both numbers.
#[tokio::test]
async fn an_ack_beyond_the_log_is_refused() {
    let dir = written_dir().await;
    edit(dir.path(), STATE_FILE, |state| {
        format!("{state}ack bob 7\n")
    });
    let e = open_error(dir.path());
    assert!(e.contains(STATE_FILE), "{e}");
    assert!(
        e.contains("up to seq 7") && e.contains("only 3 messages"),
        "{e}"
    );
    let line = std::fs::read_to_string(dir.path().join(STATE_FILE))
        .unwrap()
        .lines()
        .count();
    assert!(e.contains(&format!("line {line} ")), "{e}");
}

/// An ack for an ID that was never registered used to create that client.
#[tokio::test]
async fn an_ack_for_an_unregistered_id_is_refused() {
    let dir = written_dir().await;
    edit(dir.path(), STATE_FILE, |state| {
        format!("{state}ack mallory 1\n")
    });
    let e = open_error(dir.path());
    assert!(e.contains(STATE_FILE) && e.contains("mallory"), "{e}");
    assert!(e.contains("no line of the file registers"), "{e}");
}

/// A message whose sender or recipient was never registered cannot have
/// been written by a server (registration is durable before any send).
#[tokio::test]
async fn a_message_naming_an_unregistered_id_is_refused() {
    let dir = written_dir().await;
    edit(dir.path(), LOG_FILE, |log| {
        log.replacen("-> bob:", "-> carol:", 1)
    });
    let e = open_error(dir.path());
    assert!(e.contains(LOG_FILE) && e.contains("line 1 "), "{e}");
    assert!(e.contains("carol is not registered"), "{e}");
}

/// The consistent directory the tests above start from opens, and its
/// history is read back from log.txt.
#[tokio::test]
async fn a_consistent_directory_opens() {
    use chat_core::Credentials;
    let dir = written_dir().await;
    let s = ChatServer::open(ServerConfig::new(dir.path())).unwrap();
    let alice = s
        .authenticate(&Credentials::new("alice", "secret-of-alice"))
        .unwrap();
    let history = s.history(&alice, "alice").await.unwrap();
    let seqs: Vec<_> = history.iter().map(|m| (m.seq, m.text.as_str())).collect();
    assert_eq!(seqs, [(1, "one"), (2, "two"), (3, "three")]);
    let pending: Vec<_> = s.undelivered().iter().map(|m| m.seq).collect();
    assert_eq!(pending, [2, 3]);
}

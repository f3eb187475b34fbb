//! Property tests of the parsers of outside input that need no files:
//! `log.txt` lines (CLI input lines are chat-cli's, in its `tests/line.rs`).
//!
//! Case counts are bounded (see `chat_core::proptest_config`) so that
//! `cargo test` stays fast; `PROPTEST_CASES` raises them for a longer hunt.

use chat_core::log_line::{LineError, parse_line, write_line};
use chat_core::{ClientId, Message, MessageId, proptest_config};
use proptest::prelude::*;

/// Characters that stress the escaping: backslash, every control, the
/// letters of the escapes, the field separators, and multi-byte neighbours
/// of the C1 controls.
fn tricky_char() -> impl Strategy<Value = char> {
    prop_oneof![
        3 => any::<char>(),
        2 => prop::sample::select(vec![
            '\\', '\n', '\r', '\t', '\0', '\u{1b}', '\u{7f}', '\u{85}', '\u{9f}', '\u{a0}',
            'u', 'n', '{', '}', ' ', '-', '>', ':', 'é', '🦀',
        ]),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        prop::collection::vec(tricky_char(), 0..300).prop_map(String::from_iter),
    ]
}

fn client_id() -> impl Strategy<Value = ClientId> {
    "[A-Za-z0-9_-]{1,32}".prop_map(|s| ClientId::parse(&s).unwrap())
}

/// A message as the server accepts it: any text, any valid IDs, a
/// timestamp between 1970 and 9999 (the server's clock gives "now").
fn message() -> impl Strategy<Value = Message> {
    (
        any::<u128>(),
        client_id(),
        client_id(),
        text(),
        0i64..=253_402_300_799_999,
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

fn line_of(m: &Message) -> String {
    let mut line = String::new();
    write_line(&mut line, m);
    line
}

/// What an error must say: which field is wrong, in words.
fn check_error_names_the_problem(e: &LineError) {
    let text = e.to_string();
    assert!(
        text.starts_with("no ") || text.starts_with("bad "),
        "unclear error: {text}"
    );
    match e {
        LineError::Missing(what) => assert!(text.contains(what)),
        LineError::Timestamp(v) | LineError::MessageId(v) => {
            assert!(text.contains(&format!("{v:?}")))
        }
        LineError::ClientId { field, value } => {
            assert!(text.contains(field) && text.contains(&format!("{value:?}")))
        }
        LineError::Escape(at) => assert!(text.contains(&format!("byte {at}"))),
    }
}

proptest! {
    #![proptest_config(proptest_config(256))]

    #[test]
    fn a_log_line_round_trips_whatever_the_text(m in message()) {
        let line = line_of(&m);
        prop_assert!(line.ends_with('\n'));
        let body = &line[..line.len() - 1];
        prop_assert!(!body.chars().any(char::is_control), "{line:?}");
        prop_assert_eq!(parse_line(body), Ok(m));
    }

    #[test]
    fn any_string_parses_or_says_what_is_wrong(line in text()) {
        if let Err(e) = parse_line(&line) {
            check_error_names_the_problem(&e);
        }
    }

    #[test]
    fn any_bytes_parse_or_say_what_is_wrong(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        if let Err(e) = parse_line(&String::from_utf8_lossy(&bytes)) {
            check_error_names_the_problem(&e);
        }
    }

    /// A valid line with one byte changed, removed or inserted: parsing
    /// never panics, and whatever parses is written back in a form that
    /// parses to the same message (replay then re-logging is stable).
    #[test]
    fn a_damaged_line_parses_to_something_stable_or_is_refused(
        m in message(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        how in 0..3u8,
    ) {
        let mut bytes = line_of(&m).trim_end().as_bytes().to_vec();
        let i = at.index(bytes.len() + 1);
        match how {
            0 if i < bytes.len() => bytes[i] = byte,
            1 if i < bytes.len() => { bytes.remove(i); }
            _ => bytes.insert(i, byte),
        }
        match parse_line(&String::from_utf8_lossy(&bytes)) {
            Ok(parsed) => {
                let again = line_of(&parsed);
                prop_assert_eq!(parse_line(again.trim_end_matches('\n')), Ok(parsed));
            }
            Err(e) => check_error_names_the_problem(&e),
        }
    }
}

#[test]
fn each_kind_of_bad_line_gets_its_own_reason() {
    let id = MessageId::generate();
    let cases = [
        ("nospace", "no space after the timestamp"),
        (
            "2026-11-27T09:36:39.123Z x",
            "no space after the message ID",
        ),
        (
            "2026-11-27T09:36:39.123Z x a b",
            "no ` -> ` after the sender",
        ),
        (
            "2026-11-27T09:36:39.123Z x a -> b",
            "no `: ` after the recipient",
        ),
        ("yesterday x a -> b: hi", "bad timestamp \"yesterday\""),
        (
            "2026-11-27T09:36:39.123Z nope a -> b: hi",
            "bad message ID \"nope\"",
        ),
        (
            &format!("2026-11-27T09:36:39.123Z {id} a.b -> b: hi"),
            "bad sender \"a.b\"",
        ),
        (
            &format!("2026-11-27T09:36:39.123Z {id} a -> b/c: hi"),
            "bad recipient \"b/c\"",
        ),
        (
            &format!("2026-11-27T09:36:39.123Z {id} a -> b: ok \\x"),
            "bad escape at byte 3",
        ),
        (
            &format!("2026-11-27T09:36:39.123Z {id} a -> b: \\u{{d800}}"),
            "bad escape at byte 0",
        ),
    ];
    for (line, why) in cases {
        let e = parse_line(line).expect_err(line);
        assert!(e.to_string().starts_with(why), "{line:?}: {e}");
    }
}

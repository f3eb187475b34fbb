//! Property tests of the CLI's line parser: whatever is typed, it is either
//! understood or answered with a message saying what to type instead.
//! The named cases of every command form are unit tests in `src/line.rs`.
//!
//! Case counts are bounded so that `cargo test` stays fast;
//! `PROPTEST_CASES` raises them for a longer hunt.

use chat_cli::line::{LineCommand, parse_input};
use chat_core::{ClientId, proptest_config};
use proptest::prelude::*;

/// Characters that matter to the line grammar (the command prefix, the
/// separators, line ends) among any others.
fn line_char() -> impl Strategy<Value = char> {
    prop_oneof![
        3 => any::<char>(),
        2 => prop::sample::select(vec![
            '/', ' ', '\t', '\r', '\n', '\u{a0}', '\u{85}', 'm', 's', 'g', '-', '_', 'é', '🦀',
        ]),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        prop::collection::vec(line_char(), 0..300).prop_map(String::from_iter),
    ]
}

fn client_id() -> impl Strategy<Value = ClientId> {
    "[A-Za-z0-9_-]{1,32}".prop_map(|s| ClientId::parse(&s).unwrap())
}

proptest! {
    #![proptest_config(proptest_config(256))]

    #[test]
    fn any_cli_line_is_understood_or_answered_with_usage(line in text()) {
        match parse_input(&line) {
            LineCommand::Usage(message) => prop_assert!(
                message.starts_with("usage:") || message.contains("type /help"),
                "{message}"
            ),
            LineCommand::BadRecipient(e) => prop_assert!(e.to_string().contains("invalid client ID")),
            LineCommand::Send { text, .. } => prop_assert!(!text.ends_with(['\r', '\n'])),
            _ => {}
        }
    }

    #[test]
    fn msg_sends_the_text_as_typed_to_a_valid_id(
        to in client_id(),
        gap in "[ \t]{1,3}",
        text in text().prop_filter("one line", |t| !t.contains(['\r', '\n'])),
    ) {
        let line = format!("/msg {to}{gap}{text}\n");
        let expected = format!("{}{text}", &gap[1..]);
        match parse_input(&line) {
            LineCommand::Send { to: Some(got), text } => {
                prop_assert_eq!(got, to);
                prop_assert_eq!(text, expected);
            }
            other => prop_assert!(false, "{line:?} gave {other:?}"),
        }
    }

    #[test]
    fn msg_to_an_invalid_id_is_refused(
        to in "\\S{1,40}".prop_filter("invalid", |s| ClientId::parse(s).is_err()),
    ) {
        let line = format!("/msg {to} hello");
        prop_assert!(matches!(parse_input(&line), LineCommand::BadRecipient(_)), "{line:?}");
    }

    #[test]
    fn plain_text_goes_to_the_last_recipient(
        text in text().prop_filter("plain", |t| {
            !t.starts_with('/') && !t.trim().is_empty() && !t.contains(['\r', '\n'])
        }),
    ) {
        match parse_input(&format!("{text}\r\n")) {
            LineCommand::Send { to: None, text: got } => prop_assert_eq!(got, text),
            other => prop_assert!(false, "{text:?} gave {other:?}"),
        }
    }

    #[test]
    fn commands_ignore_their_arguments(
        name in prop::sample::select(vec!["quit", "exit", "help", "list", "history"]),
        args in "([ \t][^\r\n]*)?",
    ) {
        let got = parse_input(&format!("/{name}{args}"));
        let ok = match name {
            "quit" | "exit" => matches!(got, LineCommand::Quit),
            "help" => matches!(got, LineCommand::Help),
            "list" => matches!(got, LineCommand::List),
            _ => matches!(got, LineCommand::History),
        };
        prop_assert!(ok, "/{}{} gave {:?}", name, args, got);
    }

    #[test]
    fn unknown_commands_point_to_help(name in "[a-z]{1,12}") {
        prop_assume!(!["quit", "exit", "help", "list", "history", "msg"].contains(&name.as_str()));
        match parse_input(&format!("/{name} x")) {
            LineCommand::Usage(m) => {
                let named = m.contains(&format!("/{name}"));
                prop_assert!(named && m.contains("/help"), "{}", m);
            }
            other => prop_assert!(false, "{other:?}"),
        }
    }
}

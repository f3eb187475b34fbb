//! The `log.txt` line format: human-readable, one line per accepted message,
//! and parseable back, because the log is also what the server replays to
//! rebuild histories and mailboxes after a restart.
//!
//! ```text
//! 2026-11-27T09:36:39.123Z 0193f0c6-8a1e-7cc2-9d1a-3b7e4f5a6b7c alice -> bob: hello\nworld
//! ```
//!
//! Timestamp (RFC 3339, UTC), message ID, sender, `->`, recipient, `:`, text.
//! IDs cannot contain spaces, so the fields split unambiguously. In the text,
//! `\` becomes `\\`, newline `\n`, carriage return `\r`, tab `\t`, and any
//! other control character `\u{XX}`: one message is always one line.

use std::fmt::Write as _;

use crate::id::{ClientId, MessageId};
use crate::message::{Message, format_timestamp, parse_timestamp};

/// Appends the log line for `m` (with its trailing newline) to `out`.
pub fn write_line(out: &mut String, m: &Message) {
    let _ = write!(
        out,
        "{} {} {} -> {}: ",
        format_timestamp(m.timestamp_ms),
        m.id,
        m.from,
        m.to
    );
    escape_into(out, &m.text);
    out.push('\n');
}

fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
}

fn unescape(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            '\\' => out.push('\\'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'u' => {
                if chars.next()? != '{' {
                    return None;
                }
                let hex: String = chars.by_ref().take_while(|&c| c != '}').collect();
                out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
            }
            _ => return None,
        }
    }
    Some(out)
}

/// A log line read back, without the per-recipient seq (which is implied by
/// the line's position among the recipient's lines).
pub fn parse_line(line: &str) -> Option<Message> {
    let (ts, rest) = line.split_once(' ')?;
    let (id, rest) = rest.split_once(' ')?;
    let (from, rest) = rest.split_once(" -> ")?;
    let (to, text) = rest.split_once(": ")?;
    Some(Message {
        id: MessageId(uuid::Uuid::parse_str(id).ok()?),
        from: ClientId::parse(from).ok()?,
        to: ClientId::parse(to).ok()?,
        text: unescape(text)?,
        timestamp_ms: parse_timestamp(ts)?,
        seq: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(text: &str) -> Message {
        Message {
            id: MessageId::generate(),
            from: ClientId::parse("alice").unwrap(),
            to: ClientId::parse("bob").unwrap(),
            text: text.into(),
            timestamp_ms: 1_795_772_199_123,
            seq: 0,
        }
    }

    #[test]
    fn one_line_per_message_whatever_the_text() {
        for text in [
            "hello",
            "two\nlines",
            "tab\there",
            "back\\slash \\n literal",
            "cr\r\n",
            "bell\u{7} nul\u{0} del\u{7f}",
            "arrow -> and colon: inside",
            "ünïcödé 🦀",
        ] {
            let m = msg(text);
            let mut line = String::new();
            write_line(&mut line, &m);
            assert_eq!(line.matches('\n').count(), 1, "{line:?}");
            assert!(line.ends_with('\n'));
            assert!(!line.contains('\t') && !line.contains('\r'));
            let back = parse_line(line.trim_end_matches('\n')).expect("parses");
            assert_eq!(back, m, "{line:?}");
        }
    }

    #[test]
    fn the_line_reads_like_a_chat_log() {
        let m = msg("hi\nthere");
        let mut line = String::new();
        write_line(&mut line, &m);
        assert_eq!(
            line,
            format!(
                "2026-11-27T09:36:39.123Z {} alice -> bob: hi\\nthere\n",
                m.id
            )
        );
    }

    #[test]
    fn garbage_does_not_parse() {
        for bad in ["", "x", "2026-11-27T09:36:39.123Z nope alice -> bob: hi"] {
            assert!(parse_line(bad).is_none(), "{bad:?}");
        }
    }
}

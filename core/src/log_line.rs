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

use crate::id::{ClientId, MessageId};
use crate::message::{Message, parse_timestamp, write_timestamp};

/// Appends the log line for `m` (with its trailing newline) to `out`.
///
/// Everything goes straight into `out`: no per-line temporary strings, since
/// this runs for every accepted message, under the journal's one writer.
pub fn write_line(out: &mut String, m: &Message) {
    write_timestamp(out, m.timestamp_ms);
    out.push(' ');
    out.push_str(
        m.id.0
            .hyphenated()
            .encode_lower(&mut uuid::Uuid::encode_buffer()),
    );
    out.push(' ');
    out.push_str(m.from.as_str());
    out.push_str(" -> ");
    out.push_str(m.to.as_str());
    out.push_str(": ");
    escape_into(out, &m.text);
    out.push('\n');
}

/// Whether byte `b` may start a character that [`escape_into`] escapes.
///
/// Every escaped character is ASCII (`\` and the C0 controls `U+0000..=U+001F`
/// and DEL `U+007F`) except the C1 controls `U+0080..=U+009F`, whose UTF-8 is
/// `C2 80..=C2 9F`. So a byte scan finds them all; a `C2` is only a candidate
/// (`C2 A0..=C2 BF` are printable, e.g. `£`, `°`) and is checked with its
/// next byte. No other byte of a multi-byte character can match: UTF-8
/// continuation bytes are `80..=BF` and lead bytes `C2..=F4`.
#[inline]
fn candidate(b: u8) -> bool {
    (b < 0x20) | (b == b'\\') | (b == 0x7f) | (b == 0xc2)
}

/// Index of the first candidate byte at or after `from`, or `bytes.len()`.
fn next_candidate(bytes: &[u8], from: usize) -> usize {
    // Whole chunks first, with a branch-free test the compiler vectorises;
    // the byte loop below then finds the exact position (or covers the tail).
    const CHUNK: usize = 16;
    let mut i = from;
    while let Some(chunk) = bytes.get(i..i + CHUNK) {
        if chunk.iter().fold(false, |any, &b| any | candidate(b)) {
            break;
        }
        i += CHUNK;
    }
    while i < bytes.len() && !candidate(bytes[i]) {
        i += 1;
    }
    i
}

/// Escapes `text` as the module doc says. Runs without escapes are copied
/// as whole slices; a text with nothing to escape is one `push_str`.
fn escape_into(out: &mut String, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = text.as_bytes();
    // Start of the run of text not copied to `out` yet.
    let mut run = 0;
    let mut i = next_candidate(bytes, 0);
    while i < bytes.len() {
        let b = bytes[i];
        // The escaped code point and its UTF-8 length; every one is below 0xA0.
        let (code, width) = if b == 0xc2 {
            match bytes.get(i + 1) {
                // C2 xx encodes U+00xx for xx in 80..=BF.
                Some(&next @ 0x80..=0x9f) => (next, 2),
                _ => {
                    i = next_candidate(bytes, i + 1);
                    continue;
                }
            }
        } else {
            (b, 1)
        };
        out.push_str(&text[run..i]);
        match code {
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            // `\u{..}`: lowercase hex without leading zeros, as `{:x}` writes it.
            _ => {
                out.push_str("\\u{");
                if code >= 0x10 {
                    out.push(char::from(HEX[usize::from(code >> 4)]));
                }
                out.push(char::from(HEX[usize::from(code & 0xf)]));
                out.push('}');
            }
        }
        i += width;
        run = i;
        i = next_candidate(bytes, i);
    }
    out.push_str(&text[run..]);
}

/// Reverses [`escape_into`]. Runs between backslashes are copied as slices.
/// On a malformed escape, the error is its byte offset in `text`.
fn unescape(text: &str) -> Result<String, usize> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('\\') {
        let offset = text.len() - rest.len() + at;
        out.push_str(&rest[..at]);
        let mut chars = rest[at + 1..].chars();
        match chars.next().ok_or(offset)? {
            '\\' => out.push('\\'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'u' => {
                if chars.next() != Some('{') {
                    return Err(offset);
                }
                // Up to the closing brace (or the end of the text), which is
                // consumed with the digits.
                let tail = chars.as_str();
                let (hex, after) = tail.split_once('}').unwrap_or((tail, ""));
                let code = u32::from_str_radix(hex, 16).map_err(|_| offset)?;
                out.push(char::from_u32(code).ok_or(offset)?);
                chars = after.chars();
            }
            _ => return Err(offset),
        }
        rest = chars.as_str();
    }
    out.push_str(rest);
    Ok(out)
}

/// Why a line is not a `log.txt` line. Replay names the file and line
/// number around it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("no {0} (expected `<timestamp> <message id> <from> -> <to>: <text>`)")]
    Missing(&'static str),
    #[error("bad timestamp {0:?} (expected RFC 3339, e.g. 2026-11-27T09:36:39.123Z)")]
    Timestamp(String),
    #[error("bad message ID {0:?} (expected a UUID)")]
    MessageId(String),
    #[error("bad {field} {value:?} (expected 1-32 characters of A-Z, a-z, 0-9, '_' or '-')")]
    ClientId { field: &'static str, value: String },
    #[error("bad escape at byte {0} of the text (known: \\\\ \\n \\r \\t \\u{{hex}})")]
    Escape(usize),
}

/// At most 64 characters of a bad field, for an error message.
fn excerpt(s: &str) -> String {
    s.chars().take(64).collect()
}

/// A log line read back, without the per-recipient seq (which is implied by
/// the line's position among the recipient's lines).
pub fn parse_line(line: &str) -> Result<Message, LineError> {
    let (ts, rest) = line
        .split_once(' ')
        .ok_or(LineError::Missing("space after the timestamp"))?;
    let (id, rest) = rest
        .split_once(' ')
        .ok_or(LineError::Missing("space after the message ID"))?;
    let (from, rest) = rest
        .split_once(" -> ")
        .ok_or(LineError::Missing("` -> ` after the sender"))?;
    let (to, text) = rest
        .split_once(": ")
        .ok_or(LineError::Missing("`: ` after the recipient"))?;
    let client = |field, value: &str| {
        ClientId::parse(value).map_err(|_| LineError::ClientId {
            field,
            value: excerpt(value),
        })
    };
    Ok(Message {
        timestamp_ms: parse_timestamp(ts).ok_or_else(|| LineError::Timestamp(excerpt(ts)))?,
        id: MessageId(uuid::Uuid::parse_str(id).map_err(|_| LineError::MessageId(excerpt(id)))?),
        from: client("sender", from)?,
        to: client("recipient", to)?,
        text: unescape(text).map_err(LineError::Escape)?,
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

    /// The char-by-char escaping this module had before the fast path:
    /// the reference the fast path must match byte for byte.
    fn escape_reference(text: &str) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
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
        out
    }

    /// The char-by-char unescaping this module had before, likewise.
    fn unescape_reference(text: &str) -> Option<String> {
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

    fn escape(text: &str) -> String {
        let mut out = String::new();
        escape_into(&mut out, text);
        out
    }

    /// Every character the escaping touches: `\`, all C0 controls, DEL and
    /// all C1 controls.
    fn escaped_chars() -> impl Iterator<Item = char> {
        ('\u{0}'..='\u{1f}')
            .chain(['\u{7f}', '\\'])
            .chain('\u{80}'..='\u{9f}')
    }

    /// Checks one text against the reference both ways and round-trips it.
    fn check(text: &str) {
        let escaped = escape(text);
        assert_eq!(escaped, escape_reference(text), "{text:?}");
        assert!(!escaped.chars().any(char::is_control), "{escaped:?}");
        assert_eq!(unescape(&escaped).as_deref(), Ok(text), "{escaped:?}");
        let m = msg(text);
        let mut line = String::new();
        write_line(&mut line, &m);
        assert_eq!(parse_line(line.trim_end_matches('\n')), Ok(m), "{line:?}");
    }

    /// A small xorshift generator, so the property tests need no crate and
    /// fail the same way every time.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn string(&mut self, pool: &[char], max_len: usize) -> String {
            let len = self.below(max_len + 1);
            (0..len).map(|_| pool[self.below(pool.len())]).collect()
        }
    }

    #[test]
    fn text_without_escapes_is_copied_whole() {
        for text in [
            "",
            "a",
            "hello world, the quick brown fox jumps over the lazy dog 0123456789",
            "ünïcödé 🦀 £1.50 at 20°C ± 0.5 «quoted» ¿qué? \u{a0}nbsp",
            &"x".repeat(4096),
        ] {
            let mut out = String::from("prefix ");
            escape_into(&mut out, text);
            assert_eq!(out, format!("prefix {text}"));
            check(text);
        }
    }

    #[test]
    fn every_escaped_character_alone_and_in_a_run() {
        for c in escaped_chars() {
            let expected = match c {
                '\\' => "\\\\".to_owned(),
                '\n' => "\\n".to_owned(),
                '\r' => "\\r".to_owned(),
                '\t' => "\\t".to_owned(),
                c => format!("\\u{{{:x}}}", u32::from(c)),
            };
            assert_eq!(escape(&c.to_string()), expected, "{c:?}");
            check(&c.to_string());
            check(&format!("a{c}b"));
        }
        let all: String = escaped_chars().collect();
        check(&all);
        check(&format!("{all}{all}"));
        assert_eq!(
            escape("\0\u{1b}\u{7f}\u{85}\u{9f}"),
            "\\u{0}\\u{1b}\\u{7f}\\u{85}\\u{9f}"
        );
    }

    #[test]
    fn escapes_at_the_start_the_end_and_chunk_edges() {
        check("\nstarts");
        check("ends\\");
        check("\\");
        check("\n\n\n");
        // Around the scan's 16-byte chunks: before, on and after each edge.
        for len in 0..40 {
            for at in 0..=len {
                for c in ['\n', '\\', '\u{7f}', '\u{85}'] {
                    let mut text = "x".repeat(len);
                    text.insert(at, c);
                    check(&text);
                }
            }
        }
    }

    #[test]
    fn multi_byte_utf8_next_to_escapes() {
        // `C2 A0..=C2 BF` share the lead byte of the C1 controls and are
        // printable; the others are 2-, 3- and 4-byte characters.
        for text in [
            "é\n🦀",
            "\\£\\",
            "\u{85}\u{a0}\u{9f}\u{bf}",
            "°\t°",
            "🦀\u{0}🦀\u{1f}",
            "日本語\r\n日本語",
            "\u{c2}\u{80}",
            "ü\u{80}ü",
        ] {
            check(text);
        }
    }

    #[test]
    fn generated_texts_match_the_reference_and_round_trip() {
        let mut pool: Vec<char> = escaped_chars().collect();
        pool.extend("abc xyz0129 ->:{}u".chars());
        pool.extend([
            'é', '£', '°', '\u{a0}', '\u{bf}', '\u{c0}', '日', '🦀', '\u{ffff}',
        ]);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..3000 {
            let max_len = if round % 10 == 0 { 300 } else { 40 };
            check(&rng.string(&pool, max_len));
        }
    }

    #[test]
    fn unescaping_accepts_and_refuses_what_it_did_before() {
        // Including malformed escapes: the fast path must not change what
        // replay accepts.
        let pool: Vec<char> = "\\\\nrtu{}{}0741+-xé🦀 \n".chars().collect();
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for _ in 0..5000 {
            let text = rng.string(&pool, 24);
            assert_eq!(unescape(&text).ok(), unescape_reference(&text), "{text:?}");
        }
        for text in [
            "\\",
            "\\x",
            "\\u",
            "\\u4",
            "\\u{",
            "\\u{}",
            "\\u{41",
            "\\u{+41}",
            "\\u{d800}",
        ] {
            assert_eq!(unescape(text).ok(), unescape_reference(text), "{text:?}");
        }
    }

    #[test]
    fn garbage_does_not_parse() {
        for bad in ["", "x", "2026-11-27T09:36:39.123Z nope alice -> bob: hi"] {
            assert!(parse_line(bad).is_err(), "{bad:?}");
        }
    }
}

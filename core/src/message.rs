//! The chat's own value types and their protobuf twins.

use chat_proto::v1 as pb;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::ChatError;
use crate::id::{ClientId, MessageId};

/// A message the server accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub id: MessageId,
    pub from: ClientId,
    pub to: ClientId,
    pub text: String,
    /// Acceptance time, Unix milliseconds UTC (the server's clock).
    pub timestamp_ms: i64,
    /// Position in the recipient's stream (1-based, gap-free per recipient).
    pub seq: u64,
}

/// What the server answers for an accepted message (also for a send
/// retried with the same ID): enough to reply and to follow its delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub id: MessageId,
    pub to: ClientId,
    /// The message's seq in `to`'s stream.
    pub seq: u64,
    pub timestamp_ms: i64,
}

impl Receipt {
    pub fn of(m: &Message) -> Self {
        Self {
            id: m.id,
            to: m.to.clone(),
            seq: m.seq,
            timestamp_ms: m.timestamp_ms,
        }
    }

    /// The reply to the send, as the wire carries it.
    pub fn to_reply(&self) -> pb::SendReply {
        pb::SendReply {
            id: self.id.to_string(),
            timestamp_ms: self.timestamp_ms,
        }
    }
}

/// A send, parsed at the edge (the adapter's request handler): both IDs,
/// the message ID and the text are valid before the server sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendCommand {
    pub id: MessageId,
    pub from: ClientId,
    pub to: ClientId,
    pub text: String,
}

impl SendCommand {
    /// Checks a `SendRequest` against `limits`. An empty `id` gets a new one.
    pub fn parse(req: pb::SendRequest, limits: &crate::limits::Limits) -> Result<Self, ChatError> {
        let from = ClientId::parse(&req.from)?;
        let to = ClientId::parse(&req.to)?;
        let id = MessageId::parse_or_generate(&req.id)?;
        limits.check_text(&req.text)?;
        Ok(Self {
            id,
            from,
            to,
            text: req.text,
        })
    }
}

impl Message {
    /// The timestamp as RFC 3339 UTC with milliseconds, e.g. `2026-11-27T09:36:39.123Z`.
    pub fn timestamp_rfc3339(&self) -> String {
        format_timestamp(self.timestamp_ms)
    }

    pub fn to_proto(&self) -> pb::ChatMessage {
        pb::ChatMessage {
            id: self.id.to_string(),
            from: self.from.to_string(),
            to: self.to.to_string(),
            text: self.text.clone(),
            timestamp_ms: self.timestamp_ms,
            seq: self.seq,
        }
    }

    /// Validates a message received from the wire (client side).
    pub fn from_proto(m: pb::ChatMessage) -> Result<Self, ChatError> {
        if m.id.is_empty() {
            return Err(ChatError::Malformed("message without id".into()));
        }
        Ok(Self {
            id: MessageId::parse_or_generate(&m.id)?,
            from: ClientId::parse(&m.from)?,
            to: ClientId::parse(&m.to)?,
            text: m.text,
            timestamp_ms: m.timestamp_ms,
            seq: m.seq,
        })
    }
}

/// Current time as Unix milliseconds.
pub fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Formats Unix milliseconds as RFC 3339 UTC with exactly three fraction digits.
pub fn format_timestamp(ms: i64) -> String {
    let mut out = String::with_capacity(24);
    write_timestamp(&mut out, ms);
    out
}

/// Appends what [`format_timestamp`] returns to `out`, without a `String` of
/// its own (the journal writer formats one per `log.txt` line).
pub fn write_timestamp(out: &mut String, ms: i64) {
    use std::fmt::Write as _;
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    );
}

/// Parses what [`format_timestamp`] wrote (any RFC 3339 timestamp, really).
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    Some((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// One registered client, as `list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClientInfo {
    #[serde(serialize_with = "ser_display")]
    pub id: ClientId,
    pub online: bool,
}

impl ClientInfo {
    pub fn to_proto(&self) -> pb::ClientInfo {
        pb::ClientInfo {
            id: self.id.to_string(),
            online: self.online,
        }
    }

    pub fn from_proto(c: pb::ClientInfo) -> Result<Self, ChatError> {
        Ok(Self {
            id: ClientId::parse(&c.id)?,
            online: c.online,
        })
    }
}

fn ser_display<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_in_rfc3339_utc() {
        let ms = 1_795_772_199_123;
        let s = format_timestamp(ms);
        assert!(s.ends_with('Z') && s.contains('T'), "{s}");
        assert_eq!(parse_timestamp(&s), Some(ms));
        assert_eq!(format_timestamp(0), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn write_timestamp_appends_what_format_timestamp_returns() {
        for (ms, text) in [
            (0, "1970-01-01T00:00:00.000Z"),
            (1_795_772_199_123, "2026-11-27T09:36:39.123Z"),
            (1_795_772_199_007, "2026-11-27T09:36:39.007Z"),
            (-1, "1969-12-31T23:59:59.999Z"),
            (253_402_300_799_999, "9999-12-31T23:59:59.999Z"),
        ] {
            assert_eq!(format_timestamp(ms), text);
            let mut out = String::from("line: ");
            write_timestamp(&mut out, ms);
            assert_eq!(out, format!("line: {text}"));
        }
    }

    #[test]
    fn proto_round_trip_and_validation() {
        let m = Message {
            id: MessageId::generate(),
            from: ClientId::parse("alice").unwrap(),
            to: ClientId::parse("bob").unwrap(),
            text: "hi".into(),
            timestamp_ms: 5,
            seq: 7,
        };
        assert_eq!(Message::from_proto(m.to_proto()).unwrap(), m);
        let mut bad = m.to_proto();
        bad.from = "not valid!".into();
        assert!(Message::from_proto(bad).is_err());
        let mut no_id = m.to_proto();
        no_id.id.clear();
        assert!(Message::from_proto(no_id).is_err());
    }
}

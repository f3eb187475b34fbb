//! Client and message identifiers, validated once at the edge.
//!
//! A [`ClientId`] is what a user types and what routes messages (it is the
//! AMQP routing key and part of a queue name), so it is restricted to a
//! small, safe alphabet. A [`MessageId`] is a UUID so that senders can pick
//! it themselves and a retried send is recognised as the same message.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::error::ChatError;

/// Longest accepted client ID, in characters.
pub const MAX_CLIENT_ID_LEN: usize = 32;

/// A validated client ID: 1..=32 characters of `[A-Za-z0-9_-]`.
///
/// Cheap to clone (shared string), because it is copied into every message.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(Arc<str>);

impl ClientId {
    /// Validates `raw` as a client ID.
    pub fn parse(raw: &str) -> Result<Self, ChatError> {
        Self::validate(raw)?;
        Ok(Self(Arc::from(raw)))
    }

    /// Checks `raw` as [`ClientId::parse`] does, without allocating an ID:
    /// for callers that then look up the registry's own copy (by `&str`, see
    /// the `Borrow<str>` impl) instead of making a new one.
    pub(crate) fn validate(raw: &str) -> Result<(), ChatError> {
        let ok_len = (1..=MAX_CLIENT_ID_LEN).contains(&raw.len());
        let ok_chars = raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok_len && ok_chars {
            Ok(())
        } else {
            Err(ChatError::InvalidClientId(raw.chars().take(64).collect()))
        }
    }

    /// A fresh, unique ID for a user who did not choose one (`user-` + 8 hex digits).
    pub fn generate() -> Self {
        let uuid = uuid::Uuid::now_v7();
        let tail = &uuid.simple().to_string()[24..];
        Self(Arc::from(format!("user-{tail}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

impl FromStr for ClientId {
    type Err = ChatError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Lets maps keyed by `ClientId` be searched with a `&str`. Sound because
/// `Eq`, `Ord` and `Hash` are derived from the `Arc<str>`, which compares and
/// hashes exactly as the `str` it holds.
impl Borrow<str> for ClientId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for ClientId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A message ID: a UUID (v7 when we generate it, so IDs sort by time).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub uuid::Uuid);

impl MessageId {
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7())
    }

    /// Parses a sender-supplied ID; the empty string means "assign one".
    pub fn parse_or_generate(raw: &str) -> Result<Self, ChatError> {
        if raw.is_empty() {
            return Ok(Self::generate());
        }
        uuid::Uuid::parse_str(raw)
            .map(Self)
            .map_err(|_| ChatError::InvalidMessageId(raw.chars().take(64).collect()))
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_id_accepts_the_documented_alphabet() {
        for ok in ["a", "alice", "Bob_2", "x-y-z", &"a".repeat(32)] {
            assert_eq!(ClientId::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn client_id_rejects_everything_else() {
        for bad in ["", " ", "al ice", "a.b", "ñ", "a/b", "a\n", &"a".repeat(33)] {
            assert!(
                matches!(ClientId::parse(bad), Err(ChatError::InvalidClientId(_))),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let a = ClientId::generate();
        let b = ClientId::generate();
        assert_ne!(a, b);
        assert_eq!(ClientId::parse(a.as_str()).unwrap(), a);
    }

    #[test]
    fn message_id_parsing() {
        let id = MessageId::generate();
        assert_eq!(MessageId::parse_or_generate(&id.to_string()).unwrap(), id);
        assert!(MessageId::parse_or_generate("not-a-uuid").is_err());
        assert_ne!(MessageId::parse_or_generate("").unwrap(), id);
    }
}

//! Named, configurable limits, each with the reason for its default.

use crate::error::ChatError;

/// Default largest message text: 4 KiB is plenty for chat lines and keeps
/// one message well inside a single TCP segment burst and an AMQP frame.
pub const DEFAULT_MAX_TEXT_BYTES: usize = 4096;

/// Default most messages waiting for one recipient. Past it, sends to that
/// recipient are refused (RESOURCE_EXHAUSTED) instead of growing memory
/// without bound for a client that never comes back.
pub const DEFAULT_MAX_PENDING: usize = 100_000;

/// Default largest reply (a history), in bytes of protobuf: gRPC clients
/// refuse larger messages by default (tonic's 4 MiB decoding limit) and
/// RabbitMQ 4.x refuses messages over 16 MiB (`max_message_size`), so one
/// reply stays well inside both.
pub const DEFAULT_MAX_REPLY_BYTES: usize = 4 * 1024 * 1024 - 1024;

/// Default number of recently accepted message IDs the server remembers to
/// recognise a retried send (about 7 MB): a client retries what was not
/// answered when its connection dropped, which is its last few hundred
/// sends at most, and at 10 000 messages a second this still covers the
/// last 25 seconds of all traffic.
pub const DEFAULT_DEDUPE_WINDOW: usize = 262_144;

/// Default memory for undelivered messages, over all mailboxes. Past it,
/// further undelivered messages stay only in `log.txt` (32 bytes each in
/// memory) and are read back when delivered: a client that never reads, or
/// a broker that is down, costs the server disk reads, not memory.
pub const DEFAULT_MAILBOX_MEMORY: usize = 64 * 1024 * 1024;

/// The server-side limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest accepted text, in bytes of UTF-8.
    pub max_text_bytes: usize,
    /// Most undelivered messages kept for one recipient.
    pub max_pending: usize,
    /// Largest reply (one page of a history), in encoded bytes: a history
    /// is sent in pages that each fit.
    pub max_reply_bytes: usize,
    /// How many recently accepted message IDs are remembered, so that a
    /// send retried with the same ID is accepted once.
    pub dedupe_window: usize,
    /// Bytes of undelivered messages kept in memory, over all mailboxes;
    /// the rest are read back from `log.txt` when delivered.
    pub mailbox_memory: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_text_bytes: DEFAULT_MAX_TEXT_BYTES,
            max_pending: DEFAULT_MAX_PENDING,
            max_reply_bytes: DEFAULT_MAX_REPLY_BYTES,
            dedupe_window: DEFAULT_DEDUPE_WINDOW,
            mailbox_memory: DEFAULT_MAILBOX_MEMORY,
        }
    }
}

impl Limits {
    /// Empty (or whitespace-only) and oversized texts are refused.
    pub fn check_text(&self, text: &str) -> Result<(), ChatError> {
        if text.trim().is_empty() {
            return Err(ChatError::EmptyText);
        }
        if text.len() > self.max_text_bytes {
            return Err(ChatError::TextTooLong {
                len: text.len(),
                max: self.max_text_bytes,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_limits() {
        let limits = Limits {
            max_text_bytes: 8,
            ..Limits::default()
        };
        assert!(limits.check_text("hello").is_ok());
        assert!(limits.check_text("12345678").is_ok());
        assert!(matches!(limits.check_text(""), Err(ChatError::EmptyText)));
        assert!(matches!(
            limits.check_text(" \n\t"),
            Err(ChatError::EmptyText)
        ));
        assert!(matches!(
            limits.check_text("123456789"),
            Err(ChatError::TextTooLong { len: 9, max: 8 })
        ));
    }
}

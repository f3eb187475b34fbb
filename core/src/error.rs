//! The domain error, and the one code table both transports map from.
//!
//! gRPC turns [`ErrorCode`] into a `tonic::Status` code; AMQP sends it in an
//! `Error` reply. Each adapter does that in exactly one place.

use thiserror::Error;

pub use chat_proto::v1::ErrorCode;

use crate::id::ClientId;

#[derive(Debug, Error)]
pub enum ChatError {
    #[error("invalid client ID {0:?}: use 1-32 characters of A-Z, a-z, 0-9, '_' or '-'")]
    InvalidClientId(String),
    #[error("invalid message ID {0:?}: must be a UUID, or empty to let the server choose")]
    InvalidMessageId(String),
    #[error("message text is empty")]
    EmptyText,
    #[error("message text is {len} bytes, over the limit of {max} bytes")]
    TextTooLong { len: usize, max: usize },
    #[error("unknown recipient {0:?}: no client is registered under that ID (try /list)")]
    UnknownRecipient(ClientId),
    #[error("unknown sender {0:?}: register first (join the chat once with this ID)")]
    UnknownSender(ClientId),
    #[error("client {0:?} is online already; pick another ID or stop the other client first")]
    AlreadyOnline(ClientId),
    #[error(
        "client {id} asked to join but nothing consumes its inbox {inbox}: consume it first (an exclusive consumer), then join"
    )]
    InboxNotConsumed { id: ClientId, inbox: String },
    #[error(
        "recipient {to:?} has {pending} messages it has not read yet, the most the server keeps for one recipient (--max-pending {max}); try again once it has read some"
    )]
    MailboxFull {
        to: ClientId,
        pending: usize,
        max: usize,
    },
    #[error(
        "the history of {id} is {bytes} bytes ({messages} messages), over the server's reply limit of {max} bytes; every message is still in the server's log.txt (the server's --max-reply-bytes sets the limit)"
    )]
    ReplyTooLarge {
        id: ClientId,
        messages: usize,
        bytes: usize,
        max: usize,
    },
    #[error("{0}")]
    Unauthenticated(String),
    #[error(
        "ID {0} is claimed by another secret; pass --secret (or CHAT_SECRET) with the one it was registered with, or use another ID"
    )]
    WrongSecret(ClientId),
    #[error(
        "ID {0} was registered before IDs had secrets; register (join) it once with your secret to claim it"
    )]
    Unclaimed(ClientId),
    #[error("authenticated as {principal}, so this request may not act as {acting_as:?}")]
    PermissionDenied {
        principal: ClientId,
        acting_as: String,
    },
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("server is shutting down")]
    ShuttingDown,
    #[error(
        "data dir {dir} is in use by another server (lock file {lock}); stop it or choose another --data-dir"
    )]
    DataDirInUse { dir: String, lock: String },
    #[error("storage error in {path}: {source}")]
    Storage {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl ChatError {
    /// The error as both transports carry it to a client (a gRPC
    /// `SendOutcome`, an AMQP `Reply`).
    pub fn to_proto(&self) -> chat_proto::v1::Error {
        chat_proto::v1::Error {
            code: self.code() as i32,
            message: self.to_string(),
        }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidClientId(_)
            | Self::InvalidMessageId(_)
            | Self::EmptyText
            | Self::TextTooLong { .. }
            | Self::Malformed(_)
            | Self::InboxNotConsumed { .. } => ErrorCode::InvalidArgument,
            Self::UnknownRecipient(_) | Self::UnknownSender(_) => ErrorCode::NotFound,
            Self::AlreadyOnline(_) => ErrorCode::AlreadyExists,
            Self::Unauthenticated(_) | Self::WrongSecret(_) | Self::Unclaimed(_) => {
                ErrorCode::Unauthenticated
            }
            Self::PermissionDenied { .. } => ErrorCode::PermissionDenied,
            Self::MailboxFull { .. } | Self::ReplyTooLarge { .. } => ErrorCode::ResourceExhausted,
            Self::ShuttingDown => ErrorCode::Unavailable,
            Self::Storage { .. } | Self::DataDirInUse { .. } => ErrorCode::Internal,
        }
    }

    pub(crate) fn storage(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Storage {
            path: path.display().to_string(),
            source,
        }
    }
}

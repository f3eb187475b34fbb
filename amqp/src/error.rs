//! The crate's error type, and the one place where domain errors become
//! `Reply { error }` messages (server side) and where those become
//! [`ClientError`]s again (client side).
//!
//! [`ClientError`]: chat_core::ClientError

use chat_core::{ChatError, ErrorCode};
use chat_proto::v1 as pb;

#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    /// The broker refused or dropped something (connection, channel, declare).
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
    /// The chat itself failed (storage, validation).
    #[error(transparent)]
    Chat(#[from] ChatError),
    /// A name prefix that cannot be part of queue names.
    #[error("invalid namespace {0:?}: use 1-64 characters of A-Z, a-z, 0-9, '_', '-' or '.'")]
    InvalidNamespace(String),
    /// Another server consumes `<ns>.server` (its consumer is exclusive).
    #[error(
        "another amqp-server already serves namespace {namespace} on this broker (the request queue {queue} has an exclusive consumer); stop it or use another --namespace"
    )]
    NamespaceTaken { namespace: String, queue: String },
    /// A broker operation got no answer in time.
    #[error(
        "{what} on the broker at {url} timed out after {after:?}: the broker accepted the connection but does not answer; check `rabbitmqctl status` / the broker's logs"
    )]
    Timeout {
        what: String,
        url: String,
        after: std::time::Duration,
    },
    /// A queue exists with other arguments than this process declares it
    /// with: in practice, declared as another `x-queue-type`.
    #[error(
        "queue {queue} exists on the broker with other arguments than a {queue_type} queue ({detail}): every server and client of a namespace must use the same --queue-type (CHAT_AMQP_QUEUE_TYPE); to change it, delete the namespace's queues first"
    )]
    QueueTypeMismatch {
        queue: String,
        queue_type: crate::topology::QueueType,
        detail: String,
    },
    /// A broker URL that does not parse.
    #[error(
        "invalid broker URL {url}: {reason}; expected amqp://user:password@host:port/vhost (vhost URL-encoded: %2f is \"/\"), optionally with ?heartbeat=SECS"
    )]
    InvalidUrl { url: String, reason: String },
    /// None of several broker URLs answered; says why for each.
    #[error("no broker of the list answered: {0}")]
    NoBroker(String),
    /// The RabbitMQ management API refused or failed a call (per-client
    /// broker users); says which call and what to fix.
    #[error("{0}")]
    Management(String),
    /// The RabbitMQ management API does not answer (not enabled, wrong URL).
    #[error("{0}")]
    ManagementUnreachable(String),
    /// Per-client broker users are on, but the server lacks what it needs.
    #[error("{0}")]
    Config(String),
    /// The broker does not publish consumer events: the server could not
    /// see clients go offline.
    #[error(
        "the broker at {url} has no exchange amq.rabbitmq.event in vhost {vhost:?}: the amqp-server needs RabbitMQ's event exchange plugin to see clients go offline; enable it with `rabbitmq-plugins enable rabbitmq_event_exchange` (online, no restart; on every node of a cluster). The plugin publishes into the default vhost \"/\" unless its setting event_exchange.vhost names another: the server must use that vhost"
    )]
    EventsMissing { url: String, vhost: String },
    /// The broker answered, but the chat server is not there.
    #[error("{0}")]
    Unhealthy(String),
}

/// The `Reply` that tells a client why its request was refused.
pub fn error_reply(e: &ChatError) -> pb::Reply {
    pb::Reply {
        body: Some(pb::reply::Body::Error(e.to_proto())),
    }
}

pub(crate) fn error_reply_with(code: ErrorCode, message: String) -> pb::Reply {
    pb::Reply {
        body: Some(pb::reply::Body::Error(pb::Error {
            code: code as i32,
            message,
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_core::ClientError;

    #[test]
    fn a_domain_error_survives_the_round_trip() {
        let e = ChatError::EmptyText;
        let Some(pb::reply::Body::Error(body)) = error_reply(&e).body else {
            panic!("not an error reply");
        };
        match ClientError::from(body) {
            ClientError::Rejected { code, message } => {
                assert_eq!(code, ErrorCode::InvalidArgument);
                assert_eq!(message, "message text is empty");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

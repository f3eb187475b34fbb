//! chat-core: everything that is *chat*, written once for both transports.
//!
//! The gRPC and AMQP crates are adapters: they translate between their wire
//! and the types here. Domain rules (IDs, limits, who is registered, what was
//! sent, what is pending for whom), the durable record (`log.txt` and the
//! state journal) and the [`ChatClient`] trait all live in this crate, so
//! both stacks behave the same by construction. The command line, flags and
//! process helpers are the application layer's (`chat-cli`): nothing here
//! parses flags, talks to a terminal or writes to stdout.

pub mod backoff;
pub mod client;
pub mod data_lock;
pub mod error;
pub mod id;
pub mod identity;
pub mod journal;
pub mod limits;
pub mod log_line;
pub mod message;
pub mod metrics;
mod outbox;
#[cfg(feature = "proptest")]
mod proptest_config;
mod send_batch;
pub mod send_queue;
pub mod server;

pub use client::{
    Accepted, AckStream, ChatClient, ClientError, ConnectionState, Delivered, Delivery, Incoming,
    IncomingEvent, IncomingSink,
};
pub use error::{ChatError, ErrorCode};
pub use id::{ClientId, MessageId};
pub use identity::{Credentials, Principal, Secret, SecretHash};
pub use limits::Limits;
pub use message::{ClientInfo, Message, Receipt, SendCommand};
#[cfg(feature = "proptest")]
pub use proptest_config::proptest_config;
pub use send_batch::{AdmittedBatch, BatchOutcome};
pub use send_queue::{SendCarrier, Sends};
pub use server::{Admitted, ChatServer, Online, Outgoing, ServerConfig, Session};

//! chat-grpc: the gRPC (tonic) transport of the chat.
//!
//! A thin adapter: [`service`] exposes `chat_core::ChatServer` as the
//! `chat.v1.Chat` service, [`client`] implements `chat_core::ChatClient` over
//! one tonic channel, and [`status`] is the one place where domain errors
//! become gRPC statuses and back. [`keepalive`] is how both sides notice a
//! peer that went silent. [`sends`] carries a client's sends as `Send`
//! and `SendBatch` calls (chat-core's send queue decides when to batch).

pub mod client;
pub mod health;
pub mod keepalive;
pub mod sends;
pub mod service;
pub mod status;

pub use client::{GrpcClient, GrpcConfig};
pub use keepalive::{Keepalive, KeepaliveArgs};
pub use service::{run, run_with};

/// Default address the server listens on.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:50051";
/// Default server URL for clients.
pub const DEFAULT_SERVER_URL: &str = "http://127.0.0.1:50051";

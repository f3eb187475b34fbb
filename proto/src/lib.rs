//! The wire schema shared by both stacks.
//!
//! gRPC uses `chat.proto` natively; the AMQP stack carries the very same
//! protobuf messages as message bodies (see `docs/amqp.md`). One encoding for
//! both means the benchmarks compare transports, not serialisers.

#![allow(clippy::all, missing_docs, rust_2018_idioms)]

pub mod codec;

pub mod v1 {
    tonic::include_proto!("chat.v1");
}

/// Encoded `FileDescriptorSet` of `chat.proto`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/chat_descriptor.bin"));

pub use prost::Message;

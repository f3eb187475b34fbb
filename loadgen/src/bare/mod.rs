//! The transports' ceilings: relays with the chat's hops but none of its
//! logic (no validation, no `log.txt`, no journal, no mailboxes), served to
//! the unchanged chat clients. A chat's efficiency is its throughput over
//! its ceiling's, measured in the same run, so the ratio says how much the
//! chat itself costs on top of its transport.
//!
//! They run as a hidden `loadgen bare-server` child process, like the real
//! servers, so their CPU and memory are sampled the same way.

pub mod amqp;
pub mod grpc;

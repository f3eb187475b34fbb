//! The shared end-to-end scenarios (chat-testkit) against the AMQP stack:
//! the same test code as the gRPC stack's, with real `amqp-server` and
//! `amqp-client` processes on the real broker.

mod common;

use std::path::PathBuf;

use chat_amqp::{AmqpClient, AmqpConfig};
use chat_testkit::Stack;
use common::Namespace;

/// The AMQP stack: a namespace of its own on the broker at `AMQP_URL`,
/// deleted when the test ends.
struct Amqp {
    ns: Namespace,
}

/// Every client ID the scenarios use, so their queues are cleaned up.
const SCENARIO_IDS: &[&str] = &["alice", "bob", "carol", "observer", "nobody"];

impl Stack for Amqp {
    type Client = AmqpClient;

    async fn new() -> Self {
        let ns = Namespace::new();
        for id in SCENARIO_IDS {
            ns.track(id);
        }
        Self { ns }
    }

    fn server_bin(&self) -> PathBuf {
        env!("CARGO_BIN_EXE_amqp-server").into()
    }

    fn server_args(&self) -> Vec<String> {
        vec![
            "--amqp-url".into(),
            self.ns.url.clone(),
            "--namespace".into(),
            self.ns.name.clone(),
        ]
    }

    fn server_ready(&self, line: &str) -> bool {
        line.contains("serving requests")
    }

    fn client_bin(&self) -> PathBuf {
        env!("CARGO_BIN_EXE_amqp-client").into()
    }

    fn client_args(&self) -> Vec<String> {
        vec![
            "--amqp-url".into(),
            self.ns.url.clone(),
            "--namespace".into(),
            self.ns.name.clone(),
        ]
    }

    fn client_config(&self) -> AmqpConfig {
        self.ns.config()
    }
}

chat_testkit::chat_scenarios!(Amqp);

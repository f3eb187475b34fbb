//! The shared end-to-end scenarios (chat-testkit) against the AMQP stack:
//! the same test code as the gRPC stack's, with real `amqp-server` and
//! `amqp-client` processes on the real broker. Also: that the harness
//! (testkit's `Env` over this stack) leaves no queue behind.

mod common;
mod raw;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chat_amqp::{AmqpClient, AmqpConfig};
use chat_testkit::Stack;
use common::Namespace;

/// The AMQP stack: a namespace of its own on the broker at `AMQP_URL`,
/// deleted when the test ends. `PER_CLIENT`: server and clients run with
/// `--broker-auth per-client` (each client logs in as its own broker user,
/// created by the server through the management API), so every scenario
/// is proven in that mode too.
struct AmqpStack<const PER_CLIENT: bool> {
    ns: Namespace,
}

/// The default mode: one shared broker account.
type Amqp = AmqpStack<false>;

/// Every client ID the scenarios use, so their queues are cleaned up.
const SCENARIO_IDS: &[&str] = &["alice", "bob", "carol", "dave", "observer", "nobody"];

impl<const PER_CLIENT: bool> Stack for AmqpStack<PER_CLIENT> {
    type Client = AmqpClient;

    async fn new() -> Self {
        let ns = if PER_CLIENT {
            common::require_management().await;
            Namespace::per_client()
        } else {
            Namespace::new()
        };
        for id in SCENARIO_IDS {
            ns.track(id);
        }
        Self { ns }
    }

    fn server_bin(&self) -> PathBuf {
        env!("CARGO_BIN_EXE_amqp-server").into()
    }

    fn server_args(&self) -> Vec<String> {
        let mut args = self.client_args();
        if PER_CLIENT {
            args.extend(["--management-url".into(), common::management_url()]);
        }
        args
    }

    /// `amqp-server health`'s check: some server consumes `<ns>.server`.
    async fn probe(&self) -> Result<(), String> {
        let health = chat_amqp::health(&self.ns.config()).await;
        health.map(drop).map_err(|e| e.to_string())
    }

    fn client_bin(&self) -> PathBuf {
        env!("CARGO_BIN_EXE_amqp-client").into()
    }

    fn client_args(&self) -> Vec<String> {
        let mut args = vec![
            "--amqp-url".into(),
            self.ns.url.clone(),
            "--namespace".into(),
            self.ns.name.clone(),
        ];
        if PER_CLIENT {
            args.extend(["--broker-auth".into(), "per-client".into()]);
        }
        args
    }

    fn client_config(&self) -> AmqpConfig {
        self.ns.config()
    }

    fn client_config_batching(&self, batching: bool) -> AmqpConfig {
        AmqpConfig {
            batching,
            ..self.client_config()
        }
    }

    fn client_upstream(&self) -> String {
        common::broker_addr()
    }

    /// The broker's own heartbeat detection is what drops a silent client:
    /// the client asks for the short heartbeat.
    fn client_config_via(&self, via: SocketAddr, liveness: Duration) -> AmqpConfig {
        self.ns
            .config_via(&common::url_via(via))
            .with_heartbeat(heartbeat_secs(liveness))
    }

    fn liveness_env(liveness: Duration) -> Vec<(String, String)> {
        vec![(
            "CHAT_AMQP_HEARTBEAT".into(),
            heartbeat_secs(liveness).to_string(),
        )]
    }
}

fn heartbeat_secs(liveness: Duration) -> u16 {
    u16::try_from(liveness.as_secs().max(1)).unwrap_or(u16::MAX)
}

chat_testkit::chat_scenarios!(Amqp);

/// Every scenario again with per-client broker users.
mod per_client {
    use super::*;

    chat_testkit::chat_scenarios!(AmqpStack<true>);
}

/// testkit's `Env` stops its server before the namespace is deleted. A
/// server still running then sees the consumer of a client queue go (the
/// queue deleted under it, or the client closing late) and checks that
/// queue by declaring it, which would leave it on the broker for good.
/// Here alice's inbox is consumed by a raw connection that outlives the
/// `Env` and, unlike a client, does nothing when its consumer goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_env_leaves_no_client_queue_behind() {
    use chat_core::ChatClient;

    let env = chat_testkit::Env::<Amqp>::start().await;
    let (url, inbox) = (env.stack.ns.url.clone(), env.stack.ns.queue("client.alice"));
    let names = env.stack.ns.config().names().unwrap();
    let alice = env.client("alice").await;
    alice.register().await.unwrap();
    let mut peer = raw::RawPeer::connect(&env.stack.ns).await;
    let _consumer = peer.join_on(&inbox, "alice").await;
    drop(alice);

    drop(env);
    // Room for a server that would declare the queue again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let back = common::queue_exists(&url, &inbox).await;
    if back {
        let alice = ["alice".to_owned()];
        let _ = chat_amqp::topology::delete(&url, &names, &alice, false).await;
    }
    peer.close().await;
    assert!(!back, "{inbox} is back after the clean-up");
}

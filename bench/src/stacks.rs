//! Each transport's server started in-process on real sockets, and the two
//! timed client operations: one message A -> server -> B, and a burst.
//!
//! The server runs in the bench process (on loopback, or on the broker
//! given by `AMQP_URL`) so that a bench needs no binaries built beforehand
//! and no ports guessed; clients are the real [`ChatClient`] adapters, so
//! the figures include everything a user's client does (validation, IDs,
//! dedup by seq, acknowledgements).
//!
//! AMQP needs a broker. [`broker_answers`] checks first, so that a missing
//! broker is one clear line and skipped benches rather than a panic deep in
//! a reconnect loop. Each run takes a namespace of its own
//! (`bench-<12 hex>`), whose queues and exchange [`AmqpStack::stop`]
//! deletes, so repeated runs leave nothing behind on the broker.

use std::path::Path;
use std::time::Duration;

use chat_amqp::AmqpConfig;
use chat_core::journal::Durability;
use chat_core::{ChatClient, ClientError, ClientId, Incoming, IncomingEvent, Secret};
use chat_grpc::GrpcConfig;
use futures::{StreamExt as _, TryStreamExt as _};
use lapin::{Connection, ConnectionProperties};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::fixtures::open_server;

/// Sends a burst keeps in flight at once: enough to fill the AMQP server's
/// prefetch window (256) and to keep gRPC's HTTP/2 streams busy, without
/// thousands of futures contending for one connection.
pub const BURST_IN_FLIGHT: usize = 256;

/// How long a bench waits for a message before it gives up with a clear
/// panic instead of hanging (a slow 2-core machine under a parallel build
/// still delivers well within it).
pub const PATIENCE: Duration = Duration::from_secs(60);

/// How long the broker check waits for an answer.
const BROKER_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// The broker URL the AMQP benches use: `AMQP_URL`, or the local default.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| chat_amqp::DEFAULT_AMQP_URL.to_owned())
}

/// Whether an AMQP broker answers at `url`; `Err` says why not.
pub async fn broker_answers(url: &str) -> Result<(), String> {
    let attempt = tokio::time::timeout(
        BROKER_CHECK_TIMEOUT,
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await;
    match attempt {
        Ok(Ok(conn)) => {
            let _ = conn.close(200, "bench broker check".into()).await;
            Ok(())
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {BROKER_CHECK_TIMEOUT:?}")),
    }
}

/// A server task in this process and the way to stop it.
struct ServerTask {
    /// The server's data directory (log.txt, state.journal); removed on drop.
    _data: TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl ServerTask {
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(PATIENCE, &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

/// The gRPC server (`chat_grpc::run`) on `127.0.0.1:<ephemeral>`.
pub struct GrpcStack {
    pub url: String,
    server: ServerTask,
}

impl GrpcStack {
    /// Starts the server with its data directory under `scratch`.
    pub async fn start(scratch: &Path) -> Self {
        let data = tempfile::tempdir_in(scratch).expect("cannot create a data directory");
        let chat = open_server(data.path(), Durability::Os);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("cannot bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("bound address");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(e) = chat_grpc::run(listener, chat, shutdown).await {
                eprintln!("bench gRPC server failed: {e}");
            }
        });
        Self {
            url: format!("http://{addr}"),
            server: ServerTask {
                _data: data,
                stop: Some(stop),
                task,
            },
        }
    }

    pub fn config(&self) -> GrpcConfig {
        GrpcConfig::new(self.url.clone())
    }

    pub async fn stop(self) {
        self.server.stop().await;
    }
}

/// The AMQP server (`chat_amqp::run`) on a namespace of its own.
pub struct AmqpStack {
    pub config: AmqpConfig,
    /// Client IDs whose queues to delete at the end.
    clients: Vec<String>,
    server: ServerTask,
}

impl AmqpStack {
    /// Starts the server on a fresh namespace and waits until it consumes
    /// its request queue. `clients` are the IDs the bench will use (their
    /// queues are deleted by [`AmqpStack::stop`]).
    pub async fn start(url: &str, scratch: &Path, clients: &[&str]) -> Self {
        let tail = uuid::Uuid::new_v4().simple().to_string();
        let config = AmqpConfig::new(url, format!("bench-{}", &tail[..12]));
        let data = tempfile::tempdir_in(scratch).expect("cannot create a data directory");
        let chat = open_server(data.path(), Durability::Os);
        let (stop, stopped) = oneshot::channel::<()>();
        let for_server = config.clone();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(e) = chat_amqp::run(for_server, chat, shutdown).await {
                eprintln!("bench AMQP server failed: {e}");
            }
        });
        let ready = tokio::time::timeout(PATIENCE, async {
            while chat_amqp::health(&config).await.is_err() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert!(
            ready.is_ok(),
            "the in-process AMQP server did not start consuming within {PATIENCE:?}"
        );
        Self {
            config,
            clients: clients.iter().map(|c| (*c).to_owned()).collect(),
            server: ServerTask {
                _data: data,
                stop: Some(stop),
                task,
            },
        }
    }

    /// Stops the server, then deletes the namespace's queues and exchange.
    pub async fn stop(self) {
        self.server.stop().await;
        if let Ok(names) = chat_amqp::topology::Names::new(&self.config.namespace) {
            let _ =
                chat_amqp::topology::delete(&self.config.url, &names, &self.clients, true).await;
        }
    }
}

/// A registered sender and a joined (online) recipient on one stack.
pub struct Pair<C: ChatClient> {
    sender: C,
    /// Kept so that the recipient's connection lives as long as the pair.
    _recipient: C,
    to: ClientId,
    incoming: Incoming,
}

impl<C: ChatClient> Pair<C> {
    /// Connects `from` (registered, offline) and `to` (joined).
    pub async fn connect(config: &C::Config, from: &str, to: &str) -> Result<Self, ClientError> {
        let to = ClientId::parse(to)?;
        let recipient = C::connect(config, to.clone(), Secret::generate()).await?;
        let incoming = recipient.join().await?;
        let sender = C::connect(config, ClientId::parse(from)?, Secret::generate()).await?;
        sender.register().await?;
        Ok(Self {
            sender,
            _recipient: recipient,
            to,
            incoming,
        })
    }

    /// One message from the sender to the recipient: accepted by the
    /// server, then received (and acknowledged) by the recipient.
    pub async fn round_trip(&mut self, text: &str) {
        self.sender
            .send(&self.to, text)
            .await
            .expect("the server refused a bench message");
        next_message(&mut self.incoming).await;
    }

    /// `k` messages sent with [`BURST_IN_FLIGHT`] in flight, until the
    /// recipient has received (and acknowledged) every one of them.
    pub async fn burst(&mut self, k: usize, text: &str) {
        let Self {
            sender,
            to,
            incoming,
            ..
        } = self;
        let sends = futures::stream::iter(0..k)
            .map(|_| sender.send(to, text))
            .buffer_unordered(BURST_IN_FLIGHT)
            .try_for_each(|_| async { Ok(()) });
        let receives = async {
            for _ in 0..k {
                next_message(incoming).await;
            }
        };
        let (sent, ()) = tokio::join!(sends, receives);
        sent.expect("the server refused a bench message");
    }

    /// Closes the recipient's stream, carrying its last acknowledgements.
    pub async fn close(self) {
        self.incoming.close().await;
    }
}

/// Waits for the next chat message (skipping connection-state events) and
/// acknowledges it.
async fn next_message(incoming: &mut Incoming) {
    loop {
        match tokio::time::timeout(PATIENCE, incoming.recv()).await {
            Ok(Some(IncomingEvent::Message(delivery))) => {
                delivery.ack();
                return;
            }
            Ok(Some(IncomingEvent::State(_))) => {}
            Ok(None) => panic!("the recipient's incoming stream ended during a bench"),
            Err(_) => panic!("no message reached the recipient within {PATIENCE:?}"),
        }
    }
}

//! Test fixtures: a private namespace on the shared broker (deleted on drop,
//! even when the test fails), an in-process server, the real `amqp-server`
//! binary, and (testkit's) TCP proxy in front of the broker, which can cut
//! connections to simulate losing the broker without disturbing the other
//! tests that share it.
//!
//! `TEST_LOG=1` (with `RUST_LOG`) prints the library's logs while debugging.

#![allow(dead_code)]

pub mod inbox;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use chat_amqp::{AmqpClient, AmqpConfig};
use chat_core::{ChatClient, ClientId, IncomingEvent, Message};
use chat_testkit::InProcess;
use tokio::process::{Child, Command};

/// Generous: the broker and a 2-core machine shared with other builds.
pub const WAIT: Duration = Duration::from_secs(60);

pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| chat_amqp::DEFAULT_AMQP_URL.to_owned())
}

/// The RabbitMQ management API of the test broker (per-client broker
/// users): `CHAT_AMQP_MANAGEMENT_URL`, default the local broker's.
pub fn management_url() -> String {
    std::env::var("CHAT_AMQP_MANAGEMENT_URL")
        .unwrap_or_else(|_| "http://guest:guest@127.0.0.1:15672".to_owned())
}

/// Fails the test with what to do when the management API does not answer
/// (tests of per-client broker users need it; they are never skipped).
pub async fn require_management() {
    let api = chat_amqp::broker_users::Management::new(&management_url()).unwrap();
    if let Err(e) = api.check().await {
        panic!("this test needs the RabbitMQ management API: {e}");
    }
}

pub fn id(s: &str) -> ClientId {
    ClientId::parse(s).unwrap()
}

/// A namespace of its own for one test; its queues and exchange are
/// deleted when it is dropped. Make it the test's first local, so that it
/// drops after every server and client of the test: a server still running
/// would declare a client queue again when its consumer goes.
pub struct Namespace {
    pub name: String,
    pub url: String,
    clients: Mutex<Vec<String>>,
    /// Per-client broker users: their users are deleted on drop too.
    pub per_client: bool,
}

impl Namespace {
    pub fn new() -> Self {
        let tail = uuid::Uuid::new_v4().simple().to_string();
        Self {
            name: format!("test-{}", &tail[..12]),
            url: amqp_url(),
            clients: Mutex::new(Vec::new()),
            per_client: false,
        }
    }

    /// A namespace whose clients log in as their own broker users
    /// (`--broker-auth per-client`); those users are deleted on drop.
    pub fn per_client() -> Self {
        let mut ns = Self::new();
        ns.per_client = true;
        ns
    }

    /// Config for a client or server that talks to the broker directly.
    pub fn config(&self) -> AmqpConfig {
        self.config_via(&self.url)
    }

    pub fn config_via(&self, url: &str) -> AmqpConfig {
        let config = AmqpConfig::new(url, self.name.clone());
        if self.per_client {
            config
                .with_broker_auth(chat_amqp::BrokerAuth::PerClient)
                .with_management_url(management_url())
        } else {
            config
        }
    }

    /// Remembers `id`'s queue for clean-up.
    pub fn track(&self, id: &str) {
        self.clients.lock().unwrap().push(id.to_owned());
    }

    pub async fn client(&self, raw: &str) -> AmqpClient {
        self.client_with(raw, &self.config()).await
    }

    /// A client whose ID is registered (so it may send), not online.
    pub async fn registered(&self, raw: &str) -> AmqpClient {
        self.registered_with(raw, &self.config()).await
    }

    pub async fn registered_with(&self, raw: &str, config: &AmqpConfig) -> AmqpClient {
        let client = self.client_with(raw, config).await;
        client.register().await.unwrap();
        client
    }

    pub async fn client_with(&self, raw: &str, config: &AmqpConfig) -> AmqpClient {
        self.track(raw);
        AmqpClient::connect(config, id(raw), chat_testkit::secret_of(raw))
            .await
            .unwrap()
    }

    pub fn queue(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.name)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let url = self.url.clone();
        let ns = self.name.clone();
        let clients = std::mem::take(&mut *self.clients.lock().unwrap());
        let per_client = self.per_client;
        // Drop cannot be async, and may run inside a runtime: use a thread.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok(names) = chat_amqp::topology::Names::new(&ns) {
                    let _ = chat_amqp::topology::delete(&url, &names, &clients, true).await;
                    if per_client {
                        let api = management_url();
                        let users = chat_amqp::broker_users::delete_namespace_users(&api, &names);
                        if let Err(e) = users.await {
                            eprintln!("cannot delete the broker users of {ns}: {e}");
                        }
                    }
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// An AMQP server in this process (testkit's [`InProcess`] harness).
pub struct InProcessServer(InProcess<chat_amqp::AmqpError>);

impl InProcessServer {
    pub async fn start(config: AmqpConfig) -> Self {
        if std::env::var_os("TEST_LOG").is_some() {
            chat_cli::telemetry::init("info");
        }
        Self(InProcess::start(
            chat_core::limits::DEFAULT_MAX_PENDING,
            |chat, shutdown| chat_amqp::run(config, chat, shutdown),
        ))
    }

    /// The chat state it serves (its metrics, for one).
    pub fn chat(&self) -> &chat_core::ChatServer {
        &self.0.chat
    }

    /// Stops the server; it must end cleanly.
    pub async fn stop(self) {
        self.0.stop().await;
    }
}

/// Waits until some server consumes the namespace's request queue.
pub async fn wait_healthy(config: &AmqpConfig) {
    tokio::time::timeout(WAIT, async {
        while chat_amqp::health(config).await.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the server never came up");
}

/// The real `amqp-server` binary, killed and reaped when dropped.
pub struct ServerProcess {
    pub child: Child,
}

impl ServerProcess {
    pub fn spawn(url: &str, namespace: &str, data_dir: &Path) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_amqp-server"))
            .arg("--amqp-url")
            .arg(url)
            .arg("--namespace")
            .arg(namespace)
            .arg("--data-dir")
            .arg(data_dir)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("cannot start amqp-server");
        Self { child }
    }

    /// SIGKILL: no chance to flush, ack or say goodbye.
    pub async fn kill9(mut self) {
        self.child.kill().await.unwrap();
    }
}

impl Drop for ServerProcess {
    /// SIGKILL, then waits for the exit, as testkit's own `ServerProcess`
    /// does ([`chat_testkit::kill_and_reap`]): a test's namespace clean-up
    /// that follows must not race a server still running, which could
    /// declare a deleted client queue again.
    fn drop(&mut self) {
        chat_testkit::kill_and_reap(&mut self.child);
    }
}

/// Receives `n` messages (acknowledging each), skipping state events.
pub async fn recv_n(incoming: &mut chat_core::Incoming, n: usize) -> Vec<Message> {
    let mut got = Vec::new();
    while got.len() < n {
        let event = tokio::time::timeout(WAIT, incoming.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out with {} of {n} messages: {got:?}", got.len()))
            .expect("incoming stream ended");
        if let IncomingEvent::Message(d) = event {
            got.push(d.message.clone());
            d.ack();
        }
    }
    got
}

/// Asserts nothing more arrives for a while (a check for duplicates, not a
/// timing assertion: a late duplicate would fail it, an early one too).
pub async fn assert_quiet(incoming: &mut chat_core::Incoming, for_: Duration) {
    let end = tokio::time::Instant::now() + for_;
    loop {
        match tokio::time::timeout_at(end, incoming.recv()).await {
            Err(_) => return,
            Ok(Some(IncomingEvent::Message(d))) => {
                panic!("unexpected extra message {:?}", d.message)
            }
            Ok(Some(IncomingEvent::State(_))) => {}
            Ok(None) => return,
        }
    }
}

/// testkit's TCP proxy in front of the broker: `cut` drops every
/// connection through it (as a network failure or broker restart would),
/// `refuse` makes it turn new connections away (broker down).
pub struct Proxy {
    pub addr: SocketAddr,
    inner: chat_testkit::proxy::Proxy,
}

impl Proxy {
    pub async fn start() -> Self {
        let inner = chat_testkit::proxy::Proxy::start(broker_addr())
            .await
            .expect("proxy starts");
        Self {
            addr: inner.addr(),
            inner,
        }
    }

    /// The broker URL, pointed at this proxy.
    pub fn url(&self) -> String {
        url_via(self.addr)
    }

    pub fn cut(&self) {
        self.inner.cut_all();
    }

    pub fn refuse(&self, on: bool) {
        self.inner.refuse(on);
    }

    /// Holds every byte on every connection, open and new, while `on`
    /// (a connection attempt through it hangs until released).
    pub fn set_frozen(&self, on: bool) {
        self.inner.set_frozen(on);
    }
}

/// Whether `queue` exists on the broker at `url` (a passive declare, on a
/// connection of its own).
pub async fn queue_exists(url: &str, queue: &str) -> bool {
    use lapin::options::QueueDeclareOptions;
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let found = ch
        .queue_declare(queue.into(), passive, lapin::types::FieldTable::default())
        .await
        .is_ok();
    let _ = conn.close(200, "done".into()).await;
    found
}

/// The broker URL with its host and port replaced by `addr` (a proxy's).
pub fn url_via(addr: SocketAddr) -> String {
    let url = amqp_url();
    let (scheme, rest) = url.split_once("://").unwrap();
    let (userinfo, rest) = rest.rsplit_once('@').map_or(("", rest), |(u, r)| (u, r));
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    let at = if userinfo.is_empty() { "" } else { "@" };
    format!("{scheme}://{userinfo}{at}{addr}{path}")
}

/// `host:port` of the broker at [`amqp_url`].
pub fn broker_addr() -> String {
    let url = amqp_url();
    let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let host = rest.split('/').next().unwrap_or(rest);
    if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5672")
    }
}

//! Test environments: a stack's server as a real child process over a
//! temporary data directory, plus clients through the trait or the binary.
//! Every process is killed when its handle drops, so a failing test leaves
//! nothing running.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_core::{ChatClient, ClientId, Incoming, IncomingEvent, Message, Secret};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::PATIENCE;

/// One transport, as the scenarios need to know it.
pub trait Stack: Sized + Send + Sync + 'static {
    type Client: ChatClient;

    /// A fresh, isolated environment (e.g. its own AMQP names), so tests can
    /// run in parallel.
    fn new() -> impl std::future::Future<Output = Self> + Send;

    /// Path of the server binary.
    fn server_bin(&self) -> PathBuf;
    /// Arguments for the server besides `--data-dir`; after a restart the
    /// server must be reachable at the same place.
    fn server_args(&self) -> Vec<String>;
    /// Environment for the server process.
    fn server_env(&self) -> Vec<(String, String)> {
        Vec::new()
    }
    /// Sees each stderr line of a starting server, for what the stack must
    /// learn from the log (gRPC: the port a server told to listen on port 0
    /// bound). Readiness is never decided here: see [`Self::probe`].
    fn server_log(&self, _line: &str) {}
    /// Asks the server's health probe once: `Ok` when it answers that the
    /// chat is serving (gRPC's SERVING, `amqp-server health`'s ok), `Err`
    /// with the reason otherwise (nothing there yet, not serving).
    fn probe(&self) -> impl std::future::Future<Output = Result<(), String>> + Send;

    /// Path of the client binary.
    fn client_bin(&self) -> PathBuf;
    /// Connection arguments for the client binary (`--server URL`, ...).
    fn client_args(&self) -> Vec<String>;
    /// Environment for client processes.
    fn client_env(&self) -> Vec<(String, String)> {
        Vec::new()
    }
    /// Connection settings for trait clients.
    fn client_config(&self) -> <Self::Client as ChatClient>::Config;
    /// [`Self::client_config`] with the client's adaptive batching of
    /// sends on or off (whatever `CHAT_BATCHING` says).
    fn client_config_batching(&self, batching: bool) -> <Self::Client as ChatClient>::Config;

    /// `host:port` that this stack's clients connect to: the server, or
    /// the broker. Tests put a [`crate::proxy::Proxy`] in front of it.
    fn client_upstream(&self) -> String;
    /// Trait-client settings that reach the stack through `via` (a proxy
    /// in front of [`Self::client_upstream`]), and that make the other end
    /// notice after about `liveness` that this client went silent, where
    /// the client decides that (an AMQP heartbeat is negotiated by it).
    fn client_config_via(
        &self,
        via: std::net::SocketAddr,
        liveness: Duration,
    ) -> <Self::Client as ChatClient>::Config;
    /// Server environment under which a client that went silent loses its
    /// connection (and its ID goes offline) after about `liveness`, where
    /// the server decides that (gRPC keepalive).
    fn liveness_env(liveness: Duration) -> Vec<(String, String)>;
}

/// How often a starting server's health probe is asked.
const PROBE_INTERVAL: Duration = Duration::from_millis(50);

/// A running server binary. Killed on drop, and gone when the drop
/// returns: nothing it does can come after.
pub struct ServerProcess {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Drop for ServerProcess {
    /// SIGKILL, then waits (blocking, at most [`PATIENCE`]) for the exit, so
    /// that whatever the test cleans up next (an AMQP namespace's queues)
    /// is not touched again by a server still running. A server that was
    /// waited for already ([`Self::kill9`], [`Self::terminate`]) returns at
    /// once.
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
    }
}

/// SIGKILLs `child` unless it has exited, then waits (blocking, at most
/// [`PATIENCE`]) until it has: for the `Drop` of a test's server process,
/// so that nothing the server does can come after the drop.
pub fn kill_and_reap(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let _ = child.start_kill();
    let deadline = std::time::Instant::now() + PATIENCE;
    while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl ServerProcess {
    pub async fn start<S: Stack>(stack: &S, data_dir: &Path) -> Self {
        Self::start_with_env(stack, data_dir, &[]).await
    }

    /// [`Self::start`] with extra environment variables (server flags such
    /// as `CHAT_MAX_REPLY_BYTES`) on top of the stack's own.
    pub async fn start_with_env<S: Stack>(
        stack: &S,
        data_dir: &Path,
        extra_env: &[(String, String)],
    ) -> Self {
        wait_gone(stack).await;
        let mut cmd = server_command(stack, data_dir);
        cmd.envs(extra_env.iter().cloned()).stdout(Stdio::null());
        let mut child = cmd.spawn().expect("server binary starts");
        let stderr: Arc<Mutex<Vec<String>>> = Arc::default();
        let mut lines = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
        let sink = stderr.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        let mut server = Self { child, stderr };
        server.wait_ready(stack).await;
        server
    }

    /// Waits until the stack's health probe says the server is serving,
    /// passing each new log line to the stack on the way.
    async fn wait_ready<S: Stack>(&mut self, stack: &S) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let mut seen = 0;
        loop {
            let new: Vec<String> = self.stderr.lock().unwrap()[seen..].to_vec();
            seen += new.len();
            new.iter().for_each(|l| stack.server_log(l));
            let answer = stack.probe().await;
            if answer.is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "server exited with {status} before it was ready:\n{}",
                    self.stderr()
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "server not ready within {PATIENCE:?} ({answer:?}):\n{}",
                self.stderr()
            );
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    /// Where the server serves its metrics, from its `metrics on
    /// http://ADDR/metrics` log line (waited for: the probe may answer
    /// before that line has been read from the pipe).
    pub async fn metrics_addr(&self) -> SocketAddr {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(addr) = self.logged_metrics_addr() {
                return addr;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the server never said where its metrics are:\n{}",
                self.stderr()
            );
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    fn logged_metrics_addr(&self) -> Option<SocketAddr> {
        let log = self.stderr.lock().unwrap();
        log.iter().find_map(|l| {
            let rest = l.split("metrics on http://").nth(1)?;
            rest.split(chat_core::metrics::PATH).next()?.parse().ok()
        })
    }

    /// Everything the server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// SIGKILL: the process gets no chance to flush or say goodbye.
    pub async fn kill9(mut self) {
        self.child.start_kill().expect("SIGKILL");
        let _ = self.child.wait().await;
    }

    /// SIGTERM, then waits for the exit.
    pub async fn terminate(mut self) -> ExitStatus {
        let pid = self.child.id().expect("running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("server ignored SIGTERM:\n{}", self.stderr()))
            .expect("wait")
    }
}

/// The stack's server binary with its arguments and environment, over
/// `data_dir`; stderr piped, killed on drop.
pub fn server_command<S: Stack>(stack: &S, data_dir: &Path) -> Command {
    let mut cmd = Command::new(stack.server_bin());
    cmd.args(stack.server_args())
        .arg("--data-dir")
        .arg(data_dir)
        .envs(stack.server_env())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Waits until nothing answers the stack's probe, so that the next
/// "serving" is the new server's: after a `kill -9` the broker may count
/// the dead server's consumer for a moment.
async fn wait_gone<S: Stack>(stack: &S) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while stack.probe().await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "an earlier server still answers the health probe after {PATIENCE:?}"
        );
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// The secret test clients (trait and binary) use for `id`, so that a test
/// can come back as the same client; impostors use [`Env::client_with_secret`].
/// (Tests also pass invalid IDs; their secret stays valid.)
pub fn secret_of(id: &str) -> Secret {
    let id: String = id
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect();
    Secret::parse(&format!("testkit-secret-of-{id}")).expect("valid test secret")
}

/// A stack, its server process and the server's data directory.
pub struct Env<S: Stack> {
    pub stack: S,
    pub dir: tempfile::TempDir,
    pub server: Option<ServerProcess>,
    /// `XDG_STATE_HOME` of the client binaries (their state files).
    pub client_state: tempfile::TempDir,
}

impl<S: Stack> Drop for Env<S> {
    /// The server goes first, before the stack cleans up after itself: an
    /// AMQP server still running while its namespace is deleted sees a
    /// client's consumer go (the client closing, or its queue deleted) and
    /// checks that queue by declaring it, which brings the queue back for
    /// good.
    fn drop(&mut self) {
        drop(self.server.take());
    }
}

impl<S: Stack> Env<S> {
    pub async fn start() -> Self {
        Self::start_with_env(&[]).await
    }

    /// [`Self::start`] with extra environment variables for the server.
    pub async fn start_with_env(extra_env: &[(&str, &str)]) -> Self {
        let stack = S::new().await;
        let dir = tempfile::tempdir().expect("temp dir");
        let extra: Vec<(String, String)> = extra_env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let server = ServerProcess::start_with_env(&stack, dir.path(), &extra).await;
        Self {
            stack,
            dir,
            server: Some(server),
            client_state: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts the server again on the same data directory and endpoint.
    pub async fn restart(&mut self) {
        assert!(self.server.is_none(), "stop the server first");
        self.server = Some(ServerProcess::start(&self.stack, self.dir.path()).await);
    }

    pub fn take_server(&mut self) -> ServerProcess {
        self.server.take().expect("server running")
    }

    /// A connected (not yet online) trait client, with `id`'s test secret.
    pub async fn client(&self, id: &str) -> S::Client {
        self.client_with_secret(id, secret_of(id)).await
    }

    /// A connected trait client that presents `secret` for `id`.
    pub async fn client_with_secret(&self, id: &str, secret: Secret) -> S::Client {
        let id = ClientId::parse(id).expect("valid test id");
        tokio::time::timeout(
            PATIENCE,
            S::Client::connect(&self.stack.client_config(), id, secret),
        )
        .await
        .expect("connect in time")
        .expect("connect")
    }

    /// A client that is online, with its incoming stream.
    pub async fn online(&self, id: &str) -> (S::Client, Incoming) {
        let client = self.client(id).await;
        let incoming = tokio::time::timeout(PATIENCE, client.join())
            .await
            .expect("join in time")
            .expect("join");
        (client, incoming)
    }

    pub fn log_txt(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log.txt")).unwrap_or_default()
    }

    /// The client binary with this stack's connection arguments, `id`'s
    /// test secret and a state directory of this environment's own.
    pub fn cli(&self, id: &str) -> Command {
        let mut cmd = self.cli_without_secret(id);
        cmd.env("CHAT_SECRET", secret_of(id).expose());
        cmd
    }

    /// [`Self::cli`] without `CHAT_SECRET`: the binary generates a secret
    /// and keeps it in its state file.
    pub fn cli_without_secret(&self, id: &str) -> Command {
        let mut cmd = Command::new(self.stack.client_bin());
        cmd.args(self.stack.client_args())
            .args(["--id", id])
            .envs(self.stack.client_env())
            .env("XDG_STATE_HOME", self.client_state.path())
            .env_remove("CHAT_SECRET")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Runs the client binary to completion (within [`PATIENCE`]).
    pub async fn run_cli(&self, id: &str, args: &[&str]) -> std::process::Output {
        let child = self
            .cli(id)
            .args(args)
            .spawn()
            .expect("client binary starts");
        tokio::time::timeout(PATIENCE, child.wait_with_output())
            .await
            .expect("client finishes in time")
            .expect("client output")
    }
}

/// Receives `n` messages (acknowledging each), skipping connection events.
pub async fn recv_n(incoming: &mut Incoming, n: usize) -> Vec<Message> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match tokio::time::timeout(PATIENCE, incoming.recv()).await {
            Ok(Some(IncomingEvent::Message(d))) => {
                out.push(d.message.clone());
                d.ack();
            }
            Ok(Some(IncomingEvent::State(_))) => {}
            Ok(None) => panic!("incoming stream ended after {} of {n} messages", out.len()),
            Err(_) => panic!(
                "only {} of {n} messages arrived within {PATIENCE:?}",
                out.len()
            ),
        }
    }
    out
}

/// Asserts that no further message arrives within `quiet` (used after the
/// expected ones, to catch duplicates; a bound on waiting, not on speed).
pub async fn assert_no_more(incoming: &mut Incoming, quiet: Duration) {
    let deadline = tokio::time::Instant::now() + quiet;
    loop {
        match tokio::time::timeout_at(deadline, incoming.recv()).await {
            Err(_) | Ok(None) => return,
            Ok(Some(IncomingEvent::State(_))) => {}
            Ok(Some(IncomingEvent::Message(d))) => {
                panic!("unexpected extra message: {:?}", d.message)
            }
        }
    }
}

/// Polls `check` until it holds (or panics with `what` after [`PATIENCE`]).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

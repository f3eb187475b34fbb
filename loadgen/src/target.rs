//! The systems under test: started as child processes (`--spawn`, and
//! always for the bare ceilings, which are loadgen's own) or reached by URL
//! (the compose services, a remote host).
//!
//! A spawned chat server gets a fresh data directory and, on AMQP, a fresh
//! namespace, deleted from the broker when it stops. Every child is killed
//! if loadgen exits early (`kill_on_drop`).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use chat_amqp::{AmqpConfig, QueueType};
use chat_grpc::GrpcConfig;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::scenario::StackKind;

/// How long a server may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// The server flag that turns its metrics endpoint on.
const METRICS_FLAG: &str = "--metrics-listen";
/// How long a server may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Where the systems are, and how to start them.
#[derive(Clone, Debug, clap::Args)]
pub struct TargetArgs {
    /// Start grpc-server / amqp-server as child processes (fresh data dir,
    /// fresh AMQP namespace) instead of using running ones.
    #[arg(long, env = "LOADGEN_SPAWN")]
    pub spawn: bool,
    /// The running gRPC chat server (without --spawn).
    #[arg(long, env = "LOADGEN_GRPC_URL", default_value = chat_grpc::DEFAULT_SERVER_URL)]
    pub grpc_url: String,
    /// The broker, for the AMQP chat and the amqp-bare ceiling: one URL, or
    /// a comma-separated list of the nodes of one cluster.
    #[arg(long, env = "AMQP_URL", default_value = chat_amqp::DEFAULT_AMQP_URL)]
    pub amqp_url: String,
    /// Type of the AMQP chat's durable queues (classic, or quorum on a
    /// cluster); passed to spawned servers and used by every client.
    #[arg(long, env = "CHAT_AMQP_QUEUE_TYPE", value_enum, default_value_t = QueueType::Classic)]
    pub queue_type: QueueType,
    /// Shell command that stops one broker node, for the `stop-node` fault
    /// (e.g. `docker stop chatbench-cluster_rabbit2_1`).
    #[arg(long, env = "LOADGEN_NODE_STOP_CMD")]
    pub node_stop_cmd: Option<String>,
    /// Shell command that starts that node again after the downtime.
    #[arg(long, env = "LOADGEN_NODE_START_CMD")]
    pub node_start_cmd: Option<String>,
    /// Namespace of the running AMQP chat server (without --spawn).
    #[arg(long, env = "CHAT_AMQP_NAMESPACE", default_value = chat_amqp::DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Where grpc-server and amqp-server are (default: next to loadgen).
    #[arg(long, env = "LOADGEN_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Durability of spawned chat servers (`os` or `fsync`).
    #[arg(long, env = "LOADGEN_DURABILITY", default_value = "os")]
    pub durability: String,
}

impl TargetArgs {
    /// How clients reach the AMQP chat of namespace `ns`.
    pub fn amqp_config(&self, ns: String) -> AmqpConfig {
        AmqpConfig::new(self.amqp_url.clone(), ns).with_queue_type(self.queue_type)
    }

    /// The broker side of a row's `server_settings`: the queue type and how
    /// many broker URLs (cluster nodes) the chat was given.
    pub fn amqp_settings(&self) -> String {
        let nodes = chat_amqp::brokers::Brokers::new(&self.amqp_url).len();
        format!("queue_type={} brokers={nodes}", self.queue_type)
    }
}

/// How clients reach one system.
#[derive(Clone, Debug)]
pub enum Endpoint {
    Grpc(GrpcConfig),
    Amqp(AmqpConfig),
}

/// A system ready for clients; stops (and cleans up) with [`Server::stop`].
pub struct Server {
    pub stack: StackKind,
    pub endpoint: Endpoint,
    child: Mutex<Option<Child>>,
    /// How the child was started (binary and flags, the listen address made
    /// fixed), to start it again after a `kill-server` fault.
    recipe: Option<(PathBuf, Vec<String>)>,
    /// Kept until the server stops; removed on drop.
    _data_dir: Option<tempfile::TempDir>,
    /// The namespace to delete from the broker afterwards (spawned only).
    own_namespace: bool,
    log: Arc<Mutex<VecDeque<String>>>,
    /// Server flags worth recording with each row.
    pub settings: String,
    /// The server's `/metrics` endpoint (spawned chat servers only).
    pub metrics: Option<std::net::SocketAddr>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("stack", &self.stack)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

fn bin_dir(args: &TargetArgs) -> anyhow::Result<PathBuf> {
    if let Some(d) = &args.bin_dir {
        return Ok(d.clone());
    }
    let exe = std::env::current_exe().context("cannot find loadgen's own path")?;
    Ok(exe.parent().map(Path::to_path_buf).unwrap_or_default())
}

fn binary(args: &TargetArgs, name: &str) -> anyhow::Result<PathBuf> {
    let dir = bin_dir(args)?;
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{name} not found in {}: build every binary first (`cargo build --release`), or point --bin-dir at them",
            dir.display()
        );
    }
    Ok(path)
}

/// The loadgen binary that serves the bare relays: the one in `--bin-dir`
/// when there is one (tests), else this very program.
fn loadgen_exe(args: &TargetArgs) -> anyhow::Result<PathBuf> {
    if let Some(dir) = &args.bin_dir
        && dir.join("loadgen").exists()
    {
        return Ok(dir.join("loadgen"));
    }
    std::env::current_exe().context("cannot find loadgen's own path")
}

/// A short random tag, unique enough to keep runs apart on one broker.
pub fn fresh_tag() -> String {
    format!("lg{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

impl Server {
    /// Makes `stack` ready: spawns it when asked (or when it is a ceiling),
    /// else checks that the running one answers.
    pub async fn start(
        stack: StackKind,
        args: &TargetArgs,
        max_text_bytes: usize,
    ) -> anyhow::Result<Self> {
        match stack {
            StackKind::GrpcBare => Self::start_grpc_bare(args).await,
            StackKind::AmqpBare => Self::start_amqp_bare(args).await,
            StackKind::Grpc if args.spawn => Self::spawn_grpc(args, max_text_bytes).await,
            StackKind::Amqp if args.spawn => Self::spawn_amqp(args, max_text_bytes).await,
            StackKind::Grpc => Self::reach_grpc(args).await,
            StackKind::Amqp => Self::reach_amqp(args).await,
        }
    }

    /// The gRPC ceiling: loadgen's `bare-server grpc` on a free port.
    async fn start_grpc_bare(args: &TargetArgs) -> anyhow::Result<Self> {
        let exe = loadgen_exe(args)?;
        let mut s = Self::spawn(
            StackKind::GrpcBare,
            &exe,
            &["bare-server", "grpc", "--listen", "127.0.0.1:0"],
            None,
        )
        .await?;
        let addr = s.wait_for_line("listening on ").await?;
        s.endpoint = Endpoint::Grpc(GrpcConfig::new(format!("http://{addr}")));
        Ok(s)
    }

    /// The AMQP ceiling: loadgen's `bare-server amqp` relay on a fresh
    /// namespace of the broker.
    async fn start_amqp_bare(args: &TargetArgs) -> anyhow::Result<Self> {
        let exe = loadgen_exe(args)?;
        let ns = format!("{}-bare", fresh_tag());
        let mut s = Self::spawn(
            StackKind::AmqpBare,
            &exe,
            &[
                "bare-server",
                "amqp",
                "--amqp-url",
                &args.amqp_url,
                "--namespace",
                &ns,
                "--queue-type",
                args.queue_type.as_str(),
            ],
            None,
        )
        .await?;
        s.wait_for_line("relay serving").await?;
        s.endpoint = Endpoint::Amqp(args.amqp_config(ns));
        s.own_namespace = true;
        Ok(s)
    }

    /// A grpc-server of its own (fresh data dir, free ports), once healthy.
    async fn spawn_grpc(args: &TargetArgs, max_text_bytes: usize) -> anyhow::Result<Self> {
        let bin = binary(args, "grpc-server")?;
        let dir = tempfile::Builder::new().prefix("loadgen-grpc-").tempdir()?;
        let max = max_text_bytes.to_string();
        let flags = [
            "--listen",
            "127.0.0.1:0",
            "--max-text-bytes",
            &max,
            "--durability",
            &args.durability,
            METRICS_FLAG,
            "127.0.0.1:0",
        ];
        let mut s = Self::spawn(StackKind::Grpc, &bin, &flags, Some(dir)).await?;
        let addr = s.wait_for_line("listening on ").await?;
        // A restart must come back at the same address.
        s.fix_flag("--listen", &addr);
        s.find_metrics().await?;
        let url = format!("http://{addr}");
        s.wait_ready(|| chat_grpc::health::check(&url, Duration::from_secs(2)))
            .await?;
        s.endpoint = Endpoint::Grpc(GrpcConfig::new(url));
        s.settings = format!("durability={} max_text_bytes={max}", args.durability);
        Ok(s)
    }

    /// An amqp-server of its own (fresh data dir, fresh namespace), once
    /// healthy.
    async fn spawn_amqp(args: &TargetArgs, max_text_bytes: usize) -> anyhow::Result<Self> {
        let bin = binary(args, "amqp-server")?;
        let dir = tempfile::Builder::new().prefix("loadgen-amqp-").tempdir()?;
        let ns = fresh_tag();
        let max = max_text_bytes.to_string();
        let flags = [
            "--amqp-url",
            &args.amqp_url,
            "--namespace",
            &ns,
            "--queue-type",
            args.queue_type.as_str(),
            "--max-text-bytes",
            &max,
            "--durability",
            &args.durability,
            METRICS_FLAG,
            "127.0.0.1:0",
        ];
        let mut s = Self::spawn(StackKind::Amqp, &bin, &flags, Some(dir)).await?;
        s.find_metrics().await?;
        let config = args.amqp_config(ns);
        let c = config.clone();
        s.wait_ready(|| async {
            chat_amqp::health(&c)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await?;
        s.endpoint = Endpoint::Amqp(config);
        s.own_namespace = true;
        s.settings = format!(
            "durability={} max_text_bytes={max} {}",
            args.durability,
            args.amqp_settings()
        );
        Ok(s)
    }

    /// The running grpc-server at `--grpc-url`, if it answers.
    async fn reach_grpc(args: &TargetArgs) -> anyhow::Result<Self> {
        chat_grpc::health::check(&args.grpc_url, Duration::from_secs(5))
            .await
            .map_err(|e| anyhow::anyhow!("{e} (start grpc-server there, or pass --spawn)"))?;
        Ok(Self::external(
            StackKind::Grpc,
            Endpoint::Grpc(GrpcConfig::new(args.grpc_url.clone())),
        ))
    }

    /// The running amqp-server of `--namespace`, if it answers.
    async fn reach_amqp(args: &TargetArgs) -> anyhow::Result<Self> {
        let config = args.amqp_config(args.namespace.clone());
        chat_amqp::health(&config).await.map_err(|e| {
            anyhow::anyhow!(
                "{e} (start amqp-server for namespace {:?}, or pass --spawn)",
                args.namespace
            )
        })?;
        Ok(Self::external(StackKind::Amqp, Endpoint::Amqp(config)))
    }

    /// A system someone else started (a test's in-process server). With
    /// `own_namespace`, [`Server::stop`] deletes its AMQP names.
    pub fn at(stack: StackKind, endpoint: Endpoint, own_namespace: bool) -> Self {
        let mut s = Self::external(stack, endpoint);
        s.own_namespace = own_namespace;
        s
    }

    fn external(stack: StackKind, endpoint: Endpoint) -> Self {
        Self {
            stack,
            endpoint,
            child: Mutex::new(None),
            recipe: None,
            _data_dir: None,
            own_namespace: false,
            log: Arc::default(),
            settings: "external".into(),
            metrics: None,
        }
    }

    /// Makes `flag`'s value `value` in the restart recipe.
    fn fix_flag(&mut self, flag: &str, value: &str) {
        if let Some((_, flags)) = &mut self.recipe
            && let Some(i) = flags.iter().position(|f| f == flag)
            && let Some(v) = flags.get_mut(i + 1)
        {
            *v = value.to_owned();
        }
    }

    /// Reads where the spawned server serves its metrics (its log line),
    /// and keeps that port for a restart.
    async fn find_metrics(&mut self) -> anyhow::Result<()> {
        let line = self.wait_for_line("metrics on http://").await?;
        let addr = line
            .split(chat_core::metrics::PATH)
            .next()
            .unwrap_or_default()
            .to_owned();
        let parsed = addr.parse().with_context(|| {
            format!(
                "{} logged an unreadable metrics address {line:?}",
                self.stack
            )
        })?;
        self.fix_flag(METRICS_FLAG, &addr);
        self.metrics = Some(parsed);
        Ok(())
    }

    /// The server's metrics now; `None` (with a warning) when it has no
    /// endpoint or does not answer, so a run never fails for its figures.
    pub async fn scrape(&self) -> Option<chat_core::metrics::Scrape> {
        let addr = self.metrics?;
        match chat_core::metrics::scrape(addr).await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(stack = %self.stack, "cannot read the server's metrics: {e}");
                None
            }
        }
    }

    async fn spawn(
        stack: StackKind,
        bin: &Path,
        flags: &[&str],
        data_dir: Option<tempfile::TempDir>,
    ) -> anyhow::Result<Self> {
        let mut flags: Vec<String> = flags.iter().map(|f| (*f).to_owned()).collect();
        if let Some(d) = &data_dir {
            flags.push("--data-dir".into());
            flags.push(d.path().display().to_string());
        }
        let log: Arc<Mutex<VecDeque<String>>> = Arc::default();
        let child = launch(bin, &flags, &log)?;
        let mut s = Self::external(stack, Endpoint::Grpc(GrpcConfig::new("")));
        s.child = Mutex::new(Some(child));
        s.recipe = Some((bin.to_owned(), flags));
        s._data_dir = data_dir;
        s.log = log;
        s.settings = String::new();
        Ok(s)
    }

    /// SIGKILL; returns once the process is gone.
    pub async fn kill9(&self) -> anyhow::Result<()> {
        if self.recipe.is_none() {
            bail!("kill-server needs a server loadgen started (--spawn)");
        }
        let old = self.child.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut child) = old {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        Ok(())
    }

    /// After [`Server::kill9`]: the same binary with the same flags, data
    /// and address after `downtime`; returns once it is healthy again.
    pub async fn restart(&self, downtime: Duration) -> anyhow::Result<()> {
        let Some((bin, flags)) = &self.recipe else {
            bail!("kill-server needs a server loadgen started (--spawn)");
        };
        tokio::time::sleep(downtime).await;
        let child = launch(bin, flags, &self.log)?;
        *self.child.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            let ready = match &self.endpoint {
                Endpoint::Grpc(c) => chat_grpc::health::check(&c.server, Duration::from_secs(2))
                    .await
                    .is_ok(),
                Endpoint::Amqp(c) => chat_amqp::health(c).await.is_ok(),
            };
            if ready {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "{} did not come back within {READY_TIMEOUT:?}:\n{}",
                    self.stack,
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process ID, when loadgen started it.
    pub fn pid(&self) -> Option<i32> {
        let child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        child.as_ref().and_then(Child::id).map(|p| p as i32)
    }

    fn log_text(&self) -> String {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        let status = match self.child.get_mut().unwrap_or_else(|p| p.into_inner()) {
            Some(child) => child.try_wait().ok().flatten(),
            None => None,
        };
        if let Some(status) = status {
            bail!(
                "{} exited with {status} before it was ready:\n{}",
                self.stack,
                self.log_text()
            );
        }
        Ok(())
    }

    /// Waits for a stderr line containing `marker`; returns what follows it.
    async fn wait_for_line(&mut self, marker: &str) -> anyhow::Result<String> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            let found = self
                .log
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .find_map(|l| l.split_once(marker).map(|(_, rest)| rest.trim().to_owned()));
            if let Some(rest) = found {
                return Ok(rest);
            }
            self.check_alive()?;
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "{} not ready within {READY_TIMEOUT:?}:\n{}",
                    self.stack,
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls a health probe until it passes.
    async fn wait_ready<F, Fut>(&mut self, probe: F) -> anyhow::Result<()>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            let why = match probe().await {
                Ok(()) => return Ok(()),
                Err(why) => why,
            };
            self.check_alive()?;
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "{} not healthy within {READY_TIMEOUT:?}: {why}\n{}",
                    self.stack,
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the process (SIGTERM, then SIGKILL) and deletes what it left on
    /// the broker. `client_ids` are the queues the runs created.
    pub async fn stop(self, client_ids: &[String]) {
        let child = self.child.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut child) = child {
            // The image has no `kill` binary: signal directly.
            if let Some(pid) = child
                .id()
                .and_then(|p| rustix::process::Pid::from_raw(p as i32))
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            if tokio::time::timeout(STOP_TIMEOUT, child.wait())
                .await
                .is_err()
            {
                tracing::warn!(stack = %self.stack, "server did not stop within {STOP_TIMEOUT:?}; killing it");
                let _ = child.kill().await;
            }
        }
        if let Endpoint::Amqp(config) = &self.endpoint
            && let Err(e) = delete_queues(config, client_ids, self.own_namespace).await
        {
            tracing::warn!(
                "could not clean up namespace {:?} on the broker: {e}",
                config.namespace
            );
        }
    }
}

/// Starts `bin` with `flags`, its stderr kept (last 200 lines) in `log`.
fn launch(
    bin: &Path,
    flags: &[String],
    log: &Arc<Mutex<VecDeque<String>>>,
) -> anyhow::Result<Child> {
    let mut child = Command::new(bin)
        .args(flags)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let mut lines = BufReader::new(child.stderr.take().expect("stderr is piped")).lines();
    let sink = log.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let mut log = sink.lock().unwrap_or_else(|p| p.into_inner());
            if log.len() == 200 {
                log.pop_front();
            }
            log.push_back(line);
        }
    });
    Ok(child)
}

/// Deletes the clients' queues (and, for a namespace loadgen created, the
/// server's queues and exchange), so runs leave nothing on the broker.
async fn delete_queues(
    config: &AmqpConfig,
    client_ids: &[String],
    whole_namespace: bool,
) -> anyhow::Result<()> {
    let names = config.names()?;
    chat_amqp::topology::delete(&config.url, &names, client_ids, whole_namespace).await?;
    Ok(())
}

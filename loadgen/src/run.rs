//! Runs plans: starts each stack once per sweep, runs its points (ceilings
//! first, so every chat row can state its ratio to the ceiling measured in
//! the same invocation), samples the processes, writes the rows.

use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chat_amqp::AmqpClient;
use chat_grpc::GrpcClient;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;

use crate::driver::{self, Live, Marks, Outcome, Phase};
use crate::output::{Results, Row};
use crate::procstat::{self, Usage, Watched};
use crate::scenario::{FaultKind, Plan, Point, StackKind};
use crate::target::{Endpoint, Server, TargetArgs, fresh_tag};
use chat_core::metrics::Scrape;
use chat_testkit::proxy::Proxy;

/// Everything a set of runs shares.
#[derive(Debug)]
pub struct Runner {
    pub target: TargetArgs,
    pub results: Results,
    pub quiet: bool,
    /// `i/n` when this process is one shard of a larger load.
    pub shard: Option<(usize, usize)>,
    machine: String,
    git_rev: String,
    broker_version: String,
    /// Delivery rate of each ceiling point measured so far (by point key).
    ceilings: HashMap<String, f64>,
    bars: MultiProgress,
}

/// Default text limit of the chat servers; raised for larger payloads.
const DEFAULT_MAX_TEXT: usize = chat_core::limits::DEFAULT_MAX_TEXT_BYTES;

impl Runner {
    pub async fn new(
        target: TargetArgs,
        results: Results,
        quiet: bool,
        shard: Option<(usize, usize)>,
    ) -> Self {
        let broker_version = crate::machine::rabbitmq_version(&target.amqp_url)
            .await
            .unwrap_or_default();
        let quiet = quiet || !std::io::stderr().is_terminal() || !std::io::stdout().is_terminal();
        let bars = MultiProgress::new();
        if quiet {
            bars.set_draw_target(ProgressDrawTarget::hidden());
        }
        Self {
            target,
            results,
            quiet,
            shard,
            machine: crate::machine::describe(),
            git_rev: crate::machine::git_revision(),
            broker_version,
            ceilings: HashMap::new(),
            bars,
        }
    }

    /// Runs every plan; returns the rows written.
    pub async fn run_plans(&mut self, plans: &[Plan]) -> anyhow::Result<Vec<Row>> {
        let total: usize = plans.iter().map(Plan::points).sum();
        let overall = self.bars.add(ProgressBar::new(total as u64));
        overall.set_style(
            ProgressStyle::with_template(
                "{prefix:>10} [{bar:30}] {pos}/{len} points, {elapsed} elapsed, ~{eta} left",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        overall.set_prefix("loadgen");
        let mut rows = Vec::new();
        for plan in plans {
            // Ceilings first: chat rows then carry their ratio to them.
            let mut stacks: Vec<StackKind> = plan
                .ramps
                .iter()
                .filter_map(|r| r.first().map(|p| p.stack))
                .collect();
            stacks.sort_by_key(|s| (!matches!(s, StackKind::GrpcBare | StackKind::AmqpBare), *s));
            stacks.dedup();
            for stack in stacks {
                let chat = matches!(stack, StackKind::Grpc | StackKind::Amqp);
                if plan.durability.is_some() && chat && !self.target.spawn {
                    // A running server's durability is its own: rows would be mislabelled.
                    self.note(format!(
                        "{}: skipping {stack}: this sweep sets the server's durability, which needs --spawn",
                        plan.name
                    ));
                    let points: usize = plan
                        .ramps
                        .iter()
                        .filter(|r| r.first().is_some_and(|p| p.stack == stack))
                        .map(Vec::len)
                        .sum();
                    overall.inc(points as u64);
                    continue;
                }
                let max_text = DEFAULT_MAX_TEXT.max(plan.max_payload());
                self.note(format!("{}: starting {stack}", plan.name));
                let mut target = self.target.clone();
                if let Some(d) = &plan.durability {
                    target.durability = d.clone();
                }
                let server = Server::start(stack, &target, max_text).await?;
                let mut ids = Vec::new();
                let result = self
                    .run_stack(plan, stack, &server, &mut ids, &mut rows, &overall)
                    .await;
                server.stop(&ids).await;
                result?;
            }
        }
        overall.finish_and_clear();
        Ok(rows)
    }

    fn note(&self, line: String) {
        if self.quiet {
            tracing::info!("{line}");
        } else {
            let _ = self.bars.println(line);
        }
    }

    async fn run_stack(
        &mut self,
        plan: &Plan,
        stack: StackKind,
        server: &Server,
        ids: &mut Vec<String>,
        rows: &mut Vec<Row>,
        overall: &ProgressBar,
    ) -> anyhow::Result<()> {
        for ramp in plan
            .ramps
            .iter()
            .filter(|r| r.first().is_some_and(|p| p.stack == stack))
        {
            let mut behind = false;
            for point in ramp {
                if behind {
                    overall.inc(1);
                    continue;
                }
                let point = self.sharded(point);
                if stack.is_amqp()
                    && let Some(problem) = procstat::broker_capacity(point.clients as u64 + 2)
                {
                    self.note(format!(
                        "{}: skipping {}: {problem}",
                        plan.name,
                        point.describe()
                    ));
                    overall.inc(1);
                    continue;
                }
                let row = self.run_point(&point, server, ids).await?;
                if plan.stop_when_behind && !row.kept_up() {
                    self.note(format!(
                        "{}: {stack} fell behind at {} (delivered {:.0}/s); skipping the rest of this ramp",
                        plan.name, point.load, row.delivery_rate
                    ));
                    behind = true;
                }
                rows.push(row);
                overall.inc(1);
            }
        }
        Ok(())
    }

    /// This shard's part of a point: 1/n of the clients and of the rate.
    fn sharded(&self, point: &Point) -> Point {
        let mut p = point.clone();
        if let Some((_, n)) = self.shard {
            p.clients = (p.clients / n).max(2);
            if let crate::scenario::Load::Rate(r) = p.load {
                p.load = crate::scenario::Load::Rate(r / n as f64);
            }
        }
        p
    }

    /// Runs one point and records it.
    pub async fn run_point(
        &mut self,
        point: &Point,
        server: &Server,
        ids: &mut Vec<String>,
    ) -> anyhow::Result<Row> {
        let tag = fresh_tag();
        ids.extend((0..point.clients).map(|i| format!("{tag}-{i}")));
        let figures_before = server.scrape().await;
        let started_at = chat_core::message::format_timestamp(chat_core::message::now_ms());
        let live = Arc::new(Live::default());
        let line = ProgressLine::start(&self.bars, point, &live);

        let (phase_tx, phase_rx) = tokio::sync::watch::channel(Phase::Setup);
        let sampler = sample_processes(point, server, phase_rx.clone());
        let marks = Marks {
            phase: Some(phase_tx),
        };
        let proxy = fault_proxy(point, server).await?;
        let endpoint = match &proxy {
            Some(p) => through(&server.endpoint, p.addr()),
            None => server.endpoint.clone(),
        };
        let (outcome, injected) = tokio::join!(
            drive(&endpoint, point, &tag, live.clone(), marks),
            inject(point, server, &self.target, proxy.as_ref(), phase_rx)
        );
        drop(line);
        let outcome = outcome?;
        let struck = injected?;
        let usage = sampler.await.unwrap_or_default();
        let mut row = self.row(point, &tag, &started_at, &outcome, &usage, server);
        if let (Some(before), Some(after)) = (figures_before, server.scrape().await) {
            server_columns(&mut row, &before, &after);
        }
        if let (Some(f), Some(struck)) = (point.fault, struck) {
            fault_columns(&mut row, f, &outcome, struck);
        }
        self.record(point, &row, &outcome)?;
        Ok(row)
    }

    /// Leaves what a point measured behind: its histograms, its timeline
    /// and its row (a ceiling's delivery rate is also kept, for the chat
    /// rows' ratios), and says what it measured.
    fn record(&mut self, point: &Point, row: &Row, outcome: &Outcome) -> anyhow::Result<()> {
        self.results.write_histograms(
            &row.run_id,
            &outcome.totals.e2e_us,
            &outcome.totals.accept_us,
        )?;
        self.results
            .write_timeline(&row.run_id, &outcome.totals.timeline)?;
        self.results.append(row)?;
        if matches!(point.stack, StackKind::GrpcBare | StackKind::AmqpBare) {
            self.ceilings.insert(
                format!("{}|{}", point.stack, row.point_key()),
                row.delivery_rate,
            );
        }
        self.note(format!(
            "{:>10} {} -> delivered {:.0}/s, p50 {} µs, p99 {} µs, lost {}, errors {}",
            point.stack,
            point.describe(),
            row.delivery_rate,
            row.e2e_p50_us,
            row.e2e_p99_us,
            row.lost,
            row.errors
        ));
        Ok(())
    }

    /// The point's row, but for the server's and the fault's columns.
    fn row(
        &self,
        point: &Point,
        tag: &str,
        started_at: &str,
        o: &Outcome,
        usage: &HashMap<&str, Option<Usage>>,
        server: &Server,
    ) -> Row {
        let mut row = point_columns(point, tag, started_at);
        measured_columns(&mut row, o);
        usage_columns(&mut row, usage);
        row.server_settings = server.settings.clone();
        row.shard = self
            .shard
            .map(|(i, n)| format!("{i}/{n}"))
            .unwrap_or_default();
        row.git_rev = self.git_rev.clone();
        row.machine = self.machine.clone();
        if point.stack.is_amqp() {
            row.broker_version = self.broker_version.clone();
        }
        row.ceiling_ratio = self.ceiling_ratio(point, &row);
        row
    }

    /// A chat row's delivery rate as a fraction of its stack's ceiling at
    /// the same point, when that ceiling was measured in this invocation.
    fn ceiling_ratio(&self, point: &Point, row: &Row) -> Option<f64> {
        if matches!(point.stack, StackKind::GrpcBare | StackKind::AmqpBare) {
            return None;
        }
        let key = format!("{}|{}", point.stack.ceiling(), row.point_key());
        match self.ceilings.get(&key) {
            Some(&ceiling) if ceiling > 0.0 => Some(row.delivery_rate / ceiling),
            _ => None,
        }
    }
}

/// The columns that say what was asked: the run's identity and its point.
fn point_columns(point: &Point, tag: &str, started_at: &str) -> Row {
    let (rate, window) = match point.load {
        crate::scenario::Load::Rate(r) => (Some(r), None),
        crate::scenario::Load::Window(w) => (None, Some(w)),
    };
    Row {
        run_id: tag.to_owned(),
        started_at: started_at.to_owned(),
        experiment: point.experiment.clone(),
        stack: point.stack.name().to_owned(),
        clients: point.clients,
        pattern: point.pattern.name().to_owned(),
        model: point.load.model().to_owned(),
        offered_rate: rate,
        window,
        payload_bytes: point.payload,
        duration_s: point.duration.as_secs_f64(),
        warmup_s: point.warmup.as_secs_f64(),
        seed: point.seed,
        ..Row::default()
    }
}

/// The columns of what the clients counted and measured: messages, rates
/// over the window, latencies, set-up and drain.
fn measured_columns(row: &mut Row, o: &Outcome) {
    let t = &o.totals;
    let secs = o.window.secs();
    row.sent = t.sent;
    row.accepted = t.accepted;
    row.delivered = t.delivered;
    row.lost = t.lost;
    row.duplicates = t.duplicates;
    row.out_of_order = t.out_of_order;
    row.delivered_unaccepted = t.delivered_unaccepted;
    row.behind_schedule = t.behind_schedule;
    row.errors = t.error_count();
    row.error_kinds = Row::kinds_column(&t.errors);
    row.reconnects = t.reconnects;
    row.send_rate = t.accepted_in_window as f64 / secs;
    row.delivery_rate = t.delivered_in_window as f64 / secs;
    row.setup_p50_ms = o.setup_us.value_at_quantile(0.5) as f64 / 1000.0;
    row.setup_max_ms = o.setup_us.max() as f64 / 1000.0;
    row.drain_s = o.drain.as_secs_f64();
    row.set_latencies(&t.e2e_us, &t.accept_us);
}

/// The CPU and memory columns of the processes sampled over the window.
fn usage_columns(row: &mut Row, usage: &HashMap<&str, Option<Usage>>) {
    let get = |k: &str| usage.get(k).copied().flatten();
    let mb = |kb: u64| kb as f64 / 1024.0;
    row.loadgen_cpu_pct = get("loadgen").map(|u| u.cpu_percent);
    row.loadgen_peak_rss_mb = get("loadgen").map(|u| mb(u.peak_rss_kb));
    row.server_cpu_pct = get("server").map(|u| u.cpu_percent);
    row.server_peak_rss_mb = get("server").map(|u| mb(u.peak_rss_kb));
    row.server_rss_mb = get("server").map(|u| mb(u.rss_kb));
    row.server_rss_start_mb = get("server").map(|u| mb(u.rss_start_kb));
    row.broker_cpu_pct = get("broker").map(|u| u.cpu_percent);
    row.broker_peak_rss_mb = get("broker").map(|u| mb(u.peak_rss_kb));
}

/// Samples the CPU and memory of loadgen, of the server (when loadgen
/// started it) and of the broker (AMQP stacks, when it runs here) over the
/// measured window; the task ends with the window, or as soon as the phase
/// sender is dropped (every way out of [`Runner::run_point`] drops it).
fn sample_processes(
    point: &Point,
    server: &Server,
    mut phase: tokio::sync::watch::Receiver<Phase>,
) -> JoinHandle<HashMap<&'static str, Option<Usage>>> {
    let mut procs = vec![("loadgen", Watched::myself())];
    if let Some(pid) = server.pid() {
        procs.push(("server", Watched::new(pid)));
    }
    if point.stack.is_amqp()
        && let Some(pid) = procstat::find_broker()
    {
        procs.push(("broker", Watched::new(pid)));
    }
    tokio::spawn(async move {
        if phase.wait_for(|p| *p == Phase::Window).await.is_ok() {
            for (_, w) in &mut procs {
                w.begin();
            }
            let _ = phase.wait_for(|p| *p == Phase::Ended).await;
        }
        procs
            .into_iter()
            .map(|(k, w)| (k, w.end()))
            .collect::<HashMap<_, _>>()
    })
}

/// A proxy in front of the server for the faults that act on the clients'
/// connections (cut, freeze); `None` for the others.
async fn fault_proxy(point: &Point, server: &Server) -> anyhow::Result<Option<Proxy>> {
    Ok(match point.fault {
        Some(f) if matches!(f.kind, FaultKind::CutConnections | FaultKind::FreezeClients) => {
            Some(Proxy::start(upstream(&server.endpoint)?).await?)
        }
        _ => None,
    })
}

/// Runs the point's clients against `endpoint` with that stack's client.
async fn drive(
    endpoint: &Endpoint,
    point: &Point,
    tag: &str,
    live: Arc<Live>,
    marks: Marks,
) -> anyhow::Result<Outcome> {
    match endpoint {
        Endpoint::Grpc(c) => driver::run::<GrpcClient>(c, point, tag, live, marks).await,
        Endpoint::Amqp(c) => driver::run::<AmqpClient>(c, point, tag, live, marks).await,
    }
}

/// The `server_*` columns: what the server counted between two scrapes of
/// its metrics (the whole run: set-up, warm-up, window and drain). A
/// counter that went down was reset by a restart (`kill-server`): then its
/// value after is what it counted since.
fn server_columns(row: &mut Row, before: &Scrape, after: &Scrape) {
    let delta = |name: &str| {
        let (b, a) = (before.value(name)?, after.value(name)?);
        Some(if a >= b { a - b } else { a } as u64)
    };
    row.server_accepted = delta("chat_messages_accepted_total");
    row.server_delivered = delta("chat_messages_delivered_total");
    row.server_acked = delta("chat_messages_acked_total");
    let refused = |s: &Scrape| s.total("chat_requests_refused_total");
    let (b, a) = (refused(before), refused(after));
    row.server_refused = Some(if a >= b { a - b } else { a } as u64);
    row.server_pending = after.value("chat_messages_pending").map(|v| v as u64);
    let histogram = |name: &str| {
        let (b, a) = (before.histogram(name)?, after.histogram(name)?);
        Some(if a.count >= b.count { a.since(&b) } else { a })
    };
    if let Some(batches) = histogram("chat_journal_batch_records") {
        row.server_journal_batch_mean = batches.mean();
    }
    if let Some(appends) = histogram("chat_journal_append_seconds") {
        row.server_append_mean_us = appends.mean().map(|s| s * 1e6);
        row.server_append_p99_us = appends.quantile(0.99).map(|s| s * 1e6);
    }
}

/// What the fault did: when it struck (from the window's start), how long
/// until deliveries were normal again, the worst latency after it.
fn fault_columns(
    row: &mut Row,
    f: crate::scenario::Fault,
    o: &Outcome,
    struck: tokio::time::Instant,
) {
    let fault_ns = struck.saturating_duration_since(o.epoch).as_nanos() as u64;
    let t = &o.totals.timeline;
    row.fault = f.kind.name().to_owned();
    row.fault_at_s = Some(fault_ns.saturating_sub(o.window.start_ns) as f64 / 1e9);
    row.fault_downtime_s = Some(f.downtime.as_secs_f64());
    row.recovery_s = t
        .recovery(o.window.start_ns, fault_ns)
        .map(|d| d.as_secs_f64());
    row.fault_max_e2e_us = Some(u64::from(t.max_latency_since(fault_ns)));
}

/// Where the clients of `endpoint` connect (`host:port`).
fn upstream(endpoint: &Endpoint) -> anyhow::Result<String> {
    let url = match endpoint {
        Endpoint::Grpc(c) => c.server.as_str(),
        Endpoint::Amqp(c) => c.url.as_str(),
    };
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let hostport = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let hostport = hostport.split(['/', '?']).next().unwrap_or_default();
    match endpoint {
        Endpoint::Amqp(_) if !hostport.contains(':') => Ok(format!("{hostport}:5672")),
        _ => Ok(hostport.to_owned()),
    }
}

/// `endpoint` with its host and port replaced by the proxy's.
fn through(endpoint: &Endpoint, proxy: std::net::SocketAddr) -> Endpoint {
    let replace = |url: &str| {
        let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
        let (user, hostrest) = match rest.rsplit_once('@') {
            Some((u, h)) => (format!("{u}@"), h),
            None => (String::new(), rest),
        };
        let tail = hostrest.find(['/', '?']).map_or("", |i| &hostrest[i..]);
        format!("{scheme}://{user}{proxy}{tail}")
    };
    match endpoint {
        Endpoint::Grpc(c) => {
            let mut c = c.clone();
            c.server = replace(&c.server);
            Endpoint::Grpc(c)
        }
        Endpoint::Amqp(c) => {
            let mut c = c.clone();
            c.url = replace(&c.url);
            Endpoint::Amqp(c)
        }
    }
}

/// Injects the point's fault, if any, `at` into the measured window.
/// Returns when it really struck (a broker takes a while to stop), which is
/// what recovery is counted from.
async fn inject(
    point: &Point,
    server: &Server,
    target: &TargetArgs,
    proxy: Option<&Proxy>,
    mut phase: tokio::sync::watch::Receiver<Phase>,
) -> anyhow::Result<Option<tokio::time::Instant>> {
    let Some(fault) = point.fault else {
        return Ok(None);
    };
    if phase.wait_for(|p| *p == Phase::Window).await.is_err() {
        return Ok(None);
    }
    tokio::time::sleep(fault.at).await;
    tracing::info!(fault = fault.kind.name(), "injecting");
    let struck = match fault.kind {
        FaultKind::KillServer => {
            server.kill9().await?;
            let struck = tokio::time::Instant::now();
            server.restart(fault.downtime).await?;
            struck
        }
        FaultKind::CutConnections => {
            proxy
                .expect("a proxy for cut-connections")
                .cut(fault.downtime);
            tokio::time::Instant::now()
        }
        FaultKind::FreezeClients => {
            let struck = tokio::time::Instant::now();
            proxy
                .expect("a proxy for freeze-clients")
                .freeze(fault.downtime)
                .await;
            struck
        }
        FaultKind::RestartBroker => {
            rabbitmqctl("stop_app").await?;
            let struck = tokio::time::Instant::now();
            tokio::time::sleep(fault.downtime).await;
            rabbitmqctl("start_app").await?;
            struck
        }
        FaultKind::StopNode => {
            let (Some(stop), Some(start)) = (&target.node_stop_cmd, &target.node_start_cmd) else {
                anyhow::bail!(
                    "stop-node needs --node-stop-cmd and --node-start-cmd (LOADGEN_NODE_STOP_CMD / LOADGEN_NODE_START_CMD)"
                );
            };
            shell(stop).await?;
            let struck = tokio::time::Instant::now();
            tokio::time::sleep(fault.downtime).await;
            shell(start).await?;
            struck
        }
    };
    Ok(Some(struck))
}

/// Runs an operator-given command (`sh -c`) and fails with its stderr.
async fn shell(command: &str) -> anyhow::Result<()> {
    let out = tokio::process::Command::new("sh")
        .args(["-c", command])
        .output()
        .await
        .map_err(|e| anyhow::anyhow!("cannot run {command:?}: {e}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "{command:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

async fn rabbitmqctl(action: &str) -> anyhow::Result<()> {
    let out = tokio::process::Command::new("rabbitmqctl")
        .arg(action)
        .output()
        .await
        .map_err(|e| {
            anyhow::anyhow!("restart-broker needs rabbitmqctl on this host (a local broker): {e}")
        })?;
    if !out.status.success() {
        anyhow::bail!(
            "rabbitmqctl {action} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A point's progress line: a spinner that [`progress`] refreshes with the
/// live counts for as long as this value lives. Dropping it stops that task
/// and takes the line off the screen, so no path out of
/// [`Runner::run_point`] (an error, such as a fault proxy that does not
/// start, or the future being dropped) leaves the task running.
struct ProgressLine {
    bars: MultiProgress,
    bar: ProgressBar,
    ticker: JoinHandle<()>,
}

impl ProgressLine {
    fn start(bars: &MultiProgress, point: &Point, live: &Arc<Live>) -> Self {
        let bar = bars.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("{prefix:>10} {spinner} {msg}").expect("valid template"),
        );
        bar.set_prefix(point.stack.name());
        bar.enable_steady_tick(Duration::from_millis(120));
        let ticker = tokio::spawn(progress(bar.clone(), live.clone(), point.describe()));
        Self {
            bars: bars.clone(),
            bar,
            ticker,
        }
    }
}

impl Drop for ProgressLine {
    fn drop(&mut self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
        self.bars.remove(&self.bar);
    }
}

/// Refreshes a point's progress line with the current rates.
async fn progress(bar: ProgressBar, live: Arc<Live>, what: String) {
    let mut last = (0u64, 0u64);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let now = (
            live.accepted.load(Ordering::Relaxed),
            live.delivered.load(Ordering::Relaxed),
        );
        let errors = live.errors.load(Ordering::Relaxed);
        bar.set_message(format!(
            "{what}: accepted {} ({}/s), delivered {} ({}/s), errors {errors}",
            now.0,
            (now.0 - last.0) * 2,
            now.1,
            (now.1 - last.1) * 2
        ));
        last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(accepted: u64, refused: &[(&str, u64)], appends_us: &[(f64, u64)]) -> Scrape {
        let mut text = format!(
            "# TYPE chat_messages_accepted_total counter\nchat_messages_accepted_total {accepted}\n\
             # TYPE chat_messages_pending gauge\nchat_messages_pending 3\n\
             # TYPE chat_requests_refused_total counter\n"
        );
        for (code, n) in refused {
            text += &format!("chat_requests_refused_total{{code=\"{code}\"}} {n}\n");
        }
        text += "# TYPE chat_journal_append_seconds histogram\n";
        let mut total = 0;
        let mut sum = 0.0;
        for &(le_us, n) in appends_us {
            total += n;
            sum += le_us * 1e-6 * n as f64;
            text += &format!(
                "chat_journal_append_seconds_bucket{{le=\"{}\"}} {total}\n",
                le_us * 1e-6
            );
        }
        text += &format!(
            "chat_journal_append_seconds_bucket{{le=\"+Inf\"}} {total}\n\
             chat_journal_append_seconds_sum {sum}\nchat_journal_append_seconds_count {total}\n"
        );
        Scrape::parse(&text).unwrap()
    }

    fn point() -> Point {
        Point {
            experiment: "test".into(),
            stack: StackKind::Grpc,
            clients: 2,
            load: crate::scenario::Load::Rate(10.0),
            duration: Duration::from_secs(1),
            warmup: Duration::ZERO,
            payload: 64,
            pattern: crate::scenario::Pattern::Pairs,
            seed: 1,
            drain: Duration::from_secs(1),
            fault: None,
        }
    }

    /// A point that fails before its clients have run (say, its fault
    /// proxy does not start) leaves run_point with the progress line never
    /// stopped by hand: dropping it must end its task all the same.
    #[tokio::test]
    async fn dropping_a_progress_line_stops_its_task() {
        let bars = MultiProgress::with_draw_target(ProgressDrawTarget::hidden());
        let live = Arc::new(Live::default());
        let line = ProgressLine::start(&bars, &point(), &live);
        assert_eq!(Arc::strong_count(&live), 2, "the task holds the counts");
        drop(line);
        // The task lets go of the counts when it ends.
        tokio::time::timeout(Duration::from_secs(5), async {
            while Arc::strong_count(&live) > 1 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the progress task still runs after its line was dropped");
    }

    #[test]
    fn server_columns_are_what_happened_during_the_run() {
        let before = scrape(100, &[("NOT_FOUND", 1)], &[(10.0, 50), (20.0, 0)]);
        let after = scrape(
            1100,
            &[("NOT_FOUND", 2), ("RESOURCE_EXHAUSTED", 5)],
            &[(10.0, 50), (20.0, 100)],
        );
        let mut row = Row::default();
        server_columns(&mut row, &before, &after);
        assert_eq!(row.server_accepted, Some(1000));
        assert_eq!(row.server_refused, Some(6));
        assert_eq!(row.server_pending, Some(3));
        assert_eq!(row.server_delivered, None, "not in these scrapes");
        // The 100 appends of the run all took 10-20 µs.
        let p99 = row.server_append_p99_us.unwrap();
        assert!((10.0..=20.0).contains(&p99), "{p99}");
        assert!((row.server_append_mean_us.unwrap() - 20.0).abs() < 1e-6);

        // A restart in between (kill-server): counters start again from 0.
        let restarted = scrape(40, &[], &[(10.0, 4), (20.0, 4)]);
        server_columns(&mut row, &after, &restarted);
        assert_eq!(row.server_accepted, Some(40));
        assert_eq!(row.server_refused, Some(0));
    }
}

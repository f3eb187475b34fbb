//! `loadgen`: runs experiments against the chats and their ceilings, and
//! turns the results into charts.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use loadgen::output::{Results, print_table};
use loadgen::run::Runner;
use loadgen::scenario::{
    Experiment, Fault, FaultKind, Load, Pattern, Plan, Point, StackKind, parse_duration,
};
use loadgen::target::TargetArgs;

#[derive(Parser)]
#[command(
    name = "loadgen",
    version,
    about = "Load generator for the chatbench chats (gRPC and RabbitMQ) and their transport ceilings"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an experiment file, or one point given by flags.
    Run(Box<RunArgs>),
    /// Draw the charts (PNG) and summary.md of a results folder from its runs.csv.
    Plot {
        /// The results folder (runs.csv, hist/); the charts go there too.
        #[arg(long, env = "LOADGEN_RESULTS", default_value = "results")]
        results: PathBuf,
    },
    /// Add up the shards of loads split with `run --shard I/N` (same results
    /// folder) into one row per point, appended to runs.csv.
    Merge {
        #[arg(long, env = "LOADGEN_RESULTS", default_value = "results")]
        results: PathBuf,
    },
    /// Say whether the local broker can take N connections (its open-file limit).
    CheckBroker {
        /// Connections the run will open (one per AMQP client, plus servers).
        #[arg(long, default_value_t = 1000)]
        clients: u64,
    },
    /// Serve a bare ceiling relay (started by `run`; not for direct use).
    #[command(hide = true)]
    BareServer {
        #[command(subcommand)]
        kind: BareKind,
    },
}

#[derive(Subcommand)]
enum BareKind {
    Grpc {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
    },
    Amqp {
        #[arg(long, env = "AMQP_URL", default_value = chat_amqp::DEFAULT_AMQP_URL)]
        amqp_url: String,
        #[arg(long)]
        namespace: String,
        #[arg(long, value_enum, default_value_t = chat_amqp::QueueType::Classic)]
        queue_type: chat_amqp::QueueType,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Experiment file (TOML, see experiments/default.toml). Without it, one
    /// point is run from the flags below.
    experiment: Option<PathBuf>,
    /// Shorter runs and fewer points, as each sweep's `quick` table says.
    #[arg(long)]
    quick: bool,
    /// Only the sweeps with these names (repeatable).
    #[arg(long = "only")]
    only: Vec<String>,
    /// Only these stacks (repeatable): grpc, amqp, grpc-bare, amqp-bare.
    #[arg(long = "stack", value_enum)]
    stacks: Vec<StackKind>,
    #[command(flatten)]
    point: PointArgs,
    #[command(flatten)]
    target: TargetArgs,
    /// Where runs.csv and the histograms go.
    #[arg(long, env = "LOADGEN_RESULTS", default_value = "results")]
    results: PathBuf,
    /// No progress bars (they are off anyway when output is not a terminal).
    #[arg(long, short)]
    quiet: bool,
    /// Run shard I of N: 1/N of the clients and of the rate, so several
    /// loadgen processes (or machines) can share one load.
    #[arg(long, env = "LOADGEN_SHARD", value_parser = parse_shard)]
    shard: Option<(usize, usize)>,
}

/// One point from flags (`loadgen run --stack grpc --clients 100 --rate 2000`).
#[derive(Args)]
struct PointArgs {
    /// Synthetic clients.
    #[arg(long, default_value_t = 10)]
    clients: usize,
    /// Open loop: total offered msgs/s.
    #[arg(long, conflicts_with = "window")]
    rate: Option<f64>,
    /// Closed loop: messages in flight per sender (1 = ping-pong).
    #[arg(long)]
    window: Option<u32>,
    /// Measured time, e.g. 30s.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Excluded warm-up before it.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// How long to wait for messages in flight after the last send.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    drain: Duration,
    /// Bytes of text per message.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    #[arg(long, value_enum, default_value_t = Pattern::Pairs)]
    pattern: Pattern,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Inject a fault: kill-server (needs --spawn), restart-broker (the
    /// local RabbitMQ), cut-connections (through a proxy inside loadgen),
    /// freeze-clients (the proxy holds every byte, as for SIGSTOPped clients),
    /// stop-node (one cluster node, with --node-stop-cmd/--node-start-cmd).
    #[arg(long, value_enum)]
    fault: Option<FaultKind>,
    /// When the fault strikes, from the start of the measured window
    /// (default: a third of the duration).
    #[arg(long, value_parser = parse_duration)]
    fault_at: Option<Duration>,
    /// How long the fault lasts.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    fault_downtime: Duration,
}

fn parse_shard(s: &str) -> Result<(usize, usize), String> {
    let (i, n) = s.split_once('/').ok_or("use I/N, e.g. 0/3")?;
    let (i, n): (usize, usize) = (
        i.parse().map_err(|_| "I is not a number")?,
        n.parse().map_err(|_| "N is not a number")?,
    );
    if n == 0 || i >= n {
        return Err(format!("shard {i}/{n}: need 0 <= I < N"));
    }
    Ok((i, n))
}

fn main() -> ExitCode {
    // lapin logs every connection it closes at ERROR level; the runs report
    // connection trouble themselves.
    chat_cli::telemetry::init("warn,lapin=off");
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run(args) => run(*args).await,
        Command::Plot { results } => loadgen::plot::plot(&Results::new(results)).map(drop),
        Command::Merge { results } => {
            let rows = loadgen::merge::merge(&Results::new(&results))?;
            print_table(&rows)?;
            eprintln!(
                "loadgen: {} merged rows appended to {}",
                rows.len(),
                results.join("runs.csv").display()
            );
            Ok(())
        }
        Command::CheckBroker { clients } => check_broker(clients),
        Command::BareServer { kind } => bare(kind).await,
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let plans = match &args.experiment {
        Some(path) => Experiment::load(path)?
            .plans(args.quick, &args.only, &args.stacks)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("in {}", path.display()))?,
        None => vec![single_plan(&args)?],
    };
    let mut runner = Runner::new(
        args.target.clone(),
        Results::new(&args.results),
        args.quiet,
        args.shard,
    )
    .await;
    let rows = runner.run_plans(&plans).await?;
    print_table(&rows)?;
    let path = args.results.join("runs.csv");
    eprintln!(
        "loadgen: {} rows appended to {}",
        rows.len(),
        path.display()
    );
    Ok(())
}

fn single_plan(args: &RunArgs) -> anyhow::Result<Plan> {
    let p = &args.point;
    let load = match (p.rate, p.window) {
        (Some(r), _) => Load::Rate(r),
        (None, Some(w)) => Load::Window(w),
        (None, None) => Load::Window(1),
    };
    let stacks = if args.stacks.is_empty() {
        vec![StackKind::Grpc]
    } else {
        args.stacks.clone()
    };
    let mut ramps = Vec::new();
    for stack in stacks {
        let point = Point {
            experiment: "adhoc".into(),
            stack,
            clients: p.clients,
            load,
            duration: p.duration,
            warmup: p.warmup,
            payload: p.payload,
            pattern: p.pattern,
            seed: p.seed,
            drain: p.drain,
            fault: p.fault.map(|kind| Fault {
                kind,
                at: p.fault_at.unwrap_or(p.duration / 3),
                downtime: p.fault_downtime,
            }),
        };
        point.validate().map_err(anyhow::Error::msg)?;
        ramps.push(vec![point]);
    }
    Ok(Plan {
        name: "adhoc".into(),
        ramps,
        stop_when_behind: false,
        durability: None,
    })
}

fn check_broker(clients: u64) -> anyhow::Result<()> {
    let Some(pid) = loadgen::procstat::find_broker() else {
        bail!("no RabbitMQ runs on this host (a remote broker's limit cannot be read from here)");
    };
    let limit = loadgen::procstat::broker_open_file_limit(pid);
    match loadgen::procstat::broker_capacity(clients + 2) {
        Some(problem) => bail!("{problem}"),
        None => {
            eprintln!(
                "loadgen: the local RabbitMQ (pid {pid}) may open {} files: enough for {clients} clients",
                limit.map_or_else(|| "unlimited".into(), |l| l.to_string())
            );
            Ok(())
        }
    }
}

async fn bare(kind: BareKind) -> anyhow::Result<()> {
    let shutdown = chat_cli::signal::shutdown_signal();
    match kind {
        BareKind::Grpc { listen } => {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            tracing::warn!("listening on {}", listener.local_addr()?);
            loadgen::bare::grpc::run(listener, shutdown).await?;
        }
        BareKind::Amqp {
            amqp_url,
            namespace,
            queue_type,
        } => {
            let config =
                chat_amqp::AmqpConfig::new(amqp_url, namespace).with_queue_type(queue_type);
            loadgen::bare::amqp::run(config, shutdown).await?;
        }
    }
    Ok(())
}

//! What one measurement is ([`Point`]) and how experiment files expand into
//! many of them ([`Experiment`]).
//!
//! A point is one run: one stack, N clients, one load (an offered rate or a
//! window), one payload size and one traffic pattern, for a warm-up plus a
//! measured duration. An experiment file (`experiments/*.toml`) lists sweeps;
//! each sweep is the cartesian product of its lists, so a reader sees the
//! whole design of a chart in a few lines.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// Which system a point measures.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum StackKind {
    /// The chat over gRPC (`grpc-server`).
    Grpc,
    /// The chat over RabbitMQ (`amqp-server`).
    Amqp,
    /// Ceiling: a minimal tonic relay, no persistence, no chat logic.
    GrpcBare,
    /// Ceiling: lapin relay with the chat's hops (persistent, confirmed,
    /// acknowledged) but no chat logic.
    AmqpBare,
}

impl StackKind {
    pub const ALL: [StackKind; 4] = [Self::Grpc, Self::Amqp, Self::GrpcBare, Self::AmqpBare];

    pub fn name(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::Amqp => "amqp",
            Self::GrpcBare => "grpc-bare",
            Self::AmqpBare => "amqp-bare",
        }
    }

    /// The transport underneath: the bare ceiling a chat is compared with.
    pub fn ceiling(self) -> StackKind {
        match self {
            Self::Grpc | Self::GrpcBare => Self::GrpcBare,
            Self::Amqp | Self::AmqpBare => Self::AmqpBare,
        }
    }

    pub fn is_amqp(self) -> bool {
        matches!(self, Self::Amqp | Self::AmqpBare)
    }
}

impl fmt::Display for StackKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Who sends to whom.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Pattern {
    /// Clients pair up (0↔1, 2↔3, ...) and each sends to its partner.
    Pairs,
    /// Every client but the first sends to client 0 (N→1).
    FanIn,
    /// Client 0 sends to all the others in turn (1→N).
    FanOut,
    /// Every client sends each message to a random other client (seeded).
    Random,
}

impl Pattern {
    pub fn name(self) -> &'static str {
        match self {
            Self::Pairs => "pairs",
            Self::FanIn => "fan-in",
            Self::FanOut => "fan-out",
            Self::Random => "random",
        }
    }

    /// The indices of the clients that send.
    pub fn senders(self, clients: usize) -> Vec<usize> {
        match self {
            Self::Pairs | Self::Random => (0..clients).collect(),
            Self::FanIn => (1..clients).collect(),
            Self::FanOut => vec![0],
        }
    }

    /// The fixed recipients of `sender` (empty for `random`, which draws
    /// one per message among every other client).
    pub fn recipients(self, sender: usize, clients: usize) -> Vec<usize> {
        match self {
            // An odd client out pairs with client 0 (one way).
            Self::Pairs if sender ^ 1 >= clients => vec![0],
            Self::Pairs => vec![sender ^ 1],
            Self::FanIn => vec![0],
            Self::FanOut => (1..clients).collect(),
            Self::Random => Vec::new(),
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How hard the senders push.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Load {
    /// Open loop: this many messages per second in total, each send
    /// scheduled in advance; latency counts from the scheduled instant.
    Rate(f64),
    /// Closed loop: each sender keeps this many messages in flight until
    /// they are delivered (1 = ping-pong).
    Window(u32),
}

impl Load {
    /// `rate` or `window`, for the CSV.
    pub fn model(&self) -> &'static str {
        match self {
            Self::Rate(_) => "open",
            Self::Window(_) => "closed",
        }
    }
}

impl fmt::Display for Load {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rate(r) => write!(f, "{r} msg/s"),
            Self::Window(w) => write!(f, "window {w}"),
        }
    }
}

/// A fault injected into a run, to see what it costs and whether anything
/// is lost or shown twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// SIGKILL the chat server (started with --spawn), restart it on the
    /// same data and address after the downtime.
    KillServer,
    /// Stop the local RabbitMQ application (`rabbitmqctl stop_app`) and
    /// start it again after the downtime: every connection drops.
    RestartBroker,
    /// Cut every client connection (clients go through a TCP proxy inside
    /// loadgen) and refuse new ones for the downtime.
    CutConnections,
    /// Freeze every client connection for the downtime (the proxy holds
    /// all bytes without closing anything), as the server sees a client
    /// process stopped with SIGSTOP and resumed with SIGCONT.
    FreezeClients,
    /// Stop one node of a RabbitMQ cluster (`--node-stop-cmd`) and start it
    /// again after the downtime (`--node-start-cmd`): the connections to it
    /// drop, the others stay; with quorum queues nothing is lost.
    StopNode,
}

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::KillServer => "kill-server",
            Self::RestartBroker => "restart-broker",
            Self::CutConnections => "cut-connections",
            Self::FreezeClients => "freeze-clients",
            Self::StopNode => "stop-node",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fault {
    pub kind: FaultKind,
    /// When, counted from the start of the measured window.
    pub at: Duration,
    /// How long the fault lasts before the system is given back.
    pub downtime: Duration,
}

/// One run.
#[derive(Clone, Debug)]
pub struct Point {
    /// The sweep (chart) this point belongs to, e.g. `latency-vs-load`.
    pub experiment: String,
    pub stack: StackKind,
    pub clients: usize,
    pub load: Load,
    /// Measured time, after the warm-up.
    pub duration: Duration,
    /// Sent but excluded from the results (connections warm, JIT-free
    /// allocators settled, the broker's queues created).
    pub warmup: Duration,
    /// Bytes of text per message (at least the probe header, ~40 bytes).
    pub payload: usize,
    pub pattern: Pattern,
    pub seed: u64,
    /// How long to wait after the last send for messages still in flight;
    /// what has not arrived by then counts as lost.
    pub drain: Duration,
    pub fault: Option<Fault>,
}

impl Point {
    pub fn describe(&self) -> String {
        format!(
            "{} {} clients {} {} B {} for {:?} (+{:?} warm-up)",
            self.stack,
            self.clients,
            self.pattern,
            self.payload,
            self.load,
            self.duration,
            self.warmup
        )
    }

    /// Checks what can be checked before anything starts.
    pub fn validate(&self) -> Result<(), String> {
        if self.clients < 2 {
            return Err(format!(
                "{} clients: a chat needs at least 2 (a sender and a recipient)",
                self.clients
            ));
        }
        match self.load {
            Load::Rate(r) if !(r > 0.0 && r.is_finite()) => {
                return Err(format!("rate {r}: must be a positive number of msgs/s"));
            }
            Load::Window(0) => return Err("window 0: must be at least 1".into()),
            _ => {}
        }
        if self.duration.is_zero() {
            return Err("duration 0: nothing would be measured".into());
        }
        if self.payload == 0 {
            return Err("payload 0: a chat message has at least one byte".into());
        }
        if let Some(f) = self.fault {
            if f.at >= self.duration {
                return Err(format!(
                    "fault at {:?} is after the {:?} run",
                    f.at, self.duration
                ));
            }
            let ceiling = matches!(self.stack, StackKind::GrpcBare | StackKind::AmqpBare);
            if ceiling {
                return Err(format!(
                    "{}: faults are for the chats, not the ceilings",
                    f.kind.name()
                ));
            }
            if matches!(f.kind, FaultKind::RestartBroker | FaultKind::StopNode)
                && !self.stack.is_amqp()
            {
                return Err(format!("{}: the gRPC chat has no broker", f.kind.name()));
            }
        }
        Ok(())
    }
}

/// Parses `10s`, `500ms`, `2m`, `1.5s` (or a bare number of seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: use e.g. 10s, 500ms, 2m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        _ => return Err(format!("invalid duration unit in {s:?}: use ms, s or m")),
    };
    if !(secs >= 0.0 && secs.is_finite()) {
        return Err(format!("invalid duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    s.map(|s| parse_duration(&s).map_err(serde::de::Error::custom))
        .transpose()
}

/// Fields a sweep (or its `quick` override, or the file's `defaults`) may set.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepFields {
    pub stacks: Option<Vec<StackKind>>,
    pub clients: Option<Vec<usize>>,
    /// Open loop: total offered rates (msgs/s).
    pub rates: Option<Vec<f64>>,
    /// Closed loop: windows per sender.
    pub windows: Option<Vec<u32>>,
    pub payloads: Option<Vec<usize>>,
    pub patterns: Option<Vec<Pattern>>,
    #[serde(default, deserialize_with = "de_duration")]
    pub duration: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    pub warmup: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    pub drain: Option<Duration>,
    pub seed: Option<u64>,
    /// Rate ramps: stop climbing once delivery falls behind the offered
    /// rate (the rest of the ramp would only measure a saturated system).
    pub stop_when_behind: Option<bool>,
    /// Durability of the chat servers this sweep starts (`os` or `fsync`;
    /// default: loadgen's `--durability`).
    pub durability: Option<String>,
    pub fault: Option<FaultKind>,
    /// When the fault strikes, from the start of the measured window.
    #[serde(default, deserialize_with = "de_duration")]
    pub fault_at: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    pub fault_downtime: Option<Duration>,
}

impl SweepFields {
    /// `self` where set, else `other`.
    fn or(self, other: &SweepFields) -> SweepFields {
        SweepFields {
            stacks: self.stacks.or_else(|| other.stacks.clone()),
            clients: self.clients.or_else(|| other.clients.clone()),
            rates: self.rates.or_else(|| other.rates.clone()),
            windows: self.windows.or_else(|| other.windows.clone()),
            payloads: self.payloads.or_else(|| other.payloads.clone()),
            patterns: self.patterns.or_else(|| other.patterns.clone()),
            duration: self.duration.or(other.duration),
            warmup: self.warmup.or(other.warmup),
            drain: self.drain.or(other.drain),
            seed: self.seed.or(other.seed),
            stop_when_behind: self.stop_when_behind.or(other.stop_when_behind),
            durability: self.durability.or_else(|| other.durability.clone()),
            fault: self.fault.or(other.fault),
            fault_at: self.fault_at.or(other.fault_at),
            fault_downtime: self.fault_downtime.or(other.fault_downtime),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sweep {
    /// Names the chart the sweep feeds (`experiment` column of runs.csv).
    pub name: String,
    #[serde(flatten)]
    pub fields: SweepFields,
    /// What `--quick` changes (shorter runs, fewer points).
    #[serde(default)]
    pub quick: SweepFields,
}

/// An experiment file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    #[serde(default)]
    pub defaults: SweepFields,
    /// Overrides of `defaults` under `--quick`.
    #[serde(default)]
    pub quick: SweepFields,
    #[serde(rename = "sweep")]
    pub sweeps: Vec<Sweep>,
}

/// A sweep expanded: points grouped so that a ramp can stop early.
#[derive(Clone, Debug)]
pub struct Plan {
    pub name: String,
    /// Each ramp is a list of points with increasing load; with
    /// `stop_when_behind`, the rest of a ramp is skipped once one point
    /// falls behind.
    pub ramps: Vec<Vec<Point>>,
    pub stop_when_behind: bool,
    /// Durability the sweep's chat servers are started with, if it says.
    pub durability: Option<String>,
}

impl Plan {
    pub fn points(&self) -> usize {
        self.ramps.iter().map(Vec::len).sum()
    }

    /// Largest payload of the sweep (servers are started to accept it).
    pub fn max_payload(&self) -> usize {
        self.ramps
            .iter()
            .flatten()
            .map(|p| p.payload)
            .max()
            .unwrap_or(0)
    }
}

impl Experiment {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read experiment file {}", path.display()))?;
        toml::from_str(&text)
            .with_context(|| format!("experiment file {} is not valid", path.display()))
    }

    /// Every sweep as a plan, `quick` applied when asked; `only` keeps the
    /// sweeps with these names and `stacks` filters the stacks.
    pub fn plans(
        &self,
        quick: bool,
        only: &[String],
        stacks: &[StackKind],
    ) -> Result<Vec<Plan>, String> {
        let defaults = if quick {
            self.quick.clone().or(&self.defaults)
        } else {
            self.defaults.clone()
        };
        let mut plans = Vec::new();
        for sweep in &self.sweeps {
            if !only.is_empty() && !only.contains(&sweep.name) {
                continue;
            }
            let base = sweep.fields.clone().or(&defaults);
            let f = if quick {
                sweep.quick.clone().or(&base)
            } else {
                base
            };
            let mut plan = expand(&sweep.name, &f)?;
            if !stacks.is_empty() {
                plan.ramps
                    .retain(|r| r.first().is_some_and(|p| stacks.contains(&p.stack)));
            }
            plans.push(plan);
        }
        if plans.is_empty() && !only.is_empty() {
            let names: Vec<&str> = self.sweeps.iter().map(|s| s.name.as_str()).collect();
            return Err(format!(
                "no sweep named {}; the file has: {}",
                only.join(", "),
                names.join(", ")
            ));
        }
        Ok(plans)
    }
}

/// A sweep's plan: one ramp through its loads for every stack, pattern,
/// payload and client count, defaults filled in, every point validated.
fn expand(name: &str, f: &SweepFields) -> Result<Plan, String> {
    let loads = loads(name, f)?;
    if let Some(d) = &f.durability
        && !matches!(d.as_str(), "os" | "fsync")
    {
        return Err(format!(
            "sweep {name:?}: durability {d:?}: use \"os\" or \"fsync\""
        ));
    }
    let duration = f.duration.unwrap_or(Duration::from_secs(10));
    let fault = f.fault.map(|kind| Fault {
        kind,
        at: f.fault_at.unwrap_or(duration / 3),
        downtime: f.fault_downtime.unwrap_or(Duration::from_secs(1)),
    });
    let stacks = f.stacks.clone().unwrap_or_else(|| StackKind::ALL.to_vec());
    let clients = f.clients.clone().unwrap_or_else(|| vec![10]);
    let payloads = f.payloads.clone().unwrap_or_else(|| vec![64]);
    let patterns = f.patterns.clone().unwrap_or_else(|| vec![Pattern::Pairs]);
    let mut ramps = Vec::new();
    for &stack in &stacks {
        for &pattern in &patterns {
            for &payload in &payloads {
                for &n in &clients {
                    let ramp: Vec<Point> = loads
                        .iter()
                        .map(|&load| Point {
                            experiment: name.to_owned(),
                            stack,
                            clients: n,
                            load,
                            duration,
                            warmup: f.warmup.unwrap_or(Duration::from_secs(2)),
                            payload,
                            pattern,
                            seed: f.seed.unwrap_or(1),
                            drain: f.drain.unwrap_or(Duration::from_secs(10)),
                            fault,
                        })
                        .collect();
                    for p in &ramp {
                        p.validate().map_err(|e| format!("sweep {name:?}: {e}"))?;
                    }
                    ramps.push(ramp);
                }
            }
        }
    }
    Ok(Plan {
        name: name.to_owned(),
        ramps,
        stop_when_behind: f.stop_when_behind.unwrap_or(false),
        durability: f.durability.clone(),
    })
}

/// The loads a sweep's ramps step through: its rates (open loop) or its
/// windows (closed loop), exactly one of the two.
fn loads(name: &str, f: &SweepFields) -> Result<Vec<Load>, String> {
    match (&f.rates, &f.windows) {
        (Some(r), None) => Ok(r.iter().map(|&r| Load::Rate(r)).collect()),
        (None, Some(w)) => Ok(w.iter().map(|&w| Load::Window(w)).collect()),
        (Some(_), Some(_)) => Err(format!("sweep {name:?}: give rates or windows, not both")),
        (None, None) => Err(format!("sweep {name:?}: give rates or windows")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn patterns_pick_senders_and_recipients() {
        assert_eq!(Pattern::Pairs.recipients(0, 4), vec![1]);
        assert_eq!(Pattern::Pairs.recipients(3, 4), vec![2]);
        assert_eq!(Pattern::Pairs.recipients(4, 5), vec![0], "odd one out");
        assert_eq!(Pattern::FanIn.senders(4), vec![1, 2, 3]);
        assert_eq!(Pattern::FanOut.senders(4), vec![0]);
        assert_eq!(Pattern::FanOut.recipients(0, 4), vec![1, 2, 3]);
    }

    #[test]
    fn sweeps_expand_with_quick_overrides() {
        let e: Experiment = toml::from_str(
            r#"
            [defaults]
            duration = "10s"
            [quick]
            duration = "2s"
            [[sweep]]
            name = "ramp"
            stacks = ["grpc", "amqp-bare"]
            clients = [2, 10]
            rates = [100, 200, 400]
            stop_when_behind = true
            quick = { rates = [100] }
            [[sweep]]
            name = "window"
            windows = [1]
            stacks = ["grpc"]
            "#,
        )
        .unwrap();
        let full = e.plans(false, &[], &[]).unwrap();
        assert_eq!(full[0].ramps.len(), 4);
        assert_eq!(full[0].points(), 12);
        assert_eq!(full[0].ramps[0][0].duration, Duration::from_secs(10));
        assert!(full[0].stop_when_behind);
        let quick = e.plans(true, &[], &[]).unwrap();
        assert_eq!(quick[0].points(), 4);
        assert_eq!(quick[0].ramps[0][0].duration, Duration::from_secs(2));
        let only = e.plans(false, &["window".into()], &[]).unwrap();
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].ramps[0][0].load, Load::Window(1));
        let amqp = e.plans(false, &[], &[StackKind::AmqpBare]).unwrap();
        assert_eq!(amqp[0].points(), 6);
        assert!(e.plans(false, &["nope".into()], &[]).is_err());
    }

    #[test]
    fn the_cluster_experiment_expands_and_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiments/cluster.toml");
        let e = Experiment::load(&path).unwrap();
        for quick in [false, true] {
            let plans = e.plans(quick, &[], &[]).unwrap();
            let names: Vec<&str> = plans.iter().map(|p| p.name.as_str()).collect();
            assert_eq!(
                names,
                [
                    "cluster-failover",
                    "cluster-quorum-3-nodes",
                    "cluster-classic-1-node"
                ]
            );
            for plan in &plans {
                for point in plan.ramps.iter().flatten() {
                    point.validate().unwrap();
                }
            }
            let failover = plans[0].ramps.iter().flatten().next().unwrap();
            assert_eq!(failover.fault.unwrap().kind, FaultKind::StopNode);
        }
        // Same offered loads for both queue types.
        let rates = |i: usize| -> Vec<Load> {
            let plans = e.plans(false, &[], &[]).unwrap();
            plans[i].ramps.iter().flatten().map(|p| p.load).collect()
        };
        assert_eq!(rates(1), rates(2));
    }

    #[test]
    fn bad_sweeps_are_refused_with_the_sweep_name() {
        let e: Experiment = toml::from_str(
            r#"
            [[sweep]]
            name = "both"
            rates = [1]
            windows = [1]
            "#,
        )
        .unwrap();
        let err = e.plans(false, &[], &[]).unwrap_err();
        assert!(err.contains("both"), "{err}");
        assert!(toml::from_str::<Experiment>("[[sweep]]\nname='x'\nratez=[1]").is_err());
    }
}

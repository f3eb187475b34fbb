//! A short real run against each stack and each ceiling delivers everything:
//! real gRPC servers on 127.0.0.1:0, the real broker at `AMQP_URL`, the bare
//! relays as real `loadgen bare-server` child processes.

use std::path::PathBuf;
use std::time::Duration;

use chat_amqp::AmqpConfig;
use chat_core::{ChatServer, ServerConfig};
use chat_grpc::GrpcConfig;
use loadgen::output::{Results, Row};
use loadgen::run::Runner;
use loadgen::scenario::{Fault, FaultKind, Load, Pattern, Point, StackKind};
use loadgen::target::{Endpoint, Server, TargetArgs, fresh_tag};
use tokio::sync::oneshot;

fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| chat_amqp::DEFAULT_AMQP_URL.into())
}

fn target() -> TargetArgs {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_loadgen"));
    TargetArgs {
        spawn: false,
        grpc_url: String::new(),
        amqp_url: amqp_url(),
        namespace: String::new(),
        bin_dir: exe.parent().map(PathBuf::from),
        durability: "os".into(),
        queue_type: chat_amqp::QueueType::Classic,
        node_stop_cmd: None,
        node_start_cmd: None,
    }
}

/// Both chats in-process: gRPC on an ephemeral port, AMQP on a namespace of
/// its own on the real broker.
struct Chats {
    addr: std::net::SocketAddr,
    config: AmqpConfig,
    /// Each chat's metrics endpoint, as `--metrics-listen` would serve it.
    metrics: [std::net::SocketAddr; 2],
    stop: Vec<oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _data: [tempfile::TempDir; 2],
}

impl Chats {
    async fn start() -> Self {
        let data = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let open = |i: usize| ChatServer::open(ServerConfig::new(data[i].path())).unwrap();
        let servers = [open(0), open(1)];
        let mut metrics = Vec::new();
        for s in &servers {
            let any = "127.0.0.1:0".parse().unwrap();
            metrics.push(chat_core::metrics::start(any, s).await.unwrap());
        }
        let [grpc_server, amqp_server] = servers;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = AmqpConfig::new(amqp_url(), fresh_tag());
        let (stop_grpc, grpc_stopped) = oneshot::channel::<()>();
        let (stop_amqp, amqp_stopped) = oneshot::channel::<()>();
        let grpc = chat_grpc::run(listener, grpc_server, async {
            let _ = grpc_stopped.await;
        });
        let amqp = chat_amqp::run(config.clone(), amqp_server, async {
            let _ = amqp_stopped.await;
        });
        let tasks = vec![
            tokio::spawn(async move { grpc.await.unwrap() }),
            tokio::spawn(async move { amqp.await.unwrap() }),
        ];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while chat_amqp::health(&config).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "amqp-server not serving"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self {
            addr,
            config,
            metrics: [metrics[0], metrics[1]],
            stop: vec![stop_grpc, stop_amqp],
            tasks,
            _data: data,
        }
    }

    fn grpc(&self) -> Endpoint {
        Endpoint::Grpc(GrpcConfig::new(format!("http://{}", self.addr)))
    }

    fn amqp(&self) -> Endpoint {
        Endpoint::Amqp(self.config.clone())
    }

    async fn stop(self) {
        for s in self.stop {
            let _ = s.send(());
        }
        for t in self.tasks {
            t.await.unwrap();
        }
    }
}

fn point(stack: StackKind, load: Load, pattern: Pattern) -> Point {
    Point {
        experiment: "test".into(),
        stack,
        clients: 4,
        load,
        duration: Duration::from_secs(1),
        warmup: Duration::from_millis(300),
        payload: 128,
        pattern,
        seed: 7,
        drain: Duration::from_secs(30),
        fault: None,
    }
}

fn assert_all_delivered(row: &Row) {
    assert!(row.accepted > 10, "{row:?}");
    assert_eq!(row.errors, 0, "{row:?}");
    assert_eq!(row.sent, row.accepted, "{row:?}");
    assert_eq!(row.lost, 0, "{row:?}");
    assert_eq!(row.duplicates, 0, "{row:?}");
    assert_eq!(row.delivered, row.accepted, "{row:?}");
    assert!(row.e2e_count > 0 && row.e2e_p50_us > 0, "{row:?}");
    assert!(row.delivery_rate > 0.0, "{row:?}");
}

/// What the chat server counted during the run agrees with loadgen's count.
fn assert_server_figures(row: &Row) {
    assert_eq!(row.server_accepted, Some(row.accepted), "{row:?}");
    let delivered = row.server_delivered.unwrap();
    assert!(delivered >= row.delivered, "{row:?}");
    let acked = row.server_acked.unwrap();
    assert!(acked > 0 && acked <= row.accepted, "{row:?}");
    assert_eq!(row.server_refused, Some(0), "{row:?}");
    assert!(row.server_pending.is_some(), "{row:?}");
    assert!(row.server_journal_batch_mean.unwrap() >= 1.0, "{row:?}");
    let (mean, p99) = (row.server_append_mean_us, row.server_append_p99_us);
    assert!(mean.unwrap() > 0.0 && p99.unwrap() > 0.0, "{row:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stack_and_ceiling_delivers_everything() {
    let dir = tempfile::tempdir().unwrap();
    let results = Results::new(dir.path().join("results"));
    let mut runner = Runner::new(target(), results.clone(), true, None).await;

    let chats = Chats::start().await;

    let servers = [
        (StackKind::GrpcBare, None),
        (StackKind::AmqpBare, None),
        (StackKind::Grpc, Some((chats.grpc(), chats.metrics[0]))),
        (StackKind::Amqp, Some((chats.amqp(), chats.metrics[1]))),
    ];
    let mut rows = Vec::new();
    for (stack, endpoint) in servers {
        let server = match endpoint {
            Some((e, metrics)) => {
                let mut s = Server::at(stack, e, true);
                s.metrics = Some(metrics);
                s
            }
            None => Server::start(stack, &target(), 4096).await.unwrap(),
        };
        let mut ids = Vec::new();
        for (load, pattern) in [
            (Load::Rate(400.0), Pattern::Pairs),
            (Load::Window(4), Pattern::Random),
        ] {
            let row = runner
                .run_point(&point(stack, load, pattern), &server, &mut ids)
                .await
                .unwrap();
            assert_all_delivered(&row);
            if stack == StackKind::Grpc || stack == StackKind::Amqp {
                assert_server_figures(&row);
            } else {
                assert_eq!(row.server_accepted, None, "a ceiling has no metrics");
            }
            rows.push(row);
        }
        server.stop(&ids).await;
    }
    chats.stop().await;

    // Chat rows carry their ratio to the ceiling measured before them.
    assert!(
        rows.iter()
            .filter(|r| r.stack == "grpc" || r.stack == "amqp")
            .all(|r| r.ceiling_ratio.is_some())
    );
    let written = results.rows().unwrap();
    assert_eq!(written.len(), 8);
    for r in &written {
        assert!(
            results
                .hist_dir()
                .join(format!("{}.csv", r.run_id))
                .exists()
        );
        assert!(!r.machine.is_empty() && !r.git_rev.is_empty());
    }
    assert!(
        written
            .iter()
            .any(|r| r.stack == "amqp" && r.broker_version.contains("RabbitMQ"))
    );
}

/// Cutting every client connection mid-run (through loadgen's proxy) loses
/// nothing and shows nothing twice, on both chats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_connections_lose_nothing_on_either_chat() {
    let dir = tempfile::tempdir().unwrap();
    let mut runner = Runner::new(target(), Results::new(dir.path()), true, None).await;

    let chats = Chats::start().await;

    for (stack, endpoint) in [
        (StackKind::Grpc, chats.grpc()),
        (StackKind::Amqp, chats.amqp()),
    ] {
        let server = Server::at(stack, endpoint, true);
        let mut p = point(stack, Load::Rate(300.0), Pattern::Pairs);
        p.duration = Duration::from_secs(3);
        p.fault = Some(Fault {
            kind: FaultKind::CutConnections,
            at: Duration::from_millis(800),
            downtime: Duration::from_millis(300),
        });
        let mut ids = Vec::new();
        let row = runner.run_point(&p, &server, &mut ids).await.unwrap();
        server.stop(&ids).await;
        assert_eq!(row.fault, "cut-connections");
        assert!(row.reconnects > 0, "the cut was felt: {row:?}");
        assert_eq!(row.lost, 0, "{row:?}");
        assert_eq!(row.duplicates, 0, "{row:?}");
        assert_eq!(
            row.delivered,
            row.accepted + row.delivered_unaccepted,
            "{row:?}"
        );
        assert!(
            row.recovery_s.is_some() && row.fault_max_e2e_us.is_some(),
            "{row:?}"
        );
        let timeline = dir
            .path()
            .join("hist")
            .join(format!("{}.timeline.csv", row.run_id));
        assert!(
            std::fs::read_to_string(timeline)
                .unwrap()
                .starts_with("t_s,accepted,errors,delivered,max_e2e_us")
        );
    }
    chats.stop().await;
}

/// Freezing every client connection (as SIGSTOP would, closing nothing)
/// delays messages but loses nothing, shows nothing twice and needs no
/// reconnection, on both chats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_clients_lose_nothing_on_either_chat() {
    let dir = tempfile::tempdir().unwrap();
    let mut runner = Runner::new(target(), Results::new(dir.path()), true, None).await;

    let chats = Chats::start().await;

    for (stack, endpoint) in [
        (StackKind::Grpc, chats.grpc()),
        (StackKind::Amqp, chats.amqp()),
    ] {
        let server = Server::at(stack, endpoint, true);
        let mut p = point(stack, Load::Rate(300.0), Pattern::Pairs);
        p.duration = Duration::from_secs(3);
        let downtime = Duration::from_millis(1500);
        p.fault = Some(Fault {
            kind: FaultKind::FreezeClients,
            at: Duration::from_millis(500),
            downtime,
        });
        let mut ids = Vec::new();
        let row = runner.run_point(&p, &server, &mut ids).await.unwrap();
        server.stop(&ids).await;
        assert_eq!(row.fault, "freeze-clients");
        assert_eq!(row.reconnects, 0, "a freeze closes nothing: {row:?}");
        assert_eq!(row.lost, 0, "{row:?}");
        assert_eq!(row.duplicates, 0, "{row:?}");
        assert_eq!(row.errors, 0, "{row:?}");
        // A message scheduled when the freeze began could not be shown
        // before it ended: the freeze was felt.
        let felt = row.fault_max_e2e_us.expect("a latency spike is recorded");
        assert!(
            u128::from(felt) >= downtime.as_micros() / 2,
            "spike {felt} µs for a {downtime:?} freeze: {row:?}"
        );
    }
    chats.stop().await;
}

/// `stop-node` runs the operator's commands, stop then start after the
/// downtime, and records the fault like the others. (What stopping a real
/// node does is `scripts/cluster-test.sh`'s business: it needs a cluster.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_node_runs_the_given_commands_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("node.log");
    let mut args = target();
    args.node_stop_cmd = Some(format!("echo stop >> '{}'", log.display()));
    args.node_start_cmd = Some(format!("echo start >> '{}'", log.display()));
    let mut runner = Runner::new(args, Results::new(dir.path().join("r")), true, None).await;
    let chats = Chats::start().await;
    let server = Server::at(StackKind::Amqp, chats.amqp(), true);
    let mut p = point(StackKind::Amqp, Load::Rate(200.0), Pattern::Pairs);
    p.duration = Duration::from_secs(2);
    p.fault = Some(Fault {
        kind: FaultKind::StopNode,
        at: Duration::from_millis(500),
        downtime: Duration::from_millis(300),
    });
    let mut ids = Vec::new();
    let row = runner.run_point(&p, &server, &mut ids).await.unwrap();
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "stop\nstart\n");
    assert_eq!(row.fault, "stop-node");
    assert_eq!(row.fault_downtime_s, Some(0.3));
    assert_eq!(row.lost, 0, "{row:?}");
    assert_eq!(row.duplicates, 0, "{row:?}");

    // Without the commands the run fails, saying which flags are missing.
    let mut bare = Runner::new(target(), Results::new(dir.path().join("r2")), true, None).await;
    let e = bare
        .run_point(&p, &server, &mut ids)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("--node-stop-cmd"), "{e}");
    server.stop(&ids).await;
    chats.stop().await;
}

//! `plot` end to end on a small synthetic results folder.

use std::path::Path;

use super::*;

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

fn row(
    id: &str,
    experiment: &str,
    stack: &str,
    clients: usize,
    load: (Option<f64>, Option<u32>),
) -> Row {
    let chat = !stack.ends_with("-bare");
    let rate = load.0.unwrap_or(1000.0 * clients as f64);
    Row {
        run_id: id.into(),
        started_at: format!("2026-01-01T00:00:{:02}Z", id.len()),
        experiment: experiment.into(),
        stack: stack.into(),
        clients,
        pattern: "pairs".into(),
        model: if load.0.is_some() { "open" } else { "closed" }.into(),
        offered_rate: load.0,
        window: load.1,
        payload_bytes: 64,
        delivery_rate: if chat { 0.8 * rate } else { rate },
        ceiling_ratio: chat.then_some(0.8),
        e2e_p50_us: 500 + clients as u64,
        e2e_p99_us: 2000 + clients as u64,
        e2e_p999_us: 5000 + clients as u64,
        e2e_count: 100,
        server_settings: if chat { "durability=os" } else { "" }.into(),
        ..Row::default()
    }
}

/// A folder with every experiment but fan-in and faults (to check the
/// skips).
fn synthetic(dir: &Path) -> Results {
    let results = Results::new(dir);
    let mut n = 0;
    let mut add = |mut r: Row| {
        n += 1;
        r.run_id = format!("{}{n}", r.run_id);
        results.append(&r).unwrap();
    };
    for stack in ["grpc-bare", "amqp-bare", "grpc", "amqp"] {
        for rate in [500.0, 2000.0, 8000.0] {
            add(row("l", "latency-vs-load", stack, 10, (Some(rate), None)));
        }
        for c in [2, 10, 100] {
            add(row("t", "throughput-vs-clients", stack, c, (None, Some(8))));
        }
        add(row("p", "ping-pong", stack, 2, (None, Some(1))));
        for bytes in [64, 4096] {
            let mut r = row("b", "payload", stack, 10, (None, Some(8)));
            r.payload_bytes = bytes;
            add(r);
        }
    }
    for stack in ["grpc", "amqp"] {
        let mut r = row("d", "durability-fsync", stack, 10, (None, Some(8)));
        r.server_settings = "durability=fsync".into();
        add(r);
    }
    let rows = results.rows().unwrap();
    std::fs::create_dir_all(results.hist_dir()).unwrap();
    for r in rows.iter().filter(|r| r.experiment == "ping-pong") {
        let csv = "percentile,latency_us,count\n0.0,100,1\n50.0,300,49\n90.0,500,40\n99.0,900,9\n100.0,4000,1\n";
        std::fs::write(results.hist_dir().join(format!("{}.csv", r.run_id)), csv).unwrap();
    }
    results
}

fn assert_png(path: &Path) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(bytes[..8], PNG_SIGNATURE, "{} is not a PNG", path.display());
    assert!(
        bytes.len() > 10_000,
        "{} is only {} bytes",
        path.display(),
        bytes.len()
    );
}

#[test]
fn every_chart_with_rows_is_drawn_and_a_missing_experiment_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let results = synthetic(dir.path());
    std::fs::write(dir.path().join("fan-in.png"), b"stale").unwrap();
    let out = plot(&results).unwrap();
    assert_eq!(out.skipped, ["fan-in.png", "fault-timeline.png"]);
    assert!(
        !dir.path().join("fan-in.png").exists(),
        "the stale chart stays"
    );
    for spec in CHARTS.iter().filter(|s| !out.skipped.contains(&s.file)) {
        assert_png(&dir.path().join(spec.file));
    }
    assert_eq!(out.written.len(), 6);
    let summary = std::fs::read_to_string(&out.summary).unwrap();
    assert!(
        summary.contains("| grpc | 10 clients, pairs, 2000 msg/s offered, 64 B | os |"),
        "{summary}"
    );
    assert!(summary.contains("Not drawn: no rows with experiment=fan-in"));
    assert!(summary.contains("Not drawn: no rows with a fault"));
}

#[test]
fn durability_compares_fsync_with_the_os_row_of_the_same_point() {
    let dir = tempfile::tempdir().unwrap();
    let results = synthetic(dir.path());
    let rows = select::latest(results.rows().unwrap()).rows;
    let pairs = bars::durability_pairs(&rows);
    let got: Vec<(&str, &str, &str)> = pairs
        .iter()
        .map(|r| {
            (
                r.stack.as_str(),
                r.experiment.as_str(),
                select::durability(r),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("grpc", "throughput-vs-clients", "os"),
            ("grpc", "durability-fsync", "fsync"),
            ("amqp", "throughput-vs-clients", "os"),
            ("amqp", "durability-fsync", "fsync"),
        ]
    );
}

#[test]
fn an_empty_results_folder_plots_nothing_without_error() {
    let dir = tempfile::tempdir().unwrap();
    let results = Results::new(dir.path());
    results
        .append(&row("x", "adhoc", "grpc", 2, (None, Some(1))))
        .unwrap();
    let out = plot(&results).unwrap();
    assert!(out.written.is_empty());
    assert_eq!(out.skipped.len(), CHARTS.len());
}

#[test]
fn a_runs_csv_from_an_older_loadgen_with_fewer_columns_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let results = synthetic(dir.path());
    let text = std::fs::read_to_string(results.runs_csv()).unwrap();
    let cut: Vec<String> = text
        .lines()
        .map(|l| l.rsplit_once(',').unwrap().0.to_owned())
        .collect();
    std::fs::write(results.runs_csv(), cut.join("\n") + "\n").unwrap();
    let rows = results.rows().unwrap();
    assert_eq!(rows.len(), 38);
    assert_eq!(rows[0].experiment, "latency-vs-load");
}

/// A fault run of `stack` started at second `at`, fault 2 s into a window
/// that starts at 1 s.
fn fault_row(id: &str, fault: &str, stack: &str, at: u32) -> Row {
    Row {
        experiment: format!("fault-{fault}"),
        started_at: format!("2026-01-02T00:00:{at:02}Z"),
        duration_s: 6.0,
        warmup_s: 1.0,
        fault: fault.into(),
        fault_at_s: Some(2.0),
        fault_downtime_s: Some(1.0),
        recovery_s: Some(1.2),
        fault_max_e2e_us: Some(1_250_000),
        ..row(id, "", stack, 10, (Some(1000.0), None))
    }
}

/// 100 ms buckets from 0 to 7.3 s: 100 delivered each, none from 3 to 4 s
/// (the fault), a backlog with high latency right after.
fn timeline_csv() -> String {
    let mut csv = String::from("t_s,accepted,errors,delivered,max_e2e_us\n");
    for i in 0..74 {
        let t = f64::from(i) / 10.0;
        let (d, us) = match i {
            30..40 => (0, 0),
            40..45 => (300, 1_000_000),
            _ => (100, 4000),
        };
        csv.push_str(&format!("{t:.1},100,0,{d},{us}\n"));
    }
    csv
}

#[test]
fn the_fault_timeline_draws_the_latest_run_of_each_fault_and_stack() {
    let dir = tempfile::tempdir().unwrap();
    let results = Results::new(dir.path());
    let mut rows = vec![fault_row("old", "kill-server", "grpc", 1)];
    rows[0].experiment = "adhoc".into();
    for (i, (fault, stack)) in [
        ("kill-server", "grpc"),
        ("kill-server", "amqp"),
        ("cut-connections", "grpc"),
        ("cut-connections", "amqp"),
        ("restart-broker", "amqp"),
    ]
    .into_iter()
    .enumerate()
    {
        rows.push(fault_row(&format!("f{i}"), fault, stack, 10 + i as u32));
    }
    std::fs::create_dir_all(results.hist_dir()).unwrap();
    for r in &rows {
        results.append(r).unwrap();
        // f1 (kill-server amqp) has no timeline: left out.
        if r.run_id != "f1" {
            let path = results
                .hist_dir()
                .join(format!("{}.timeline.csv", r.run_id));
            std::fs::write(path, timeline_csv()).unwrap();
        }
    }
    let out = plot(&results).unwrap();
    let png = dir.path().join("fault-timeline.png");
    assert_png(&png);
    assert_eq!(out.written, [png]);
    let summary = std::fs::read_to_string(&out.summary).unwrap();
    let ids: Vec<&str> = summary
        .lines()
        .filter(|l| l.starts_with("| ") && l.ends_with("` |"))
        .filter_map(|l| l.rsplit('`').nth(1))
        .collect();
    assert_eq!(ids, ["f0", "f2", "f3", "f4"], "{summary}");
    assert!(
        summary.contains("| kill-server | grpc | 10 clients, pairs, 1000 msg/s offered, 64 B | 1 | 1.2 | 1250 | 0 | 0 | 0 |"),
        "{summary}"
    );
}

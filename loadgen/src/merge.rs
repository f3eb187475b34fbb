//! `loadgen merge`: one row from the shards of a load split across loadgen
//! processes (`--shard I/N`, maybe on several machines, whose results
//! folders were copied together).
//!
//! Counts and rates add up; latency percentiles are recomputed from the
//! shards' HDR histograms added together (averaging percentiles would be
//! wrong); loadgen's CPU and memory add up (they are separate processes),
//! the server's and broker's are the largest any shard saw (one process).

use std::collections::BTreeMap;

use anyhow::bail;

use crate::output::{Results, Row};

/// Identifies the shards of one point: same sweep, stack and shape.
fn group_key(r: &Row) -> Option<String> {
    let (_, n) = r.shard.split_once('/')?;
    Some(format!(
        "{}|{}|{}|{}|{}|{:?}|{n}",
        r.experiment, r.stack, r.pattern, r.payload_bytes, r.model, r.window
    ))
}

fn shard_index(r: &Row) -> Option<(usize, usize)> {
    let (i, n) = r.shard.split_once('/')?;
    Some((i.parse().ok()?, n.parse().ok()?))
}

/// Merges the newest complete set of shards of every point in `results`;
/// appends the merged rows and returns them.
pub fn merge(results: &Results) -> anyhow::Result<Vec<Row>> {
    let rows = results.rows()?;
    // Newest row per (point, shard index).
    let mut groups: BTreeMap<String, BTreeMap<usize, Row>> = BTreeMap::new();
    for r in rows {
        if let (Some(key), Some((i, _))) = (group_key(&r), shard_index(&r)) {
            groups.entry(key).or_default().insert(i, r);
        }
    }
    if groups.is_empty() {
        bail!(
            "no sharded rows (shard = I/N) in {}",
            results.runs_csv().display()
        );
    }
    let mut merged = Vec::new();
    for (key, shards) in groups {
        let n = shards
            .values()
            .next()
            .and_then(shard_index)
            .map_or(0, |(_, n)| n);
        if shards.len() != n {
            tracing::warn!("{key}: {} of {n} shards present; not merged", shards.len());
            continue;
        }
        let parts: Vec<Row> = shards.into_values().collect();
        let row = combine(results, &parts)?;
        results.append(&row)?;
        merged.push(row);
    }
    Ok(merged)
}

fn combine(results: &Results, parts: &[Row]) -> anyhow::Result<Row> {
    let first = &parts[0];
    let mut e2e = crate::record::histogram();
    let mut accept = crate::record::histogram();
    for p in parts {
        e2e.add(results.read_histogram(&p.run_id, "e2e")?)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        accept
            .add(results.read_histogram(&p.run_id, "accept")?)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    }
    let sum = |f: fn(&Row) -> u64| parts.iter().map(f).sum::<u64>();
    let sumf = |f: fn(&Row) -> f64| parts.iter().map(f).sum::<f64>();
    let sum_opt = |f: fn(&Row) -> Option<f64>| parts.iter().map(f).sum::<Option<f64>>();
    let max_opt = |f: fn(&Row) -> Option<f64>| parts.iter().filter_map(f).reduce(f64::max);
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    for p in parts {
        for kv in p.error_kinds.split(';').filter(|s| !s.is_empty()) {
            if let Some((k, v)) = kv.split_once('=') {
                *kinds.entry(k.to_owned()).or_insert(0) += v.parse::<u64>().unwrap_or(0);
            }
        }
    }
    let mut row = Row {
        run_id: format!("{}-merged", first.run_id),
        clients: parts.iter().map(|p| p.clients).sum(),
        offered_rate: parts.iter().map(|p| p.offered_rate).sum(),
        sent: sum(|r| r.sent),
        accepted: sum(|r| r.accepted),
        delivered: sum(|r| r.delivered),
        lost: sum(|r| r.lost),
        duplicates: sum(|r| r.duplicates),
        out_of_order: sum(|r| r.out_of_order),
        delivered_unaccepted: sum(|r| r.delivered_unaccepted),
        behind_schedule: sum(|r| r.behind_schedule),
        errors: sum(|r| r.errors),
        error_kinds: Row::kinds_column(&kinds),
        reconnects: sum(|r| r.reconnects),
        send_rate: sumf(|r| r.send_rate),
        delivery_rate: sumf(|r| r.delivery_rate),
        ceiling_ratio: None,
        setup_p50_ms: parts.iter().map(|p| p.setup_p50_ms).fold(0.0, f64::max),
        setup_max_ms: parts.iter().map(|p| p.setup_max_ms).fold(0.0, f64::max),
        drain_s: parts.iter().map(|p| p.drain_s).fold(0.0, f64::max),
        loadgen_cpu_pct: sum_opt(|r| r.loadgen_cpu_pct),
        loadgen_peak_rss_mb: sum_opt(|r| r.loadgen_peak_rss_mb),
        server_cpu_pct: max_opt(|r| r.server_cpu_pct),
        server_peak_rss_mb: max_opt(|r| r.server_peak_rss_mb),
        server_rss_mb: max_opt(|r| r.server_rss_mb),
        broker_cpu_pct: max_opt(|r| r.broker_cpu_pct),
        broker_peak_rss_mb: max_opt(|r| r.broker_peak_rss_mb),
        shard: "merged".into(),
        ..first.clone()
    };
    row.set_latencies(&e2e, &accept);
    results.write_histograms(&row.run_id, &e2e, &accept)?;
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(results: &Results, i: usize, latencies: &[u64]) -> Row {
        let mut h = crate::record::histogram();
        for &v in latencies {
            h.record(v).unwrap();
        }
        let row = Row {
            run_id: format!("s{i}"),
            experiment: "x".into(),
            stack: "grpc".into(),
            clients: 10,
            offered_rate: Some(500.0),
            sent: 100,
            accepted: 100,
            delivered: 99,
            lost: 1,
            error_kinds: "timeout=2".into(),
            errors: 2,
            delivery_rate: 250.0,
            loadgen_cpu_pct: Some(10.0),
            server_cpu_pct: Some(40.0 + i as f64),
            shard: format!("{i}/2"),
            ..Row::default()
        };
        results.write_histograms(&row.run_id, &h, &h).unwrap();
        results.append(&row).unwrap();
        row
    }

    #[test]
    fn shards_add_up_and_percentiles_come_from_the_merged_histograms() {
        let dir = tempfile::tempdir().unwrap();
        let results = Results::new(dir.path());
        shard(&results, 0, &[100; 99]);
        shard(&results, 1, &[10_000; 99]);
        let merged = merge(&results).unwrap();
        assert_eq!(merged.len(), 1);
        let m = &merged[0];
        assert_eq!((m.clients, m.sent, m.lost, m.errors), (20, 200, 2, 4));
        assert_eq!(m.offered_rate, Some(1000.0));
        assert_eq!(m.error_kinds, "timeout=4");
        assert_eq!(m.delivery_rate, 500.0);
        assert_eq!(m.loadgen_cpu_pct, Some(20.0));
        assert_eq!(m.server_cpu_pct, Some(41.0));
        // Half the messages took 100 µs, half 10 ms: the median is not an
        // average of the shards' medians.
        assert_eq!(m.e2e_p50_us, 100);
        assert!(m.e2e_p90_us >= 9_990, "{}", m.e2e_p90_us);
        assert_eq!(m.e2e_count, 198);
        assert_eq!(results.rows().unwrap().len(), 3);
    }

    #[test]
    fn incomplete_sets_are_not_merged() {
        let dir = tempfile::tempdir().unwrap();
        let results = Results::new(dir.path());
        shard(&results, 0, &[100]);
        assert!(merge(&results).unwrap().is_empty());
    }
}

//! Which rows of runs.csv a chart shows: the most recent run of each point
//! (a rerun after a fix replaces the old figure instead of sitting next to
//! it), whole runs only (a shard of a split load is a fraction of a point;
//! `loadgen merge` makes the row to plot).

use std::collections::HashMap;

use crate::output::Row;

use super::style::STACKS;

/// The rows the charts draw from.
#[derive(Debug, Default)]
pub struct Selection {
    /// Latest run per point, in file order.
    pub rows: Vec<Row>,
    /// Older runs of a point that a later run replaced.
    pub superseded: usize,
    /// Rows that are one shard of a split load.
    pub shards: usize,
}

/// Keeps the latest run (by `started_at`, then file order) of each point.
pub fn latest(all: Vec<Row>) -> Selection {
    let total = all.len();
    let whole: Vec<(usize, Row)> = all
        .into_iter()
        .enumerate()
        .filter(|(_, r)| r.shard.is_empty() || r.shard == "merged")
        .collect();
    let shards = total - whole.len();
    let mut best: HashMap<String, (usize, &Row)> = HashMap::new();
    for (i, r) in &whole {
        let key = format!("{}|{}|{}", r.stack, durability(r), r.point_key());
        let newer = best
            .get(&key)
            .is_none_or(|(j, b)| (r.started_at.as_str(), *i) >= (b.started_at.as_str(), *j));
        if newer {
            best.insert(key, (*i, r));
        }
    }
    let mut keep: Vec<(usize, Row)> = best.into_values().map(|(i, r)| (i, r.clone())).collect();
    keep.sort_by_key(|(i, _)| *i);
    Selection {
        superseded: whole.len() - keep.len(),
        rows: keep.into_iter().map(|(_, r)| r).collect(),
        shards,
    }
}

/// `os` or `fsync` from `server_settings` (empty for ceilings/external).
pub fn durability(r: &Row) -> &str {
    r.server_settings
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("durability="))
        .unwrap_or("")
}

/// Rows of one experiment, ordered by stack (legend order) then by `x`.
pub fn experiment(rows: &[Row], name: &str, x: fn(&Row) -> f64) -> Vec<Row> {
    let mut out: Vec<Row> = rows
        .iter()
        .filter(|r| r.experiment == name)
        .cloned()
        .collect();
    out.sort_by(|a, b| {
        stack_rank(&a.stack)
            .cmp(&stack_rank(&b.stack))
            .then(x(a).total_cmp(&x(b)))
    });
    out
}

pub fn stack_rank(stack: &str) -> usize {
    STACKS
        .iter()
        .position(|s| *s == stack)
        .unwrap_or(STACKS.len())
}

/// The stacks present in `rows`, in legend order.
pub fn stacks(rows: &[Row]) -> Vec<String> {
    let mut out: Vec<String> = rows.iter().map(|r| r.stack.clone()).collect();
    out.sort_by_key(|s| stack_rank(s));
    out.dedup();
    out
}

/// The distinct values of `x` in `rows`, ascending.
pub fn distinct(rows: &[Row], x: fn(&Row) -> f64) -> Vec<f64> {
    let mut v: Vec<f64> = rows.iter().map(x).collect();
    v.sort_by(f64::total_cmp);
    v.dedup();
    v
}

/// One line per row for people: "10 clients, pairs, window 8, 64 B".
pub fn point(r: &Row) -> String {
    let load = match (r.offered_rate, r.window) {
        (Some(rate), _) => format!("{rate:.0} msg/s offered"),
        (None, Some(w)) => format!("window {w}"),
        (None, None) => "-".into(),
    };
    format!(
        "{} clients, {}, {load}, {} B",
        r.clients, r.pattern, r.payload_bytes
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, at: &str, stack: &str, shard: &str) -> Row {
        Row {
            run_id: id.into(),
            started_at: at.into(),
            experiment: "x".into(),
            stack: stack.into(),
            clients: 10,
            window: Some(8),
            shard: shard.into(),
            ..Row::default()
        }
    }

    #[test]
    fn the_latest_rerun_of_a_point_wins_and_shards_are_left_out() {
        let sel = latest(vec![
            row("old", "2026-01-01T00:00:00Z", "grpc", ""),
            row("other", "2026-01-01T00:00:01Z", "amqp", ""),
            row("new", "2026-01-02T00:00:00Z", "grpc", ""),
            row("part", "2026-01-03T00:00:00Z", "grpc", "0/2"),
        ]);
        let ids: Vec<&str> = sel.rows.iter().map(|r| r.run_id.as_str()).collect();
        assert_eq!(ids, ["other", "new"]);
        assert_eq!((sel.superseded, sel.shards), (1, 1));
    }

    #[test]
    fn durability_is_read_from_the_server_settings() {
        let mut r = Row::default();
        assert_eq!(durability(&r), "");
        r.server_settings = "durability=fsync max_text_bytes=4096".into();
        assert_eq!(durability(&r), "fsync");
    }
}
